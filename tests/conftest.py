"""Shared fixtures. Heavy parts (Spark, engines, tiny models) are session-scoped and built once."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cmaq.config import WorldConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pool_version(root: Path) -> tuple[Path, dict]:
    """The current version's directory and manifest under a pool root."""
    run_id = (root / "current").read_text().strip()
    vdir = root / "versions" / run_id
    return vdir, json.loads((vdir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def importable_doubles():
    """Spark's Python workers import the engine doubles by name: the repository on their path.
    (Use with ``pytestmark = pytest.mark.usefixtures("importable_doubles")``.)"""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + old if old else "")
    yield
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def content_slice(small_world: Path, out: Path, n: int) -> Path:
    """The small world's first ``n`` notes as one Parquet file ``out/content.parquet``."""
    import pyarrow.parquet as pq

    path = out / "content.parquet"
    pq.write_table(pq.read_table(small_world / "content").slice(0, n), path)
    return path


def command_json(output: str) -> dict:
    """A command's JSON document out of CliRunner output (Spark and pandas may print warnings around it)."""
    import json

    return json.JSONDecoder().raw_decode(output[output.index("{"):])[0]


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


# --------------------------------------------------------------------------- engines
# One tiny model, one test adapter and one engine of each kind per test run.

ENGINE_OVERRIDES = ["engine.length_penalty=0"]  # pure summed log-probability: same meaning in both engines


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from cmaq.engines.tiny import build_tiny_model

    return str(build_tiny_model())


@pytest.fixture(scope="session")
def test_adapter(tiny_model) -> str:
    from cmaq.engines.tiny import build_test_adapter

    return str(build_test_adapter())


@pytest.fixture(scope="session")
def engine_config(tiny_model):
    from cmaq.config import load_config

    import dataclasses

    # An engine built from its own section: the model directory is the engine's override of model.base_dir.
    return dataclasses.replace(load_config(None, ENGINE_OVERRIDES).engine, model_dir=tiny_model)


@pytest.fixture(scope="session")
def hf_engine(engine_config):
    import dataclasses

    from cmaq.engines import get_engine

    return get_engine(dataclasses.replace(engine_config, backend="hf"))


@pytest.fixture(scope="session")
def vllm_engine(engine_config):
    from cmaq.engines import get_engine

    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    engine = get_engine(engine_config)
    yield engine
    engine.close()


# --------------------------------------------------------------------------- Spark
# One local SparkSession for the whole run.


@pytest.fixture(scope="session")
def spark():
    from jobs.spark import get_spark

    session = get_spark("cmaq-tests", master="local[2]", shuffle_partitions=4)
    yield session
    session.stop()


# --------------------------------------------------------------------------- Redis
# A real redis-server on a loopback port of our own (never the system's 6379).


@pytest.fixture(scope="session")
def redis_url():
    import shutil

    from local_redis import local_redis

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: .ci/run installs it (apt-get install redis-server)")
    with local_redis(password="test-secret") as url:
        yield url


# --------------------------------------------------------------------------- reward models
# Trained once per test run on the test world; the reward-model and alignment tests share them.


@pytest.fixture(scope="session")
def rm_data(spark, small_world, tmp_path_factory):
    from cmaq.config import load_config
    from jobs.data.builders import run

    out = tmp_path_factory.mktemp("rm-data")
    cfg = load_config(None, [])
    for kind in ("expansion", "ctr-pairs", "sft"):
        run(kind, cfg, str(small_world), str(out), spark)
    return out


@pytest.fixture(scope="session")
def trained_rms(rm_data, small_world, tmp_path_factory):
    from cmaq.config import RewardModelConfig
    from training.reward_models.train import train_ctr, train_expansion

    out = tmp_path_factory.mktemp("rms")
    # At most 6 epochs, stopping once the validation loss rises (the best epoch's weights are kept).
    exp = train_expansion(RewardModelConfig(out=str(out / "exp"), epochs=6, patience=1, checkpoint_every=40),
                          str(rm_data / "expansion"), str(small_world))
    ctr = train_ctr(RewardModelConfig(out=str(out / "ctr"), epochs=1, checkpoint_every=40),
                    str(rm_data / "ctr_pairs"), str(small_world))
    return out, exp, ctr
