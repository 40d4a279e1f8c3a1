"""Traffic split between a version's arms, for the online service.

    arm = assign_arm(user_id, {"qsa": 0.5, "cmaq": 0.5}, salt="exp-2026-12")

Weighted rendezvous hashing: every (salt, arm, unit) gets a uniform number ``u`` from SHA-256 and a
score ``-ln(u) / weight`` (an exponential variable of rate ``weight``); the unit goes to the arm
with the smallest score, so arm ``a`` gets ``weight_a / Σ weight`` of the units. Why this and not
cumulative intervals over ``hash(unit)``:

- *Deterministic and salted*: a pure function of its arguments (no process seed; Python's ``hash``
  of a string changes per process), and a new salt draws an independent split for a new experiment.
- *Monotone*: raising one arm's weight only moves units onto that arm, lowering it only moves units
  off it, and removing an arm moves only that arm's units. So 50/50 -> 60/40 moves exactly the 10%
  that must move. Cumulative intervals are monotone only for changes between neighbouring arms.

Weights need not sum to 1; an arm of weight 0 gets no units.
"""
from __future__ import annotations

import hashlib
import math
from typing import Mapping

_SCALE = float(1 << 64)


def _uniform(salt: str, arm: str, unit_id: str) -> float:
    """A number in (0, 1) from SHA-256 of the three strings (separated so ('a', 'bc') != ('ab', 'c'))."""
    digest = hashlib.sha256(f"{salt}\x1f{arm}\x1f{unit_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / _SCALE


def check_weights(weights: Mapping[str, float]) -> None:
    """Raises ``ValueError`` naming the first bad weight (negative, not finite) or an empty split."""
    if not weights:
        raise ValueError("traffic weights: no arms")
    for arm, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"traffic weight of arm {arm!r}: must be a finite number >= 0, got {w!r}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError("traffic weights: every arm has weight 0")


def assign_arm(unit_id: str, weights: Mapping[str, float], salt: str) -> str:
    """The arm that serves ``unit_id`` (a user or device id) under these weights and this salt."""
    check_weights(weights)
    unit = str(unit_id)
    best, best_score = "", math.inf
    for arm in sorted(weights):  # the order the dict was built in must not matter
        w = weights[arm]
        if w <= 0:
            continue
        score = -math.log(_uniform(salt, arm, unit)) / w
        if score < best_score:
            best, best_score = arm, score
    return best
