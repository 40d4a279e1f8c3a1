"""A shared prefix's forward pass gives the hidden states, gradients and rewards of full forwards."""
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    # float64: the shared path sums in another order than full forwards; in float32 the rounding of
    # those sums reached 1e-5 of a gradient's largest entry on some CPUs. Qwen2's RMSNorm still
    # normalises in float32, which leaves ~1e-8 of it in float64.
    m = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float64)
    with torch.no_grad():  # a model whose layers are not the saved ones, so nothing matches by accident
        for p in m.model.layers[0].mlp.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _sequences():
    g = torch.Generator().manual_seed(1)
    tokens = lambda n: torch.randint(5, 2000, (n,), generator=g).tolist()  # noqa: E731
    note = tokens(120)
    seqs = [note + tokens(n) for n in (3, 11, 7)] + [tokens(40), note[:90] + tokens(4), tokens(25)]
    groups = [0, 0, 0, 1, 0, 2]  # group 0 shares a 90-token prefix; groups 1 and 2 are single sequences
    positions = [range(119, len(s)) for s in seqs[:3]] + [[39], [80, 89, 93], [0, 24]]
    return seqs, groups, positions


def _plain(transformer, seqs, positions):
    return torch.cat([transformer(input_ids=torch.tensor([s])).last_hidden_state[0, list(p)]
                      for s, p in zip(seqs, positions)])


@pytest.mark.parametrize("max_rows", [1, 3, 64])
def test_hidden_states_and_gradients_equal_full_forwards(model, max_rows):
    from cmaq.shared_prefix import hidden_at, transformer_and_head

    transformer, _ = transformer_and_head(model, "lm_head")
    seqs, groups, positions = _sequences()
    model.train()
    model.zero_grad()
    shared = hidden_at(transformer, seqs, groups, positions, pad_id=0, max_rows=max_rows)
    assert shared.shape == (sum(len(p) for p in positions), model.config.hidden_size)
    shared.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = _plain(transformer, seqs, positions)
    plain.pow(2).sum().backward()
    torch.testing.assert_close(shared, plain, atol=1e-8, rtol=1e-7)
    for n, p in model.named_parameters():  # sums in another order: close relative to the largest
        scale = float(p.grad.abs().max())
        assert float((grads[n] - p.grad).abs().max()) <= 1e-6 * max(scale, 1.0), n


def test_bad_positions_are_refused(model):
    from cmaq.shared_prefix import hidden_at, transformer_and_head

    transformer, _ = transformer_and_head(model, "lm_head")
    with pytest.raises(ValueError, match="inside"):
        hidden_at(transformer, [[5, 6, 7]], [0], [[3]], pad_id=0)
    with pytest.raises(ValueError, match="group keys"):
        hidden_at(transformer, [[5, 6, 7]], [0, 1], [[1]], pad_id=0)


def test_sequence_logps_match_full_vocabulary_log_softmax(model):
    """A preference pair (two answers to one prompt) through the shared path against log_softmax over
    every position's full logits."""
    from training.policy import sequence_logps

    seqs, _, _ = _sequences()
    prompt = seqs[0][:120]
    pairs = [(prompt, [11, 12, 0]), (prompt, [13, 0]), (seqs[3][:30], seqs[3][30:])]
    model.eval()
    with torch.no_grad():
        logps, lengths = sequence_logps(model, pairs, pad_id=0)
        for (p, a), got, n in zip(pairs, logps, lengths):
            full = torch.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0], -1)
            want = sum(full[len(p) - 1 + j, t] for j, t in enumerate(a))
            assert int(n) == len(a) and float(got) == pytest.approx(float(want), abs=1e-4)


def test_reward_scores_do_not_depend_on_sharing(trained_rms, small_world):
    """One content's candidates share its prefix; the same queries each behind its own copy of the item
    (nothing shared) score the same."""
    import pyarrow.parquet as pq

    from training.reward_models.scorer import RewardScorer

    out, _, _ = trained_rms
    truth = pq.read_table(small_world / "truth" / "grammar").slice(0, 48).to_pylist()
    content = {r["content_id"]: r for r in pq.read_table(small_world / "content").to_pylist()}
    items, queries = [content[r["content_id"]] for r in truth], [r["query"] for r in truth]
    assert len({it["content_id"] for it in items}) < len(items)  # some contents have several queries
    alone = [{**it, "content_id": f"{it['content_id']}#{i}"} for i, it in enumerate(items)]
    scorer = RewardScorer(str(out / "exp"), str(out / "ctr"), batch_size=8)
    shared, separate = scorer.score(items, queries), scorer.score(alone, queries)
    np.testing.assert_allclose(shared.r_exp, separate.r_exp, atol=1e-5)
    np.testing.assert_allclose(shared.r_ctr_raw, separate.r_ctr_raw, atol=1e-4)
