"""Collapse guards, the anchored reference and the lower-bound reward, on small fakes and the tiny model."""
import types

import numpy as np
import pytest
import torch

from cmaq.config import AlignConfig
from training.align import select_iteration
from training.guards import beam_summary, exposed_reward, kl_estimate, probe_notes, proxy_value
from training.preference import first_samples_key, scored_samples
from training.reward_models.scorer import Scores


def test_beam_summary_measures_collapse():
    beams = [["vegetarian noodles", "x"], ["vegetarian noodles"], ["beef tripe"], [], ["vegetarian noodles", "y"]]
    s = beam_summary(beams, np.array([True, False, True, True, False, True]))
    assert s["notes"] == 5 and s["distinct_top1_share"] == 0.4
    assert s["top_string"] == "vegetarian noodles" and s["top_string_share"] == 0.6
    assert s["beams_passing"] == pytest.approx(4 / 6, abs=1e-4)


def test_the_probe_set_is_fixed_and_ignores_the_training_seed():
    rows = [{"content_id": f"c{i}"} for i in range(50)] * 2
    a, b = probe_notes(rows, 10), probe_notes(list(reversed(rows)), 10)
    assert [r["content_id"] for r in a] == [r["content_id"] for r in b] and len({r["content_id"] for r in a}) == 10


def test_kl_estimate_is_zero_against_itself_and_positive_against_another_model(tiny_model):
    from transformers import AutoModelForCausalLM

    from training.reward_models.models import tokenizer_of

    tok = tokenizer_of(tiny_model)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    other = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    items = [{"content_id": "c1", "lang": "en", "title": "Jade Hotpot", "body": "beef tripe", "shop_name": "Jade Hotpot",
              "shop_info": ""}]
    samples = [["beef tripe dipping sauce", "opening hours"]]
    assert kl_estimate(policy, policy, tok, items, samples, 448) == 0.0
    assert kl_estimate(policy, other, tok, items, samples, 448) != 0.0
    assert kl_estimate(policy, other, tok, items, [[]], 448) is None


def test_lcb_reward_subtracts_kappa_standard_deviations(monkeypatch):
    monkeypatch.setattr("training.preference.adapter_version", lambda path: "qsa-v1")
    scores = Scores(r_exp=np.array([0.8, 0.5]), r_ctr_raw=np.zeros(2), r_ctr=np.array([0.6, 0.1]),
                    r_exp_std=np.array([0.1, 0.3]), r_ctr_std=np.array([0.2, 0.2]))
    exp, ctr = scores.lower_bounds(1.5)
    np.testing.assert_allclose(exp, [0.65, 0.05])
    np.testing.assert_allclose(ctr, [0.3, 0.0])  # clipped at 0
    single = Scores(r_exp=np.array([0.8]), r_ctr_raw=np.zeros(1), r_ctr=np.array([0.6]))
    np.testing.assert_allclose(single.lower_bounds(2.0), ([0.8], [0.6]))  # one member: the mean

    engine = types.SimpleNamespace(sample=lambda items, **kw: [types.SimpleNamespace(
        candidates=[types.SimpleNamespace(text="a"), types.SimpleNamespace(text="b")]) for _ in items])
    scorer = types.SimpleNamespace(score=lambda items, queries: scores)
    mean_cfg, lcb_cfg = AlignConfig(k=2), AlignConfig(k=2, reward="lcb", lcb_kappa=1.5)
    _, e, c = scored_samples(engine, scorer, [{"content_id": "c"}], mean_cfg, "qsa", 0)
    np.testing.assert_allclose((e, c), ([0.8, 0.5], [0.6, 0.1]))
    _, e, c = scored_samples(engine, scorer, [{"content_id": "c"}], lcb_cfg, "qsa", 0)
    np.testing.assert_allclose((e, c), ([0.65, 0.05], [0.3, 0.0]))
    # runs on lower bounds never share first-iteration samples with runs on means
    assert first_samples_key(mean_cfg) != first_samples_key(lcb_cfg)


def test_anchor_and_reward_settings_are_validated():
    for bad in ({"reference": "base"}, {"reward": "max"}, {"lcb_kappa": -1}, {"probe_contents": -1}):
        with pytest.raises(Exception, match=next(iter(bad))):
            AlignConfig(**bad)


def test_the_proxy_scores_exposed_queries_at_their_lower_bound():
    items = [{"content_id": f"c{i}"} for i in range(3)]
    beams = [["junk", "good a"], ["junk", "junk"], ["good c"]]
    passed = np.array([False, True, False, False, True])

    class Scorer:
        def score(self, its, queries):
            assert [it["content_id"] for it in its] == ["c0", "c2"] and queries == ["good a", "good c"]
            return Scores(r_exp=np.array([0.5, 0.9]), r_ctr_raw=np.zeros(2), r_ctr=np.array([0.5, 0.4]),
                          r_exp_std=np.array([0.1, 0.0]), r_ctr_std=np.array([0.1, 0.0]))

    rate, lcb = exposed_reward(Scorer(), items, beams, passed, alpha=0.5, mean="geometric", kappa=1.0)
    assert rate == pytest.approx(2 / 3)
    assert lcb == pytest.approx((0.4 + np.sqrt(0.9 * 0.4)) / 3)  # c1 shows nothing: 0
    report = {"beams_passing": 0.4, "lcb_combined": 0.5, "distinct_top1_share": 0.3}
    assert proxy_value(report) == pytest.approx(0.4 * 0.5 + 0.3)


def test_select_serves_the_last_or_the_best_proxy_iteration():
    summary = [{"probe": {"proxy": p}} for p in (0.4, 0.7, 0.7, 0.5)]
    assert select_iteration(summary, "last") == 4
    assert select_iteration(summary, "proxy") == 2  # the earliest of equals
    with pytest.raises(Exception, match="probe"):
        AlignConfig(select="proxy", probe_contents=0)
    resumed = [{"iteration": 1}, {"iteration": 2, "probe": {"proxy": 0.6}}]   # iteration 1 trained before the guards
    with pytest.raises(ValueError, match=r"iteration\(s\) \[1\] have no probe figures"):
        select_iteration(resumed, "proxy")
    assert select_iteration(resumed, "last") == 2


def test_the_cached_qsa_probe_is_recomputed_for_other_settings(tmp_path):
    from training.align import _cached_json

    calls = []
    compute = lambda: calls.append(1) or {"proxy": len(calls)}  # noqa: E731
    path = tmp_path / "probe-qsa.json"
    assert _cached_json(path, {"probe_contents": 200}, compute) == {"proxy": 1}
    assert _cached_json(path, {"probe_contents": 200}, compute) == {"proxy": 1} and len(calls) == 1
    assert _cached_json(path, {"probe_contents": 100}, compute) == {"proxy": 2}
    path.write_text('{"proxy": 9}')                      # a file written before it carried its key
    assert _cached_json(path, {"probe_contents": 100}, compute) == {"proxy": 3}
