"""Reward models on the tiny backbone: the losses (against hand values and TRL), the reward math,
training from the world's data with checkpoints and resume, and the batch scorer."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cmaq.cli import main as cli
from cmaq.config import RewardModelConfig
from cmaq.losses import answer_nll, bpr_loss
from cmaq.rewards import combine, normalise_ctr
from training.reward_models.scorer import RewardScorer

ITEM = {"content_id": "c1", "lang": "en", "title": "Noodle house on Gulou", "body": "Rich broth, hand-pulled noodles.",
        "shop_name": "Lao Wang Noodles", "shop_info": "Dongcheng · 10:00-22:00"}


def test_bpr_loss_by_hand():
    r_plus, r_minus = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = np.mean([math.log(1 + math.exp(-d)) for d in (1.0, 0.0, -2.0)])
    assert float(bpr_loss(r_plus, r_minus)) == pytest.approx(expected, rel=1e-6)
    margin = torch.tensor([0.5, 0.0, 0.0])
    expected_m = np.mean([math.log(1 + math.exp(-d)) for d in (0.5, 0.0, -2.0)])
    assert float(bpr_loss(r_plus, r_minus, margin)) == pytest.approx(expected_m, rel=1e-6)


def test_answer_nll_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2])
    z0 = math.log(math.exp(2) + 1 + math.exp(-1))
    expected = ((z0 - 2.0) + math.log(3)) / 2
    assert float(answer_nll(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_normalise_and_combine():
    raw = [0.0, 2.0, -2.0, 5.0, 5.0]
    assert normalise_ctr(raw)[:3] == pytest.approx([0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))])
    mm = normalise_ctr(raw, "minmax", groups=["a", "a", "a", "b", "b"])
    assert mm.tolist() == [0.5, 1.0, 0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="groups"):
        normalise_ctr(raw, "minmax")
    with pytest.raises(ValueError, match="unknown"):
        normalise_ctr(raw, "softmax")
    assert combine([0.25], [1.0], 0.5)[0] == pytest.approx(0.5)
    assert combine([0.25], [1.0], 0.5, "arithmetic")[0] == pytest.approx(0.625)
    assert combine([0.0], [1.0], 0.2)[0] == 0.0  # the geometric mean vetoes a zero on either side
    assert combine([0.9], [0.4], 0.8)[0] > combine([0.9], [0.4], 0.2)[0]  # larger alpha: expansion counts more
    with pytest.raises(ValueError):
        combine([0.5], [0.5], 1.5)


def test_bpr_loss_equals_trl_reward_trainer(tiny_model, tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from cmaq.shared_prefix import pad_right
    from training.reward_models.models import CtrRM, base_model, tokenizer_of

    tok = tokenizer_of(tiny_model)
    torch.manual_seed(0)
    model = base_model("ctr", tiny_model)
    trainer = RewardTrainer(model=model, processing_class=tok,
                            args=RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                              center_rewards_coefficient=None),
                            train_dataset=Dataset.from_list([{"chosen": "a", "rejected": "b"}] * 2))
    rm = CtrRM(model, tok, 128)
    plus = [rm.encode(ITEM, q) for q in ["opening hours", "parking nearby", "best dumplings in Dongcheng"]]
    minus = [rm.encode(ITEM, q) for q in ["Lao Wang Noodles", "noodle", "weather"]]
    ids, mask = pad_right(plus + minus, tok.pad_token_id)
    model.train()
    ours = bpr_loss(*rm.rewards(plus + minus).split(3))
    theirs = trainer.compute_loss(model, {"input_ids": ids, "attention_mask": mask})
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6, abs=1e-7)
    assert float(ours) > 0


def test_reward_models_learn(trained_rms):
    out, exp, ctr = trained_rms
    # Above chance on held-out data (the full-size figures are in the closing note and the README). The
    # expansion RM ranks held-out positives above negatives (AUC; on this 600-note world its thresholded
    # accuracy sits near the 63% majority rate, so accuracy would not tell learning from noise).
    assert exp["test_auc"] > 0.6, exp
    assert exp["validation_curve"] and exp["best_step"] in [step for step, _ in exp["validation_curve"]]
    assert ctr["test_pair_accuracy"] >= 0.7, ctr
    assert exp["loss_last20"] < exp["loss_first"] and ctr["loss_last20"] < ctr["loss_first"]
    assert exp["oracle"]["mean_spearman"] > 0.2 and ctr["oracle"]["mean_spearman"] > 0.2
    for kind in ("exp", "ctr"):
        saved = json.loads((out / kind / "metrics.json").read_text())
        assert saved["steps_run"] == len(saved["loss_curve"]) and not (out / kind / "checkpoint").exists()


def test_scorer_is_deterministic_and_batch_invariant(trained_rms, small_world):
    import pyarrow.parquet as pq

    out, _, _ = trained_rms
    truth = pq.read_table(small_world / "truth" / "grammar").slice(0, 40).to_pylist()
    content = {r["content_id"]: r for r in pq.read_table(small_world / "content").to_pylist()}
    items, queries = [content[r["content_id"]] for r in truth], [r["query"] for r in truth]
    one = RewardScorer(str(out / "exp"), str(out / "ctr"), batch_size=1).score(items, queries)
    big = RewardScorer(str(out / "exp"), str(out / "ctr"), batch_size=32).score(items, queries)
    again = RewardScorer(str(out / "exp"), str(out / "ctr"), batch_size=32).score(items, queries)
    np.testing.assert_allclose(one.r_exp, big.r_exp, atol=1e-5)
    np.testing.assert_allclose(one.r_ctr_raw, big.r_ctr_raw, atol=1e-4)
    np.testing.assert_array_equal(big.r_exp, again.r_exp)
    assert ((big.r_exp >= 0) & (big.r_exp <= 1)).all() and ((big.r_ctr >= 0) & (big.r_ctr <= 1)).all()
    assert big.r_exp.std() > 0 and big.r_ctr_raw.std() > 0


def test_training_resumes_from_a_checkpoint(tiny_model, tmp_path):
    """A run killed after its first checkpoint, resumed, ends with the same weights as one never killed."""
    from peft import get_peft_model

    from training.loop import train
    from training.reward_models.models import ExpansionRM, base_model, lora_config, tokenizer_of

    cfg = RewardModelConfig(epochs=1, batch_size=4, checkpoint_every=3, lr=1e-3)
    queries = ["opening hours", "Lao Wang Noodles", "parking", "noodle", "best dumplings", "the weather",
               "booking", "menu", "late night snacks", "Gulou", "subway", "hotel nearby"] * 2

    def run(out, crash_at=None):
        torch.manual_seed(0)
        tok = tokenizer_of(tiny_model)
        model = get_peft_model(base_model("expansion", tiny_model), lora_config("expansion", 4, 8, 0.0))
        rm = ExpansionRM(model, tok, 256)
        seqs = [rm.encode(ITEM, q) for q in queries]
        targets = torch.tensor([rm.id1 if i % 2 == 0 else rm.id0 for i in range(len(queries))])
        calls = []

        def step_loss(idx):
            calls.append(idx)
            if crash_at is not None and len(calls) > crash_at:
                raise KeyboardInterrupt("killed")
            return answer_nll(rm.answer_logits([seqs[i] for i in idx]), targets[idx])

        metrics = train(model, len(seqs), step_loss, cfg, out, lambda: {}, "test")
        return model, metrics

    clean, clean_metrics = run(tmp_path / "clean")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", crash_at=4)
    assert (tmp_path / "killed" / "checkpoint" / "step-3").is_dir()
    resumed, metrics = run(tmp_path / "killed")
    assert metrics["resumed_at"] == 3 and metrics["steps"] == clean_metrics["steps"] == 6
    assert metrics["loss_curve"] == pytest.approx(clean_metrics["loss_curve"], abs=1e-5)
    a = {k: v for k, v in clean.state_dict().items() if "lora" in k}
    b = {k: v for k, v in resumed.state_dict().items() if "lora" in k}
    assert a and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_train_command_bad_input(tmp_path):
    result = CliRunner().invoke(cli, ["train", "rm-exp", "--data", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such data" in result.output


def test_score_command_adds_rewards_to_the_pool(trained_rms, small_world, spark, tmp_path, monkeypatch):
    import pandas as pd
    import pyarrow.parquet as pq

    from cmaq.config import load_config
    from conftest import REPO, command_json
    from jobs.nightly import build_pool

    # Spark's Python workers import the engine double by name.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    out, _, _ = trained_rms
    content = tmp_path / "c.parquet"
    pq.write_table(pq.read_table(small_world / "content").slice(0, 12), content)
    cfg = load_config(None, ["engine.backend=tests.doubles.engines:PlantingEngine", f"pool.root={tmp_path / 'pool'}",
                             "pool.kv_url=none"])
    assert build_pool(spark, cfg, str(content)).exit_code == 0
    scored = tmp_path / "scored.parquet"
    result = CliRunner().invoke(cli, ["score", "--pool", str(tmp_path / "pool"), "--content", str(content),
                                      "--rm-exp", str(out / "exp"), "--rm-ctr", str(out / "ctr"),
                                      "--out", str(scored)])
    assert result.exit_code == 0, result.output[-2000:]
    df = pd.read_parquet(scored)
    assert len(df) == command_json(result.output)["rows"] > 0
    assert df["r_exp"].between(0, 1).all() and df["r_ctr"].between(0, 1).all() and df["r_ctr_raw"].notna().all()
    # the same (content, query) scores the same through the scorer directly
    row = df.iloc[0]
    item = pq.read_table(content).to_pandas().set_index("content_id").loc[row["content_id"]].to_dict()
    direct = RewardScorer(str(out / "exp"), str(out / "ctr")).score([item], [row["query"]])
    assert direct.r_exp[0] == pytest.approx(row["r_exp"], abs=1e-5)


def test_consistent_dpo_loss_and_adaptive_beta_by_hand():
    from cmaq.losses import adaptive_beta, consistent_dpo_loss

    pc, pr = torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -5.0])
    rc, rr = torch.tensor([-4.5, -6.5]), torch.tensor([-4.5, -5.5])
    # logits: (0.5 - (-0.5)) = 1.0 and (0.5 - 0.5) = 0.0
    plain = consistent_dpo_loss(pc, pr, rc, rr, beta=1.0)
    assert plain.tolist() == pytest.approx([math.log(1 + math.exp(-1.0)), math.log(2)])
    beta = torch.tensor([2.0, 0.5])
    lengths = torch.tensor([4, 3])
    full = consistent_dpo_loss(pc, pr, rc, rr, beta=beta, nll_weight=0.5, chosen_lengths=lengths)
    assert full.tolist() == pytest.approx([math.log(1 + math.exp(-2.0)) + 0.5 * 4.0 / 4,
                                           math.log(2) + 0.5 * 6.0 / 3])
    r_c, r_l = torch.tensor([0.9, 0.6, 0.7]), torch.tensor([0.1, 0.5, 0.2])
    bt = adaptive_beta(r_c, r_l, gamma=0.2)
    m = (0.9 * 0.9 + 0.6 * 0.5 + 0.7 * 0.8) / 3
    assert bt.tolist() == pytest.approx([1 + 0.2 * (0.81 - m), 1 + 0.2 * (0.30 - m), 1 + 0.2 * (0.56 - m)])
    assert float(bt.mean()) == pytest.approx(1.0)
    assert float(adaptive_beta(r_c, r_l, gamma=50.0).min()) == pytest.approx(0.05)  # the floor


def test_isotonic_fit_by_hand():
    from cmaq.rewards import fit_isotonic

    cal = fit_isotonic([1, 2, 3, 4], [1, 3, 2, 4], [1, 1, 1, 1])
    assert cal.apply([0, 1, 2, 2.5, 3, 4, 9]).tolist() == pytest.approx([1, 1, 2.5, 2.5, 2.5, 4, 4])
    weighted = fit_isotonic([4, 3, 2, 1], [4, 2, 3, 1], [1, 3, 1, 1])   # order of input does not matter
    assert weighted.apply([2, 3]).tolist() == pytest.approx([(3 * 1 + 2 * 3) / 4] * 2)
    assert fit_isotonic([1, 2, 3], [3, 2, 1], [1, 1, 1]).apply([1, 3]).tolist() == pytest.approx([2, 2])
    with pytest.raises(ValueError):
        fit_isotonic([1, 2], [1], [1, 1])
    # equal scores are pooled first, whatever their order
    for order in ([0, 1, 2, 3], [0, 2, 1, 3]):
        x, y = np.array([0, 1, 1, 2])[order], np.array([0.1, 0.2, 0.6, 0.3])[order]
        assert fit_isotonic(x, y, np.ones(4)).apply([0, 1, 2]).tolist() == pytest.approx([0.1, 1.1 / 3, 1.1 / 3])


def test_expected_calibration_error():
    from cmaq.rewards import expected_calibration_error

    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.5, 20_000)
    n = rng.integers(200, 2000, 20_000)
    clicks = rng.binomial(n, p)
    assert expected_calibration_error(p, clicks, n) < 0.005
    assert expected_calibration_error(np.clip(p + 0.1, 0, 1), clicks, n) == pytest.approx(0.1, abs=0.005)
    assert expected_calibration_error(np.full(len(p), 0.9), clicks, n) > 0.6
    # a plateau of equal predictions stays in one bin: exactly calibrated in total, so no error
    plateau = expected_calibration_error([0.2] * 4, [10, 30, 10, 30], [100] * 4)
    assert plateau == pytest.approx(0.0)


def test_calibrated_normalisation_needs_its_calibration():
    from cmaq.rewards import Calibration

    with pytest.raises(ValueError, match="calibration"):
        normalise_ctr([0.0, 1.0], "calibrated")
    cal = Calibration((0.0, 1.0), (0.1, 0.3))
    assert normalise_ctr([-5.0, 0.5, 5.0], "calibrated", calibration=cal).tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_early_stopping_keeps_the_weights_of_the_best_validation(tmp_path):
    from training.loop import train

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    cfg = RewardModelConfig(epochs=10, batch_size=4, patience=2, checkpoint_every=1000, lr=0.1, warmup_steps=1)
    scripted = iter([3.0, 2.0, 2.5, 2.6, 1.0, 0.5])
    seen = []

    def validate():
        seen.append(model.weight.detach().clone())
        return next(scripted)

    metrics = train(model, 8, lambda idx: ((model(x[idx]) - y[idx]) ** 2).mean(), cfg, tmp_path, lambda: {},
                    "linear", validate)
    # one validation per epoch (2 steps); after the 2nd the loss rose twice: stop after the 4th
    assert [step for step, _ in metrics["validation_curve"]] == [2, 4, 6, 8]
    assert metrics["stopped_early_at"] == 8 and metrics["best_step"] == 4 and metrics["steps_run"] == 8
    assert len(metrics["loss_curve"]) == 8 and metrics["steps"] == 20
    assert torch.equal(model.weight.detach(), seen[1]) and not torch.equal(seen[1], seen[3])


def test_a_calibrated_ensemble_of_ctr_models(rm_data, tmp_path):
    from training.reward_models.models import member_dirs
    from training.reward_models.train import train_ctr

    cfg = RewardModelConfig(out=str(tmp_path / "ens"), members=2, epochs=0.5, max_train_examples=160,
                            normalisation="calibrated", checkpoint_every=1000)
    metrics = train_ctr(cfg, str(rm_data / "ctr_pairs"))
    assert metrics["members_count"] == 2 and len(metrics["members"]) == 2
    assert len(metrics["member_test_pair_accuracy"]) == 2
    ece = metrics["calibration"]["ece"]
    assert set(ece) == {"sigmoid", "minmax", "calibrated"}
    assert ece["calibrated"] < ece["sigmoid"]  # σ(raw) is no click probability; the fitted map is closer
    dirs = member_dirs(tmp_path / "ens")
    assert [d.name for d in dirs] == ["member-0", "member-1"]
    seeds = [json.loads((d / "cmaq_rm.json").read_text())["seed"] for d in dirs]
    assert seeds == [cfg.seed, cfg.seed + 1]

    items = [dict(ITEM, content_id=f"c{i}") for i in range(4)]
    queries = ["opening hours", "Lao Wang Noodles", "noodle soup", "weather tomorrow"]
    scores = RewardScorer(None, str(tmp_path / "ens")).score(items, queries)
    members = [RewardScorer(None, str(d)).score(items, queries).r_ctr_raw for d in dirs]
    np.testing.assert_allclose(scores.r_ctr_raw, np.mean(members, axis=0), atol=1e-5)
    np.testing.assert_allclose(scores.r_ctr_raw_std, np.std(members, axis=0), atol=1e-5)
    assert scores.r_ctr_raw_std.max() > 0
    from training.reward_models.scorer import read_calibration

    np.testing.assert_allclose(scores.r_ctr, read_calibration(tmp_path / "ens").apply(scores.r_ctr_raw), atol=1e-9)
    # r_ctr's spread is that of the members' normalised scores: what align.reward = "lcb" subtracts
    calibration = read_calibration(tmp_path / "ens")
    np.testing.assert_allclose(scores.r_ctr_std, np.std([calibration.apply(m) for m in members], axis=0), atol=1e-6)
    _, low_ctr = scores.lower_bounds(2.0)
    np.testing.assert_allclose(low_ctr, np.clip(scores.r_ctr - 2.0 * scores.r_ctr_std, 0, 1))

    # A rerun (an ensemble run killed after its members) keeps the members trained with these settings ...
    (tmp_path / "ens" / "member-1" / "metrics.json").unlink()     # member 1 "did not finish"
    again = train_ctr(cfg, str(rm_data / "ctr_pairs"))
    assert again["members"][0]["train_seconds"] == metrics["members"][0]["train_seconds"]
    assert again["test_pair_accuracy"] == pytest.approx(metrics["test_pair_accuracy"], abs=1e-4)
    # ... and retrains them when a setting changed
    changed = train_ctr(replace(cfg, lr=cfg.lr * 2), str(rm_data / "ctr_pairs"))
    assert changed["members"][0]["loss_first"] == metrics["members"][0]["loss_first"]  # same start, new run
    assert changed["members"][0]["loss_last20"] != metrics["members"][0]["loss_last20"]
