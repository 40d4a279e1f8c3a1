"""The reward gate: the policy is rewarded only for what serving can show.

The serving filter chain (``filters.serving``: lexical quality with its machine-junk rules, harm,
commercial, relevance) judges every sampled candidate before pairs are mined. A candidate it drops is
a negative by rule: the alignment loop never chooses it and may reject it whatever τ2 is, and τ1/τ2
are quantiles over the candidates that pass. The sample-based baselines (DPO-LW, DPO-Soup, MORL)
give it r_exp = r_ctr = 0. Without the gate the loop learns strings its own filters then throw away.

A candidate dropped as a ``duplicate`` of an earlier candidate of the same content takes that
candidate's verdict: it is the same query.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cmaq.config import FiltersConfig
from filters.base import DUPLICATE
from filters.chain import FilterChain
from filters.lexical import duplicate_key
from training.distributed import runtime

GATE_MODES = ("serving", "none")


@dataclass
class GateVerdict:
    """The gate's answer for a flat list of candidates (item then candidate order)."""

    passed: np.ndarray               # bool [candidates]
    reasons: dict[str, int]          # failures by reason code

    def summary(self) -> dict:
        n, ok = len(self.passed), int(self.passed.sum())
        return {"candidates": n, "passed": ok, "failed": n - ok, "pass_rate": round(ok / n, 4) if n else None,
                "reasons": dict(sorted(self.reasons.items()))}


class RewardGate:
    """``mode = "serving"``: the serving chain of ``filters_cfg``; ``"none"``: every candidate passes."""

    def __init__(self, mode: str, filters_cfg: FiltersConfig | None = None):
        if mode not in GATE_MODES:
            raise ValueError(f"unknown reward gate {mode!r}: use one of {GATE_MODES}")
        self.mode = mode
        self.chain = FilterChain.serving(filters_cfg or FiltersConfig()) if mode == "serving" else None

    def __call__(self, items: Sequence[dict], candidates: Sequence[Sequence[str]]) -> GateVerdict:
        n = sum(len(qs) for qs in candidates)
        if self.chain is None or n == 0:
            return GateVerdict(np.ones(n, bool), {})
        table = self.chain.judge(items, candidates)
        reasons = table["reason"].to_pylist()
        # A duplicate is judged before the later filters see its first copy: it takes that copy's verdict.
        first: dict[tuple, bool] = {}
        passed = np.zeros(len(reasons), bool)
        for i, (cid, q, r) in enumerate(zip(table["content_id"].to_pylist(), table["query_clean"].to_pylist(), reasons)):
            twin = (cid, duplicate_key(q.lower()))
            passed[i] = first.get(twin, False) if r == DUPLICATE else r is None
            first.setdefault(twin, bool(passed[i]))
        counts: dict[str, int] = {}
        for r, ok in zip(reasons, passed):
            if not ok:
                counts[r] = counts.get(r, 0) + 1
        return GateVerdict(passed, counts)


def judge_sharded(gate: RewardGate, items: Sequence[dict], candidates: Sequence[Sequence[str]]) -> GateVerdict:
    """``gate(items, candidates)`` with each rank judging its share of the contents (the gate's verdicts
    are per content), put back together on every rank."""
    def judge(part):
        verdict = gate([it for it, _ in part], [qs for _, qs in part])
        out, pos = [], 0
        for _, qs in part:
            out.append(verdict.passed[pos:pos + len(qs)].tolist())
            pos += len(qs)
        # each item's share of the failure counts rides with its first candidate's slot
        return [(flags, verdict.reasons if i == 0 else {}) for i, flags in enumerate(out)]

    per_item = runtime().map_sharded(list(zip(items, candidates)), judge)
    reasons: dict[str, int] = {}
    for _, counts in per_item:
        for reason, n in counts.items():
            reasons[reason] = reasons.get(reason, 0) + n
    return GateVerdict(np.array([ok for flags, _ in per_item for ok in flags], bool), reasons)
