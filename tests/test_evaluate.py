"""Evaluation maths (fronts, hypervolume, bootstrap), the claim verdicts, and the reproduction chain."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from training.evaluate import claims as cl
from training.evaluate.stats import bootstrap_mean, bootstrap_relative_delta, hypervolume_2d, pareto_front
from training.evaluate.tables import hypervolumes, reward_hacking


def test_pareto_front_drops_dominated_points_and_duplicates():
    pts = [(1, 3), (2, 2), (3, 1), (1, 1), (2, 2), (0.5, 3), (3, 0.5)]
    assert pareto_front(pts).tolist() == [[1, 3], [2, 2], [3, 1]]
    assert pareto_front([(1, 1)]).tolist() == [[1, 1]]
    assert len(pareto_front(np.empty((0, 2)))) == 0


@pytest.mark.parametrize("points,ref,area", [
    ([(1, 3), (2, 2), (3, 1)], (0, 0), 6.0),              # three unit-wide strips of height 3, 2, 1
    ([(1, 3), (2, 2), (3, 1), (1, 1)], (0, 0), 6.0),      # a dominated point adds nothing
    ([(1, 3), (2, 2), (3, 1)], (0.5, 0.5), 3.25),         # 0.5·2.5 + 1·1.5 + 1·0.5
    ([(2, 2)], (1, 1), 1.0),
    ([(2, 2), (0.5, 5)], (1, 1), 1.0),                    # below the reference on x: ignored
    ([], (0, 0), 0.0),
])
def test_hypervolume_matches_hand_computed_areas(points, ref, area):
    assert hypervolume_2d(points, ref) == pytest.approx(area)


def test_bootstrap_of_a_constant_has_no_spread():
    out = bootstrap_mean(np.full(50, 0.3), rounds=500)
    assert out == pytest.approx({"mean": 0.3, "se": 0.0, "lo": 0.3, "hi": 0.3})


def test_bootstrap_of_two_points_matches_the_exact_resampling_distribution():
    # Resampling {0, 1} twice: means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so SE = sqrt(1/8)
    # and the 95% percentile interval is [0, 1].
    out = bootstrap_mean([0.0, 1.0], rounds=20000, seed=1)
    assert out["mean"] == 0.5
    assert out["se"] == pytest.approx(np.sqrt(1 / 8), rel=0.03)
    assert (out["lo"], out["hi"]) == (0.0, 1.0)


def test_bootstrap_se_approaches_the_textbook_standard_error():
    x = np.random.default_rng(0).normal(size=400)
    assert bootstrap_mean(x, rounds=4000)["se"] == pytest.approx(x.std() / np.sqrt(len(x)), rel=0.08)


def test_relative_delta_is_paired():
    control = np.random.default_rng(1).uniform(0.01, 0.1, 300)
    exact = bootstrap_relative_delta(2 * control, control, rounds=500)
    assert exact == pytest.approx({"delta": 1.0, "se": 0.0, "lo": 1.0, "hi": 1.0})
    shifted = bootstrap_relative_delta(control * 1.1 + 0.001, control, rounds=2000)
    assert shifted["lo"] > 0.1 and shifted["lo"] < shifted["delta"] < shifted["hi"]
    with pytest.raises(ValueError):
        bootstrap_relative_delta([1.0, 2.0], [1.0], rounds=100)


def _summary(rows: list[tuple]) -> pd.DataFrame:
    cols = ["policy", "method", "alpha", "iteration", "r_ctr", "r_exp", "true_ctr", "true_exp", "combined",
            "delta_ctr", "delta_ctr_lo", "delta_ctr_hi"]
    return pd.DataFrame(rows, columns=cols)


def _world(cmaq_shift: float = 0.0) -> pd.DataFrame:
    """A hand-made world where the paper's claims hold when ``cmaq_shift`` is 0."""
    s = cmaq_shift
    rows = [("qsa", "qsa", np.nan, -1, .50, .50, .040, .30, np.nan, 0, 0, 0),
            ("dpo", "dpo", np.nan, -1, .60, .40, .042, .25, np.nan, .02, .01, .03)]
    for a, (c, e) in {0.4: (.70, .55), 0.6: (.62, .62)}.items():
        rows += [(f"cmaq-a{a}-it1", "cmaq", a, 1, c - .05, e - .05, .04, .3, .5, .03, .02, .04),
                 (f"cmaq-a{a}-it2", "cmaq", a, 2, c - s, e - s, .045, .33, .6 - s, .08, .06, .1),
                 (f"morl-a{a}", "morl", a, -1, c - .06, e - .04, .043, .31, .55, .05, .04, .06),
                 (f"cmaq-wo-ot-a{a}", "cmaq-wo-ot", a, -1, c - .2, e, .04, .3, .5, .01, 0, .02),
                 (f"cmaq-wo-cds-a{a}", "cmaq-wo-cds", a, -1, c + (.02 if a == .4 else -.03), e - .1, .04, .3,
                  .55, .02, .01, .03),
                 (f"cmaq-wo-ct-a{a}", "cmaq-wo-ct", a, -1, c - .05, e - .01, .04, .3, .57, .02, .01, .03)]
    return _summary(rows)


def test_claims_reproduce_on_a_world_built_to_satisfy_them():
    summary = _world()
    verdicts = {v.claim: v for v in cl.judge(summary, hypervolumes(summary))}
    assert {c: v.verdict for c, v in verdicts.items()} == {c: cl.REPRODUCED for c in "abcdef"}
    assert verdicts["f"].evidence["cmaq"]["delta_ctr"] == pytest.approx(0.08)


def test_claims_fail_when_the_numbers_say_so():
    summary = _world(cmaq_shift=0.3)          # CMAQ's final iteration collapses
    verdicts = {v.claim: v.verdict for v in cl.judge(summary, hypervolumes(summary))}
    assert verdicts["a"] == cl.NOT_REPRODUCED
    assert verdicts["e"] == cl.NOT_REPRODUCED
    assert verdicts["d"] in (cl.PARTLY, cl.NOT_REPRODUCED)
    no_dpo = summary[summary["method"] != "dpo"]
    assert cl.claim_b(no_dpo, hypervolumes(no_dpo)).verdict == cl.NOT_TESTED


def test_reward_hacking_is_flagged_only_when_rm_and_oracle_disagree():
    summary = _summary([("qsa", "qsa", np.nan, -1, .5, .5, .040, .30, np.nan, 0, 0, 0),
                        ("fooled", "cmaq", .4, 1, .8, .3, .030, .25, .5, 0, 0, 0),
                        ("honest", "morl", .4, -1, .6, .6, .045, .35, .6, 0, 0, 0)])
    flagged = reward_hacking(summary)
    assert flagged[["policy", "objective"]].values.tolist() == [["fooled", "ctr"]]
    assert flagged["oracle_change"].iloc[0] == pytest.approx(-0.01)


# ---------------------------------------------------------------------- the chain, reduced


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, small_world, rm_data, trained_rms, spark):
    """The reproduction chain at smoke size, twice with the same seed. World, data and reward models are
    the session's (a step is skipped when its output exists); QSA onwards runs in each."""
    from cmaq.cli.reproduce import Reproduction, profile_config

    rms = trained_rms[0]
    runs = []
    for name in ("first", "second"):
        root = tmp_path_factory.mktemp(f"reproduce-{name}")
        work = root / "work"
        work.mkdir()
        for link, target in (("world", small_world), ("data", rm_data)):
            (work / link).symlink_to(target, target_is_directory=True)
        for name, source in (("rm-exp", rms / "exp"), ("rm-ctr", rms / "ctr")):
            shutil.copytree(source, work / name)  # the RM checks write into the RMs' metrics.json
        cfg = profile_config("smoke", None, (f'reproduce.out="{work}"', f'reproduce.report="{root / "reports"}"'))
        messages: list[str] = []
        result = Reproduction(cfg, spark=spark, progress=messages.append).run()
        runs.append((root, result, messages, cfg))
    return runs


def test_reproduction_writes_report_tables_and_figures(smoke_runs):
    root, result, messages, cfg = smoke_runs[0]
    tables = root / "reports" / "reproduction"
    for name in ("summary.csv", "summary.json", "summary_by_seed.csv", "hypervolume.csv", "claims.json",
                 "reward_hacking.csv", "top1.csv", "proxy_points.csv", "note_blindness.csv", "fixed.json",
                 "runs.jsonl", "fronts_rm.png", "fronts_oracle.png", "cmaq_iterations.png", "figure7_rm.png",
                 "figure7_oracle.png"):
        assert (tables / name).stat().st_size > 0, name
    report = (root / "reports" / "reproduction.md").read_text()
    for claim in "abcdef":
        assert f"| ({claim}) |" in report
    for check in ("ab", "collapse", "proxy", "hypervolume", "hacking"):
        assert f"| ({check}) |" in report
    assert set(result["checks"]) == {"ab", "collapse", "proxy", "hypervolume", "hacking"}
    assert "oracle code hash" in report and "world seed" in report and "training seeds" in report
    # the simulated A/B serves as the nightly does: its serving chain and its decoding, recorded
    assert "lexical, harm, commercial, relevance" in report and "length_penalty 0.0" in report
    assert "## Reward models (held-out notes)" in report and "| swapped-note accuracy |" in report
    assert "own_kind_share" in report and "distinct_top1_share" in report
    assert "## Every evaluated run" in report and "## The proxy's choices in hindsight" in report
    checks = json.loads((root / "work" / "rm-checks.json").read_text())
    assert checks["swapped_note"]["ctr"]["pairs"] > 0 and checks["note_blindness"]["samples"] > 0
    for name in ("rm-exp", "rm-ctr"):
        metrics = json.loads((root / "work" / name / "metrics.json").read_text())
        assert {"swapped_note", "note_blindness"} <= set(metrics)
    assert set(result["claims"]) == set("abcdef")
    rows = pd.read_parquet(tables / "rows.parquet")
    per_policy = rows.groupby("policy")["content_id"].agg(["count", "nunique"])
    assert (per_policy["count"] == cfg.reproduce.test_contents).all()
    assert (per_policy["nunique"] == cfg.reproduce.test_contents).all()
    # the headline for both seeds; the full protocol's additions on the first only
    expected = {"zero-shot", "qsa", "dpo-s0", "dpo-s1", "morl-a0.4-s0", "morl-a0.4-s1", "cmaq-a0.4-it1-s0",
                "cmaq-a0.4-it2-s1", "cmaq-a0.4-proxy-s0", "cmaq-a0.4-proxy-s1", "cmaq-a0.6-it2-s0",
                "dpo-soup-a0.6-s0", "dpo-lw-a0.4-s0", "cmaq-wo-ot-a0.4-s0", "cmaq-wo-cds-a0.4-s0",
                "cmaq-wo-ct-a0.4-s0", "cmaq-k4-g0.2-a0.4-s0", "cmaq-k6-g0.2-a0.4-s0"}
    assert expected <= set(per_policy.index)
    assert not {"cmaq-a0.6-it2-s1", "dpo-lw-a0.4-s1"} & set(per_policy.index)
    work = root / "work"
    # each seed chose its served iteration with the proxy, and the proxy arm serves exactly those rows
    for seed in (0, 1):
        chosen = json.loads((work / f"seed-{seed}" / "cmaq-a0.4" / "metrics.json").read_text())["selected_iteration"]
        proxy = rows[rows["policy"] == f"cmaq-a0.4-proxy-s{seed}"].set_index("content_id")["query"]
        served = rows[rows["policy"] == f"cmaq-a0.4-it{chosen}-s{seed}"].set_index("content_id")["query"]
        assert proxy.equals(served)
    arms = pd.read_csv(tables / "summary.csv").set_index("policy")
    assert arms.loc["cmaq-a0.4-proxy", "seeds"] == 2 and arms.loc["cmaq-a0.6-it2", "seeds"] == 1
    # Figure 7's point at the run's own k and γ is CMAQ's run, not a second one
    assert not (work / "seed-0" / "figure7" / "cmaq-k6-g0.2-a0.4").exists()
    assert (work / "seed-0" / "figure7" / "cmaq-k4-g0.2-a0.4" / "metrics.json").exists()
    # ... and another k draws its own QSA samples once, beside the run's own
    assert (work / "seed-0" / "qsa-samples-k4.parquet").exists() and (work / "seed-0" / "qsa-samples.parquet").exists()
    # w/o OT shares CMAQ's first iteration instead of recomputing it
    assert any("cmaq-wo-ot" in m for m in messages)
    assert (work / "seed-0" / "cmaq-wo-ot-a0.4" / "iter-1" / "pairs.parquet").read_bytes() == \
        (work / "seed-0" / "cmaq-a0.4" / "iter-1" / "pairs.parquet").read_bytes()
    # the seeds differ: their first iterations sampled other contents
    assert (work / "seed-0" / "cmaq-a0.4" / "iter-1" / "pairs.parquet").read_bytes() != \
        (work / "seed-1" / "cmaq-a0.4" / "iter-1" / "pairs.parquet").read_bytes()
    registry = [json.loads(line) for line in (tables / "runs.jsonl").read_text().splitlines()]
    assert len(registry) == 1 and registry[0]["differs_from_fixed"] == []
    assert registry[0]["settings"]["seeds"] == [0, 1]


def test_the_simulated_ab_refuses_a_decoding_the_nightly_would_not_share():
    from cmaq.config import EngineConfig
    from training.evaluate.offline import Evaluator

    with pytest.raises(ValueError, match="length_penalty"):
        Evaluator("unused", "unused", "unused", [], "unused", engine_cfg=EngineConfig(length_penalty=1.0))


def test_reproduction_is_deterministic(smoke_runs):
    (a, *_), (b, *_) = smoke_runs
    for name in ("summary.csv", "hypervolume.csv", "claims.json", "reward_hacking.csv"):
        assert (a / "reports" / "reproduction" / name).read_text() == \
            (b / "reports" / "reproduction" / name).read_text(), name


def test_reproduction_resumes_without_redoing_steps(smoke_runs):
    from cmaq.cli.reproduce import Reproduction

    root, _, _, cfg = smoke_runs[0]
    messages: list[str] = []
    Reproduction(cfg, progress=messages.append).run()
    trained = [m for m in messages if m.startswith("[reproduce]") and "skipped" not in m
               and "evaluating" not in m]
    assert trained == [], trained
    # the re-evaluation from cached rows is the same run: the registry does not list it twice
    assert len((root / "reports" / "reproduction" / "runs.jsonl").read_text().splitlines()) == 1


def test_eval_cli_evaluates_named_policies(smoke_runs, small_world, rm_data, trained_rms, tmp_path):
    from click.testing import CliRunner

    from cmaq.cli import main
    from conftest import command_json

    work = smoke_runs[0][0] / "work"
    rms = trained_rms[0]
    args = ["eval", "policies", "--world", str(small_world), "--test-contents", str(rm_data / "test_contents"),
            "--rm-exp", str(rms / "exp"), "--rm-ctr", str(rms / "ctr"), "--limit", "6",
            "--out", str(tmp_path / "rows"), "--report", str(tmp_path / "report")]
    ok = CliRunner().invoke(main, [*args, "--policy", f"qsa={work / 'qsa' / 'adapter'}",
                                   "--policy", f"cmaq@0.4@2={work / 'seed-0' / 'cmaq-a0.4' / 'iter-2' / 'adapter'}", "--policy", "zero-shot="])
    assert ok.exit_code == 0, ok.output
    assert command_json(ok.output)["policies"] == 3
    assert len(pd.read_parquet(tmp_path / "rows" / "cmaq-a0.4-it2.parquet")) == 6
    bad = CliRunner().invoke(main, [*args, "--policy", "qsa@high=x"])
    assert bad.exit_code == 2 and "must be a number" in bad.output
    missing = CliRunner().invoke(main, [*args, "--policy", f"qsa={tmp_path / 'nope'}"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_gpu_profile_backbone_is_deterministic_and_replaces_every_base(tiny_model, tmp_path):
    """The GPU profile's random-initialised backbone: the same seed gives the same weights, it keeps the
    tiny model's tokenizer, and every model of the chain (RMs, QSA, CMAQ) is built on it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cmaq.cli.reproduce import Reproduction, profile_config
    from cmaq.engines import base_model_dir
    from cmaq.engines.tiny import build_random_backbone

    a = build_random_backbone(tmp_path / "a", hidden=64, layers=2, seed=3, tokenizer_from=tiny_model)
    b = build_random_backbone(tmp_path / "b", hidden=64, layers=2, seed=3, tokenizer_from=tiny_model)
    c = build_random_backbone(tmp_path / "c", hidden=64, layers=2, seed=4, tokenizer_from=tiny_model)
    weights = lambda d: (d / "model.safetensors").read_bytes()  # noqa: E731
    assert weights(a) == weights(b) and weights(a) != weights(c)
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert AutoTokenizer.from_pretrained(a).get_vocab() == AutoTokenizer.from_pretrained(tiny_model).get_vocab()

    cfg = profile_config("smoke", overrides=(f"reproduce.out={tmp_path / 'run'}", "reproduce.backbone_layers=1",
                                             "reproduce.backbone_hidden=64"))
    run = Reproduction(cfg, progress=lambda *_: None)
    run.make_backbone()
    backbone = str(tmp_path / "run" / "backbone")
    assert {base_model_dir(run.cfg.model, section.model_dir)
            for section in (run.cfg.sft, run.cfg.align, run.cfg.rm_exp, run.cfg.rm_ctr)} == {backbone}
