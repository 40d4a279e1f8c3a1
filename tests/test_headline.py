"""Issue 18's multi-seed evaluation on small inline rows: the seeds × contents bootstrap, the arms (the
proxy-chosen iteration among them), the acceptance checks and the run registry."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.evaluate import headline as hl
from training.evaluate.runs import RunRegistry
from training.evaluate.stats import bootstrap_seeds_contents_delta, bootstrap_seeds_contents_mean
from training.evaluate.tables import proxy_arm, summarise_arms, with_chosen_iterations


def test_two_level_bootstrap_of_a_constant_has_no_spread():
    b = bootstrap_seeds_contents_mean(np.full((3, 20), 0.25), rounds=200)
    assert b["mean"] == pytest.approx(0.25) and b["lo"] == pytest.approx(0.25) and b["se"] == pytest.approx(0)


def test_two_level_interval_carries_the_seeds_disagreement():
    rng = np.random.default_rng(0)
    control = rng.uniform(0.1, 0.3, 400)
    agree = np.stack([control * 1.05] * 3)
    disagree = np.stack([control * 1.25, control * 1.05, control * 0.85])
    a = bootstrap_seeds_contents_delta(agree, control, rounds=500)
    d = bootstrap_seeds_contents_delta(disagree, control, rounds=500)
    assert a["delta"] == pytest.approx(0.05) and d["delta"] == pytest.approx(0.05)
    assert a["lo"] > 0.049 and a["hi"] < 0.051           # paired contents: identical ratios leave no doubt
    assert d["lo"] < 0 < d["hi"]                          # three seeds that disagree do
    assert d["seed_deltas"] == pytest.approx([0.25, 0.05, -0.15])
    assert d["seed_sd"] == pytest.approx(0.2)
    # a control shared by the seeds is the same as each seed paired with its own copy of it
    paired = bootstrap_seeds_contents_delta(disagree, np.stack([control] * 3), rounds=500)
    assert paired["delta"] == pytest.approx(d["delta"]) and paired["seed_deltas"] == pytest.approx(d["seed_deltas"])


def test_two_level_bootstrap_refuses_unpaired_shapes():
    with pytest.raises(ValueError, match="does not pair"):
        bootstrap_seeds_contents_delta(np.ones((3, 5)), np.ones((2, 5)))


def _rows(policies: list[tuple], contents: int = 40) -> pd.DataFrame:
    """Rows of ``(arm, method, alpha, iteration, seed, exposed_ctr, query_fn)`` policies over ``contents`` notes."""
    frames = []
    for arm, method, alpha, iteration, seed, ctr, query in policies:
        ids = [f"c{i:03d}" for i in range(contents)]
        frames.append(pd.DataFrame({
            "policy": arm if seed < 0 else f"{arm}-s{seed}", "arm": arm, "seed": seed, "method": method,
            "alpha": alpha, "iteration": iteration, "content_id": ids, "query": [query(i) for i in range(contents)],
            "r_exp": 0.5, "r_ctr": 0.5 + 0.1 * (method != "qsa"), "true_ctr": ctr, "true_exp": 0.3,
            "exposed_query": [query(i) for i in range(contents)], "exposed_true_ctr": ctr, "exposed_true_exp": 0.3}))
    return pd.concat(frames, ignore_index=True)


def _world(ctr_by_iteration: dict[int, dict[int, float]], query=lambda i: f"q{i}") -> pd.DataFrame:
    """QSA at CTR 0.10 and CMAQ α=0.4 with ``ctr_by_iteration[seed][t]``."""
    policies = [("qsa", "qsa", np.nan, -1, -1, 0.10, lambda i: f"qsa{i}")]
    for seed, by_t in ctr_by_iteration.items():
        policies += [(f"cmaq-a0.4-it{t}", "cmaq", 0.4, t, seed, ctr, query) for t, ctr in by_t.items()]
    return _rows(policies)


def test_the_proxy_arm_serves_each_seeds_chosen_iteration():
    rows = with_chosen_iterations(_world({0: {1: 0.11, 2: 0.13}, 1: {1: 0.12, 2: 0.09}}), {0: 2, 1: 1}, 0.4)
    arms = summarise_arms(rows, rounds=200).set_index("policy")
    chosen = arms.loc[proxy_arm(0.4)]
    assert chosen["seeds"] == 2 and chosen["exposed_ctr"] == pytest.approx((0.13 + 0.12) / 2)
    assert chosen["delta_ctr"] == pytest.approx(0.25)
    assert chosen["delta_ctr_by_seed"] == pytest.approx([0.3, 0.2])
    assert arms.loc["cmaq-a0.4-it2", "delta_ctr"] == pytest.approx(0.1)
    assert arms.loc["qsa", "delta_ctr"] == 0


def _arms(rows, chosen):
    rows = with_chosen_iterations(rows, chosen, 0.4)
    return rows, summarise_arms(rows, rounds=200)


def test_ab_check_needs_a_gain_whose_interval_clears_zero():
    rows, arms = _arms(_world({0: {1: 0.12}, 1: {1: 0.13}}), {0: 1, 1: 1})
    assert hl.check_ab(arms, 0.4).verdict == hl.MET
    rows, arms = _arms(_world({0: {1: 0.14}, 1: {1: 0.07}}), {0: 1, 1: 1})  # mean up, seeds split
    verdict = hl.check_ab(arms, 0.4)
    assert verdict.verdict == hl.NOT_MET and verdict.evidence["interval"][0] < 0


def test_collapse_check_flags_a_string_under_too_many_notes():
    healthy = _world({0: {1: 0.12}})
    collapsed = _world({0: {1: 0.12}}, query=lambda i: "vegetarian noodles" if i % 4 == 0 else f"q{i}")
    assert hl.check_collapse(hl.top1_figures(healthy), 0.4).verdict == hl.MET
    verdict = hl.check_collapse(hl.top1_figures(collapsed), 0.4)
    assert verdict.verdict == hl.NOT_MET
    assert verdict.evidence["points"][0]["top_string"] == "vegetarian noodles"
    assert verdict.evidence["points"][0]["top_string_share"] == pytest.approx(0.25)


def _training(proxies: dict[int, list[float]]) -> dict:
    return {seed: {"selected_iteration": 1 + int(np.argmax(p)),
                   "iterations": [{"iteration": t + 1, "probe": {"proxy": v}} for t, v in enumerate(p)]}
            for seed, p in proxies.items()}


def test_proxy_check_compares_its_ranking_and_choice_with_the_oracle():
    ctr = {0: {1: 0.11, 2: 0.12, 3: 0.13}, 1: {1: 0.10, 2: 0.14, 3: 0.12}}
    tracks = _training({0: [1.0, 1.1, 1.2], 1: [0.9, 1.3, 1.1]})   # ranks the six points as the oracle does
    rows, arms = _arms(_world(ctr), {s: m["selected_iteration"] for s, m in tracks.items()})
    points = hl.proxy_points(rows, tracks, 0.4)
    assert len(points) == 6 and points["chosen"].sum() == 2
    verdict = hl.check_proxy(points, arms, 0.4, 3)
    assert verdict.verdict == hl.MET and verdict.evidence["spearman"] == pytest.approx(1.0)
    assert verdict.evidence["within_seed_spearman_mean"] == pytest.approx(1.0)
    misled = _training({0: [1.2, 1.1, 1.0], 1: [1.3, 0.9, 1.1]})   # the opposite order
    rows, arms = _arms(_world(ctr), {s: m["selected_iteration"] for s, m in misled.items()})
    verdict = hl.check_proxy(hl.proxy_points(rows, misled, 0.4), arms, 0.4, 3)
    assert verdict.verdict == hl.NOT_MET and verdict.evidence["spearman"] < 0
    assert verdict.evidence["chosen_delta_ctr"] < verdict.evidence["last_delta_ctr"]


def test_hacking_check_counts_policy_objective_pairs():
    rows = _rows([("qsa", "qsa", np.nan, -1, -1, 0.10, str), ("dpo", "dpo", np.nan, -1, 0, 0.08, str),
                  ("morl-a0.4", "morl", 0.4, -1, 0, 0.12, str),
                  ("cmaq-a0.4-it1", "cmaq", 0.4, 1, 0, 0.11, str)])
    rows, arms = _arms(rows, {0: 1})
    verdict = hl.check_hacking(arms, 0.4)       # the CTR RM rose for all three, the oracle fell for DPO only
    assert verdict.evidence["pairs"] == 6 and [h["policy"] for h in verdict.evidence["hacked"]] == ["dpo"]
    assert verdict.verdict == hl.MET            # 1 of 6 ≤ a quarter
    rows.loc[rows["arm"] == "morl-a0.4", "true_ctr"] = 0.05
    assert hl.check_hacking(summarise_arms(rows, rounds=200), 0.4).verdict == hl.NOT_MET   # 2 of 6


def test_the_registry_freezes_the_first_settings_and_lists_every_run(tmp_path):
    registry = RunRegistry(tmp_path)
    fixed = {"world": {"items": 4000, "seed": 11}, "lcb kappa": 1.0}
    assert registry.check_fixed(fixed) == []
    assert registry.check_fixed(fixed) == []
    changed = registry.check_fixed({"world": {"items": 4000, "seed": 12}, "lcb kappa": 1.0})
    assert changed == ["world.seed: 11 → 12"]
    registry.record({"seeds": [0]}, [], {"cmaq_delta_ctr": -0.1})
    registry.record({"seeds": [0, 1, 2]}, changed, {"cmaq_delta_ctr": 0.02})
    registry.record({"seeds": [0, 1, 2]}, changed, {"cmaq_delta_ctr": 0.02})   # a resume re-evaluating its cache
    entries = RunRegistry(tmp_path).entries()
    assert [e["run"] for e in entries] == [1, 2] and entries[1]["differs_from_fixed"] == changed
    assert registry.frozen()["settings"] == fixed


def test_the_report_from_inline_rows_lists_checks_seeds_figure7_and_the_run(tmp_path):
    from training.evaluate.report import write_evaluation

    policies = [("qsa", "qsa", np.nan, -1, -1, 0.10, lambda i: f"qsa{i}"),
                ("dpo", "dpo", np.nan, -1, 0, 0.09, str), ("morl-a0.4", "morl", 0.4, -1, 0, 0.11, str)]
    for seed in (0, 1):
        policies += [(f"cmaq-a0.4-it{t}", "cmaq", 0.4, t, seed, 0.10 + 0.01 * t + 0.005 * seed, str) for t in (1, 2)]
    policies += [(f"cmaq-k4-g0.5-a{a:g}", "cmaq-k4-g0.5", a, -1, 0, 0.1, str) for a in (0.4, 0.6)]
    training = _training({0: [1.0, 1.2], 1: [1.1, 1.0]})
    result = write_evaluation(_rows(policies), tmp_path, {"world seed": 11}, 200, 0, training=training,
                              headline_alpha=0.4, iterations=2, protocol="full", registry=RunRegistry(tmp_path / "reg"),
                              settings={"seeds": [0, 1]})
    report = (tmp_path / "reproduction.md").read_text()
    assert set(result["checks"]) == {"ab", "collapse", "proxy", "hypervolume", "hacking"}
    assert "| cmaq-a0.4-proxy | 2 |" in report and "### Per seed" in report
    guards = report.split("iteration by iteration")[1].split("## The proxy's choices")[0]
    served = {tuple(line.split(" | ")[:2]): line.endswith("**yes** |") for line in guards.splitlines()
              if line.startswith(("| 0 | ", "| 1 | "))}
    assert served[("| 0", "2")] and not served[("| 0", "1")] and served[("| 1", "1")]   # the proxy's choices
    for name in ("figure7_rm.png", "figure7_oracle.png", "fronts_rm.png", "cmaq_iterations.png"):
        assert (tmp_path / "reproduction" / name).stat().st_size > 0
    assert len(RunRegistry(tmp_path / "reg").entries()) == 1 and "## Every evaluated run" in report
