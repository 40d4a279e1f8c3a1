"""QSA and the CMAQ loop on the tiny model: a few dozen contents, k=4, T=2."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from cmaq.config import AlignConfig, PolicyTrainConfig


@pytest.fixture(scope="module")
def qsa(rm_data, tmp_path_factory):
    from training.sft import train_qsa

    out = tmp_path_factory.mktemp("qsa")
    metrics = train_qsa(PolicyTrainConfig(out=str(out), lr=2e-3, batch_size=8, epochs=0.1, warmup_steps=2),
                        str(rm_data / "sft"))
    return out / "adapter", metrics


def _lora(adapter_dir):
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def _logps(tiny_model, adapter, pairs, side):
    from training.policy import encode, load_policy, sequence_logps
    from training.reward_models.models import tokenizer_of

    tok = tokenizer_of(tiny_model)
    if adapter is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny_model)
    else:
        model = load_policy(tiny_model, adapter, trainable=False)
    model.eval()
    seqs = [encode(tok, p["item"], p[side], 448) for p in pairs]
    with torch.no_grad():
        return sequence_logps(model, seqs, tok.pad_token_id)[0].numpy()


def test_qsa_learns_the_query_style(qsa):
    adapter, metrics = qsa
    assert (adapter / "adapter_config.json").exists() and metrics["steps"] >= 5
    assert metrics["loss_last20"] < metrics["loss_first"]


def test_cmaq_loop(qsa, trained_rms, rm_data, tiny_model, tmp_path):
    from training.align import _load_pairs, run_align
    from training.gate import RewardGate

    rms, _, _ = trained_rms
    # at 1.5 the tiny model writes byte soup that the reward gate (on by default) rejects entirely
    base = dict(qsa=str(qsa[0]), rm_exp=str(rms / "exp"), rm_ctr=str(rms / "ctr"), contents=48, k=4,
                iterations=2, lr=2e-3, batch_size=4, warmup_steps=1, temperature=1.0, probe_contents=16, probe_k=2)
    cfg = AlignConfig(out=str(tmp_path / "cmaq"), **base)
    result = run_align(cfg, str(rm_data / "sft"))
    rows = pd.read_parquet(rm_data / "sft").to_dict("records")
    items = {r["content_id"]: r for r in rows}
    out = tmp_path / "cmaq"
    for t, stats in enumerate(result["iterations"], start=1):
        pairs = pd.read_parquet(out / f"iter-{t}" / "pairs.parquet")
        assert len(pairs) == stats["pairs"] > 0
        # the reward gate: chosen queries pass the serving chain; a rejected one is below τ2 or failed it
        assert (pairs.r_chosen > stats["tau1"]).all()
        assert ((pairs.r_rejected < stats["tau2"]) | pairs.rejected_gated).all()
        gate = stats["gate"]
        assert gate["candidates"] == stats["candidates"] and sum(gate["reasons"].values()) == gate["failed"]
        chosen = [items[c] for c in pairs.content_id]
        assert RewardGate("serving")(chosen, [[q] for q in pairs.chosen]).passed.all()
        assert pairs.beta_tilde.mean() == pytest.approx(1.0, abs=1e-6)
        assert stats["mean_beta_tilde"] == pytest.approx(1.0, abs=1e-6)
    # the reference of iteration t is iteration t-1's policy, not the bare base model
    p1 = _load_pairs(out / "iter-1" / "pairs.parquet", items)
    p2 = _load_pairs(out / "iter-2" / "pairs.parquet", items)
    np.testing.assert_allclose(_logps(tiny_model, qsa[0], p1, "chosen"), [p["ref_chosen"] for p in p1], atol=1e-4)
    np.testing.assert_allclose(_logps(tiny_model, out / "iter-1" / "adapter", p2, "rejected"),
                               [p["ref_rejected"] for p in p2], atol=1e-4)
    assert not np.allclose(_logps(tiny_model, None, p2, "rejected"), [p["ref_rejected"] for p in p2], atol=1e-3)
    # the adapter's weights changed, iteration by iteration
    w0, w1, w2 = _lora(qsa[0]), _lora(out / "iter-1" / "adapter"), _lora(out / "adapter")
    assert set(w0) == set(w2)
    assert any(not torch.allclose(w0[k], w1[k]) for k in w0) and any(not torch.allclose(w1[k], w2[k]) for k in w1)
    # a rerun finds both iterations done and changes nothing
    again = run_align(cfg, str(rm_data / "sft"))
    assert [i["pairs"] for i in again["iterations"]] == [i["pairs"] for i in result["iterations"]]
    assert all(torch.equal(w2[k], v) for k, v in _lora(out / "adapter").items())
    summary = json.loads((out / "metrics.json").read_text())
    assert len(summary["iterations"]) == 2 and summary["iterations"][1]["reference"].endswith("iter-1/adapter")
    # collapse guards on the same 16 probe notes for QSA and every iteration
    probes = [summary["probe_qsa"]] + [i["probe"] for i in summary["iterations"]]
    assert all(p["notes"] == 16 for p in probes) and probes[0]["kl_to_qsa"] == 0.0
    for p in probes:
        assert 0 < p["distinct_top1_share"] <= 1 and 0 < p["top_string_share"] <= 1
        assert 0 <= p["beams_passing"] <= 1 and 0 <= p["exposure_rate"] <= 1 and 0 <= p["lcb_combined"] <= 1
        assert p["proxy"] == pytest.approx(p["beams_passing"] * p["lcb_combined"] + p["distinct_top1_share"], abs=2e-4)
    assert summary["select"] == "last" and summary["selected_iteration"] == 2
    assert all(np.isfinite(p["kl_to_qsa"]) for p in probes[1:])
    assert probes[2]["kl_to_qsa"] != 0.0  # two iterations of training moved the policy


def test_ablations(qsa, trained_rms, rm_data, tmp_path):
    """w/o CT: β̃ ≡ 1; w/o OT: iteration 2 reuses iteration 1's pairs (with a fresh reference);
    w/o CDS: the arithmetic mean."""
    from training.align import run_align

    rms, _, _ = trained_rms
    cfg = AlignConfig(out=str(tmp_path / "abl"), qsa=str(qsa[0]), rm_exp=str(rms / "exp"), rm_ctr=str(rms / "ctr"),
                      contents=32, k=4, iterations=2, lr=2e-3, batch_size=4, warmup_steps=1, temperature=1.0,
                      probe_contents=0, static_beta=True, reuse_first=True, mean="arithmetic")
    run_align(cfg, str(rm_data / "sft"))
    p1 = pd.read_parquet(tmp_path / "abl" / "iter-1" / "pairs.parquet")
    p2 = pd.read_parquet(tmp_path / "abl" / "iter-2" / "pairs.parquet")
    assert (p1.beta_tilde == 1.0).all() and (p2.beta_tilde == 1.0).all()
    assert p1[["content_id", "chosen", "rejected"]].equals(p2[["content_id", "chosen", "rejected"]])
    assert not np.allclose(p1.ref_chosen, p2.ref_chosen, atol=1e-4)  # the reference moved on


def test_the_qsa_reference_anchors_every_iteration(qsa, trained_rms, rm_data, tiny_model, tmp_path):
    """align.reference = "qsa": iteration 2's reference log-probabilities are QSA's, not iteration 1's."""
    from training.align import _load_pairs, run_align

    rms, _, _ = trained_rms
    cfg = AlignConfig(out=str(tmp_path / "anchored"), qsa=str(qsa[0]), rm_exp=str(rms / "exp"),
                      rm_ctr=str(rms / "ctr"), contents=32, k=4, iterations=2, lr=2e-3, batch_size=4,
                      warmup_steps=1, temperature=1.0, probe_contents=8, probe_k=2, reference="qsa", select="proxy")
    result = run_align(cfg, str(rm_data / "sft"))
    assert all(i["reference"] == str(qsa[0]) for i in result["iterations"])
    # align.select = "proxy": <out>/adapter is the iteration with the highest probe proxy
    proxies = [i["probe"]["proxy"] for i in result["iterations"]]
    chosen = result["selected_iteration"]
    assert proxies[chosen - 1] == max(proxies) and proxies.index(max(proxies)) == chosen - 1
    served, picked = _lora(tmp_path / "anchored" / "adapter"), _lora(tmp_path / "anchored" / f"iter-{chosen}" / "adapter")
    assert all(torch.equal(served[k], picked[k]) for k in picked)
    items = {r["content_id"]: r for r in pd.read_parquet(rm_data / "sft").to_dict("records")}
    p2 = _load_pairs(tmp_path / "anchored" / "iter-2" / "pairs.parquet", items)
    np.testing.assert_allclose(_logps(tiny_model, qsa[0], p2, "chosen"), [p["ref_chosen"] for p in p2], atol=1e-4)
    assert not np.allclose(_logps(tiny_model, tmp_path / "anchored" / "iter-1" / "adapter", p2, "chosen"),
                           [p["ref_chosen"] for p in p2], atol=1e-3)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_consistent_dpo_loss_equals_trl(tiny_model, tmp_path, lam):
    """β̃ ≡ 1, λ = 0: TRL's sigmoid DPO. λ > 0: TRL's DPO with an added "sft" loss of weight λ (TRL 1.16's
    successor of rpo_alpha). TRL averages that NLL over all chosen tokens of the batch, CMAQ over each
    chosen query and then over pairs; the two agree when the chosen queries have equal lengths, as here,
    and the test also checks the unequal case against TRL's normalisation written out."""
    import copy

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from cmaq.losses import consistent_dpo_loss
    from training.policy import sequence_logps
    from training.reward_models.models import tokenizer_of

    tok = tokenizer_of(tiny_model)
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model)
    policy = copy.deepcopy(ref)
    rows = [{"prompt": "Title: Noodle house\nSearch:", "chosen": " parking nearby", "rejected": " noodle"},
            {"prompt": "Title: Hot pot on Gulou\nSearch:", "chosen": " parking nearby", "rejected": " hot pot hot pot"},
            {"prompt": "Title: Quiet cafe\nSearch:", "chosen": " opening hours", "rejected": " cafe"}]
    types, weights = (["sigmoid"], [1.0]) if lam == 0 else (["sigmoid", "sft"], [1.0, lam])
    # bf16=False: TRL would otherwise run the reference under bf16 autocast on CPU, and the comparison is of
    # the same fp32 arithmetic.
    trainer = DPOTrainer(model=policy, ref_model=ref, processing_class=tok, train_dataset=Dataset.from_list(rows),
                         args=DPOConfig(output_dir=str(tmp_path), beta=1.0, loss_type=types, loss_weights=weights,
                                        report_to=[], use_cpu=True, bf16=False))
    with torch.no_grad():  # make the policy differ from the reference so the DPO term is not log 2
        for p in policy.model.layers[0].mlp.down_proj.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy.train()
    encoded = [trainer.train_dataset[i] for i in range(len(rows))]

    def ours(batch):
        side = {s: [(r["prompt_ids"], r[f"{s}_ids"]) for r in batch] for s in ("chosen", "rejected")}
        pc, lengths = sequence_logps(policy, side["chosen"], tok.pad_token_id)
        pr, _ = sequence_logps(policy, side["rejected"], tok.pad_token_id)
        with torch.no_grad():
            rc, _ = sequence_logps(ref, side["chosen"], tok.pad_token_id)
            rr, _ = sequence_logps(ref, side["rejected"], tok.pad_token_id)
        dpo = consistent_dpo_loss(pc, pr, rc, rr, beta=torch.ones(len(batch)))
        full = consistent_dpo_loss(pc, pr, rc, rr, beta=torch.ones(len(batch)), nll_weight=lam, chosen_lengths=lengths)
        return full.mean(), dpo.mean() + lam * (-pc.sum() / lengths.sum()), lengths

    same_length = encoded[:2]
    mine, _, lengths = ours(same_length)
    assert lengths[0] == lengths[1]
    theirs = trainer.compute_loss(policy, trainer.data_collator(same_length))
    assert float(mine) == pytest.approx(float(theirs), rel=1e-5)
    assert float(mine) != pytest.approx(math.log(2), abs=1e-3)
    # Unequal chosen lengths: CMAQ's per-query normalisation weighs a short query's tokens more.
    mine_all, trl_style, lengths = ours(encoded)
    assert len(set(lengths.tolist())) > 1
    if lam:
        assert float(mine_all) != pytest.approx(float(trl_style), rel=1e-4)


def test_soup_merge_is_exact(qsa, tiny_model, tmp_path):
    """The merged adapter's weight delta is α·Δa + (1−α)·Δb on every adapted matrix."""
    from safetensors.torch import load_file, save_file

    from training.baselines import merge_lora_soup
    from training.policy import load_policy

    a, b = tmp_path / "a", tmp_path / "b"
    for d, scale in ((a, 1.0), (b, -2.0)):
        d.mkdir()
        (d / "adapter_config.json").write_text((qsa[0] / "adapter_config.json").read_text())
        w = load_file(str(qsa[0] / "adapter_model.safetensors"))
        torch.manual_seed(int(scale * 10) + 100)
        save_file({k: v + scale * 0.01 * torch.randn_like(v) for k, v in w.items()},
                  str(d / "adapter_model.safetensors"))
    merged = merge_lora_soup(a, b, 0.3, tmp_path / "m")

    def delta(adapter):
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
        full = load_policy(tiny_model, adapter, trainable=False).merge_and_unload().state_dict()
        return {k: full[k] - base[k] for k in base if "proj" in k}

    da, db, dm = delta(a), delta(b), delta(merged)
    for k in dm:
        torch.testing.assert_close(dm[k], 0.3 * da[k] + 0.7 * db[k], atol=1e-6, rtol=1e-5)
    assert any(dm[k].abs().max() > 1e-4 for k in dm)


def test_baselines(qsa, trained_rms, rm_data, tmp_path):
    from click.testing import CliRunner

    from cmaq.cli import main as cli

    rms, _, _ = trained_rms
    sets = [f"align.qsa={qsa[0]}", f"align.rm_exp={rms / 'exp'}", f"align.rm_ctr={rms / 'ctr'}", "align.contents=16",
            "align.k=4", "align.temperature=1.0", "align.lr=0.002", "align.batch_size=8", "align.warmup_steps=1", "align.baseline_epochs=1"]
    args = sum([["--set", s] for s in sets], [])
    w0 = _lora(qsa[0])
    for method in ("dpo", "dpo-lw", "dpo-soup", "morl"):
        extra = ["--ctr-pairs", str(rm_data / "ctr_pairs")] if method == "dpo" else []
        result = CliRunner().invoke(cli, [*args, "train", "baseline", "--method", method, "--data",
                                          str(rm_data / "sft"), "--out", str(tmp_path), *extra])
        assert result.exit_code == 0, (method, result.output[-2000:])
        adapter = tmp_path / method / "adapter"
        w = _lora(adapter)
        if method == "dpo-soup":
            assert next(iter(w.values())).shape != next(iter(w0.values())).shape  # twice the rank
        else:
            assert any(not torch.allclose(w0[k], w[k]) for k in w0), method
    prefs = pd.read_parquet(tmp_path / "preferences.parquet")  # built once, shared
    assert prefs.content_id.nunique() == 16 and prefs.r_exp.between(0, 1).all()
    missing = CliRunner().invoke(cli, [*args, "train", "baseline", "--method", "dpo", "--data", str(rm_data / "sft"),
                                       "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--ctr-pairs" in missing.output


def test_killed_align_resumes_to_the_uninterrupted_result(qsa, trained_rms, rm_data, tmp_path):
    """`cmaq train align` killed in the middle of iteration 2 (after a checkpoint inside it), then run
    again, ends with the same adapter as a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from training.align import run_align

    rms = trained_rms[0]
    # 96 contents: the reward gate passes about one tiny-model sample in ten, and iteration 2 needs
    # several steps of pairs for the kill to land inside it
    settings = dict(qsa=str(qsa[0]), rm_exp=str(rms / "exp"), rm_ctr=str(rms / "ctr"), contents=96, k=4,
                    iterations=2, lr=2e-3, batch_size=2, warmup_steps=1, temperature=1.0, checkpoint_every=2,
                    seed=3, probe_contents=8, probe_k=2)
    whole = run_align(AlignConfig(out=str(tmp_path / "whole"), **settings), str(rm_data / "sft"))
    assert whole["iterations"][1]["pairs"] >= 6, whole["iterations"][1]["pairs"]  # >= 3 steps of batch 2
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cmaq.cli", *[a for k, v in settings.items() for a in ("--set", f"align.{k}={v!r}"
                                                                                          if isinstance(v, str) else
                                                                                          f"align.{k}={v}")],
           "train", "align", "--data", str(rm_data / "sft"), "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = killed / "iter-2" / "checkpoint"
    deadline = time.time() + 600
    while not any(checkpoints.glob("step-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before iteration 2's first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "iter-1" / "DONE").exists() and not (killed / "iter-2" / "DONE").exists(), \
        "the run was not killed inside iteration 2"
    resumed = run_align(AlignConfig(out=str(killed), **settings), str(rm_data / "sft"))
    assert [i["pairs"] for i in resumed["iterations"]] == [i["pairs"] for i in whole["iterations"]]
    a, b = _lora(tmp_path / "whole" / "adapter"), _lora(killed / "adapter")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_first_iteration_samples_are_drawn_once_and_shared(tmp_path, monkeypatch):
    """The α grid, the ablations and the baselines read one file of QSA samples; a run with another
    key (here k) draws its own instead of reading samples that are not its."""
    import types

    from training import preference

    monkeypatch.setattr("training.preference.adapter_version", lambda path: "qsa-v1")
    rows = [{"content_id": f"c{i}", "title": f"t{i}"} for i in range(10)]
    draws = []

    class Engine:
        def sample(self, items, k, temperature, seed, adapter):
            draws.append(len(items))
            cand = lambda t: types.SimpleNamespace(text=t)  # noqa: E731
            # c0 gets no usable query at all; the others k distinct ones.
            return [types.SimpleNamespace(candidates=[cand("" if it["content_id"] == "c0" else f"{it['content_id']} q{j}")
                                                      for j in range(k)]) for it in items]

    class Scorer:
        def score(self, items, queries):
            r = np.array([len(q) / 10 for q in queries])
            return types.SimpleNamespace(r_exp=r, r_ctr=1 - r)

    path = tmp_path / "samples.parquet"
    cfg = AlignConfig(contents=10, k=3, seed=2)
    first = preference.first_iteration_samples(cfg, rows, Engine, Scorer, path)
    again = preference.first_iteration_samples(cfg, rows, lambda: pytest.fail("sampled again"), Scorer, path)
    assert draws == [10] and path.exists()
    assert [it["content_id"] for it in first[0]] == [it["content_id"] for it in again[0]]
    assert first[1] == again[1] and sum(map(len, first[1])) == 27  # c0 has none
    np.testing.assert_array_equal(first[2], again[2])
    np.testing.assert_array_equal(first[3], again[3])
    preference.first_iteration_samples(AlignConfig(contents=10, k=4, seed=2), rows, Engine, Scorer, path)
    assert draws == [10, 10]
