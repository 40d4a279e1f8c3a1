"""The reward gate: the serving chain on sampled candidates, failures as negatives by rule."""
import numpy as np
import pytest

from cmaq.config import AlignConfig, FiltersConfig
from training.align import mine_pairs, thresholds
from training.gate import RewardGate

EN = {"content_id": "e1", "lang": "en", "shop_name": "Jade Hotpot (Riverside)", "district": "Riverside",
      "title": "Jade Hotpot: the beef tripe is worth it",
      "body": "Finally tried Jade Hotpot in Riverside! The beef tripe really stood out, and the lamb slices were good.",
      "shop_info": "Jade Hotpot (Riverside) · Riverside · hours 10:00-22:00 · about $45 per person · rating 4.6"}
ZH = {"content_id": "z1", "lang": "zh", "shop_name": "海底捞火锅(白纸坊店)", "district": "白纸坊", "title": "海底捞火锅｜毛肚太绝了",
      "body": "终于来了海底捞火锅！毛肚真的很惊艳，虾滑也不错。", "shop_info": "海底捞火锅(白纸坊店) · 白纸坊 · 营业时间 10:00-22:00 · 人均120元"}


def test_the_serving_chain_judges_every_candidate_and_counts_reasons():
    gate = RewardGate("serving", FiltersConfig())
    candidates = [["beef tripe dipping sauce", "00-22:00 · $45 · 4.6", "Beef tripe dipping sauce", "go"],
                  ["毛肚蘸料怎么调", "海洋\ufffd拉面表", "海底捞团购"]]
    verdict = gate([EN, ZH], candidates)
    # the case-folded twin of a passing candidate passes: serving would show the same query
    assert verdict.passed.tolist() == [True, False, True, False, True, False, False]
    assert verdict.reasons == {"mostly_numbers": 1, "filler_word": 1, "decoding_debris": 1, "commercial": 1}
    s = verdict.summary()
    assert (s["candidates"], s["passed"], s["failed"]) == (7, 3, 4)
    assert RewardGate("none")([EN], [["go", "00:00"]]).passed.tolist() == [True, True]
    # a duplicate takes its first copy's verdict, also when a later filter drops that copy
    twins = gate([EN], [["beef tripe coupon", "Beef tripe coupon", "lamb slices", "Lamb slices"]])
    assert twins.passed.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="reward gate"):
        RewardGate("strict")
    with pytest.raises(Exception, match="reward_gate"):
        AlignConfig(reward_gate="strict")


def _fake_round(contents: int, k: int, fail_share: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = [{"content_id": f"c{i}"} for i in range(contents)]
    candidates = [[f"c{i}-q{j}" for j in range(k)] for i in range(contents)]
    rewards = rng.random(contents * k)
    passed = np.ones(contents * k, bool)
    passed[rng.permutation(contents * k)[:int(fail_share * contents * k)]] = False
    return items, candidates, rewards, passed


def test_pairs_are_still_mined_when_nine_in_ten_samples_fail_the_gate():
    items, candidates, rewards, passed = _fake_round(contents=400, k=8, fail_share=0.9)
    cfg = AlignConfig()
    tau1, tau2 = thresholds(rewards[passed], cfg)
    assert tau1 == pytest.approx(np.quantile(rewards[passed], 0.7))  # quantiles over the passing ones only
    pairs = mine_pairs(items, candidates, rewards, tau1, tau2, seed=1, passed=passed)
    flat = {q: (r, ok) for q, r, ok in zip([q for qs in candidates for q in qs], rewards, passed)}
    # every content with a passing positive has a negative (its failed candidates): each gives a pair
    with_positive = sum(any(flat[q][1] and flat[q][0] > tau1 for q in qs) for qs in candidates)
    assert len(pairs) == with_positive >= 60
    for p in pairs:
        r_c, ok_c = flat[p["chosen"]]
        r_l, ok_l = flat[p["rejected"]]
        assert ok_c and r_c > tau1                      # never a failed candidate as chosen
        assert (not ok_l) or r_l < tau2                 # a failed one is rejected whatever τ2 is
        assert p["rejected_gated"] is (not ok_l)
    assert sum(p["rejected_gated"] for p in pairs) > len(pairs) / 2
    # a failed candidate with a high reward still serves as the rejected answer
    assert any(p["rejected_gated"] and flat[p["rejected"]][0] >= tau2 for p in pairs)


def test_a_content_with_no_passing_candidate_gives_no_pair():
    items, candidates, rewards, passed = _fake_round(contents=50, k=4, fail_share=0.0)
    passed[:4] = False  # every candidate of content c0
    pairs = mine_pairs(items, candidates, rewards, 0.5, 0.5, seed=0, passed=passed)
    assert "c0" not in {p["item"]["content_id"] for p in pairs} and pairs
    with pytest.raises(RuntimeError, match="passed the serving filters"):
        thresholds(rewards[np.zeros(len(rewards), bool)], AlignConfig())


def test_without_a_verdict_mining_is_the_methods():
    items, candidates, rewards, _ = _fake_round(contents=60, k=4, fail_share=0.0)
    assert mine_pairs(items, candidates, rewards, 0.6, 0.4, seed=3) == \
        mine_pairs(items, candidates, rewards, 0.6, 0.4, seed=3, passed=np.ones(len(rewards), bool))


def test_sample_based_baselines_give_gated_candidates_zero_rewards(monkeypatch):
    import training.baselines as bl

    items = [EN]
    candidates = [["beef tripe dipping sauce", "00-22:00 · $45 · 4.6", "lamb slices"]]
    monkeypatch.setattr(bl, "first_iteration_samples",
                        lambda *a, **k: (items, candidates, np.array([0.3, 0.9, 0.5]), np.array([0.4, 0.95, 0.6])))
    prefs = bl.build_preference_set(AlignConfig(), [], None, "unused", None, FiltersConfig())
    assert [(p["r_exp"], p["r_ctr"], p["passed"]) for p in prefs] == [(0.3, 0.4, True), (0.0, 0.0, False),
                                                                       (0.5, 0.6, True)]
    pair = bl.best_vs_worst(prefs, lambda p: p["r_ctr"])[0]
    assert (pair["chosen"], pair["rejected"]) == ("lamb slices", "00-22:00 · $45 · 4.6")
    off = bl.build_preference_set(AlignConfig(reward_gate="none"), [], None, "unused", None, FiltersConfig())
    assert bl.best_vs_worst(off, lambda p: p["r_ctr"])[0]["chosen"] == "00-22:00 · $45 · 4.6"
