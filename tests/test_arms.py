"""The traffic split: weights met, the same in every process, and only the units that must move move."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from cmaq.pool.arms import assign_arm

from conftest import REPO

IDS = [f"user-{i}" for i in range(100_000)]


def _split(weights: dict, salt: str = "exp-1") -> list[str]:
    return [assign_arm(u, weights, salt) for u in IDS]


@pytest.mark.parametrize("weights", [{"qsa": 0.5, "cmaq": 0.5}, {"qsa": 0.2, "dpo": 0.3, "cmaq": 0.5},
                                     {"a": 1, "b": 1, "c": 1, "d": 7}])
def test_each_arm_gets_its_weight_within_one_percent(weights):
    shares = Counter(_split(weights))
    total = sum(weights.values())
    for arm, w in weights.items():
        assert abs(shares[arm] / len(IDS) - w / total) <= 0.01, (arm, shares[arm])


def test_the_same_split_in_another_process_and_another_dict_order():
    ids = IDS[:2000]
    weights = {"qsa": 0.3, "dpo": 0.3, "cmaq": 0.4}
    here = [assign_arm(u, weights, "s") for u in ids]
    code = ("import json, sys; from cmaq.pool.arms import assign_arm; ids = json.load(sys.stdin); "
            "print(json.dumps([assign_arm(u, {'cmaq': 0.4, 'dpo': 0.3, 'qsa': 0.3}, 's') for u in ids]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # str hashing differs from this process's
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True,
                         check=True, cwd=REPO, env=env).stdout
    assert json.loads(out) == here
    assert len(set(here)) == 3


def test_a_salt_draws_an_independent_split():
    a, b = _split({"x": 0.5, "y": 0.5}, "exp-1"), _split({"x": 0.5, "y": 0.5}, "exp-2")
    same = sum(p == q for p, q in zip(a, b)) / len(IDS)
    assert 0.48 <= same <= 0.52  # independent halves agree half the time


def test_50_50_to_60_40_moves_only_the_ten_percent_that_must_move():
    before, after = _split({"qsa": 0.5, "cmaq": 0.5}), _split({"qsa": 0.6, "cmaq": 0.4})
    moved = [(p, q) for p, q in zip(before, after) if p != q]
    assert abs(len(moved) / len(IDS) - 0.10) <= 0.01
    assert set(moved) == {("cmaq", "qsa")}  # nobody left qsa, whose weight grew


def test_one_arms_weight_change_moves_units_only_onto_or_off_that_arm():
    before = _split({"a": 0.2, "b": 0.3, "c": 0.5})
    after = _split({"a": 0.2, "b": 0.45, "c": 0.5})  # b up: its share goes from 30% to 45/115
    moved = [(p, q) for p, q in zip(before, after) if p != q]
    assert moved and all(q == "b" for _, q in moved)
    share_b = 0.45 / 1.15
    assert abs(len(moved) / len(IDS) - (share_b - 0.3)) <= 0.01


def test_removing_an_arm_moves_only_its_units():
    before, after = _split({"a": 1, "b": 1, "c": 1}), _split({"a": 1, "c": 1})
    assert all(p == q for p, q in zip(before, after) if p != "b")
    assert "b" not in after
    assert _split({"a": 1, "b": 0, "c": 1}) == after  # weight 0 is the same as no arm


@pytest.mark.parametrize("weights, message", [({}, "no arms"), ({"a": -0.1, "b": 1}, "arm 'a'"),
                                              ({"a": float("nan")}, "arm 'a'"), ({"a": 0, "b": 0}, "weight 0"),
                                              ({"a": "half"}, "arm 'a'")])
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        assign_arm("u", weights, "s")
