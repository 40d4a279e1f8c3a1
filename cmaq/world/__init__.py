"""A seeded synthetic local-lifestyle platform with a hidden ground truth.

``cmaq.world.generate_world`` writes content, logs and annotations; ``cmaq.world.Oracle`` scores any
query's true CTR and expansion. Attributes load lazily so that importing the package (for example
for its lexicon) never imports the oracle: serving and training code must not reach it.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Oracle": "cmaq.world.oracle",
    "OracleWeights": "cmaq.world.oracle",
    "generate_world": "cmaq.world.generate",
    "WorldSummary": "cmaq.world.generate",
    "grammar_queries": "cmaq.world.grammar",
    "make_item": "cmaq.world.content",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cmaq.world' has no attribute {name!r}")
