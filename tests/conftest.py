"""Shared fixtures. Heavy parts (Spark, engines, tiny models) are session-scoped and built once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmaq.config import WorldConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def small_world_config() -> WorldConfig:
    # Small chunks and part files so that chunking and part rotation are exercised.
    return WorldConfig(seed=7, items=600, chunk_items=128, items_per_file=256)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory, small_world_config) -> Path:
    from cmaq.world.generate import generate_world

    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(small_world_config, out)
    return out
