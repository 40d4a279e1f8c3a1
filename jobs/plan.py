"""Extract and plan: read the content, key every item by how its queries would be made, and keep only
the items the current pool version cannot carry forward.

A record's key is (content_id, content_hash, model_version, adapter_version, config_hash): the same
content served with the same model, adapter and serving settings needs no new generation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cmaq import prompts
from cmaq.artifacts import dir_hash
from cmaq.config import CmaqConfig, EngineConfig, config_hash
from cmaq.config.engines import DECODING_FIELDS
from cmaq.engines import base_model_dir
from cmaq.engines.base import adapter_version
from jobs.contract import check_rows, conform, read_content_table, rejected_rows, valid_rows
from jobs.pool_tables import named_keys

# What the prompt and the serving filters read (the district tells a place from a shop-info fact).
CONTENT_FIELDS = ("content_id", "lang", "category", "title", "body", "shop_name", "district", "shop_info")
KEY = ("content_id", "content_hash", "model_version", "adapter_version", "config_hash")


# --------------------------------------------------------------------------- settings that change output


def serving_config_hash(cfg: CmaqConfig) -> str:
    """Hash of every setting that changes the pool's rows: prompts (code version), decoding
    (engine settings except placement), filters (serving chain and each filter's settings)."""
    e = cfg.engine
    decoding = {k: getattr(e, k) for k in DECODING_FIELDS}
    blob = {"prompt": prompts.GEN_INSTRUCTION, "decoding": decoding,
            "filters": {"serving": cfg.filters.serving, **{n: asdict(getattr(cfg.filters, n))
                                                              for n in cfg.filters.serving}}}
    return config_hash(_Wrap(blob))


@dataclass
class _Wrap:
    value: dict


@dataclass(frozen=True)
class Serving:
    """How this run serves, resolved once on the driver and shipped to the executors: the engine
    settings with the model directory pinned (an executor must not build a model of its own), the
    adapter, and the versions every record's key carries."""

    engine: EngineConfig
    adapter: str | None
    versions: dict  # model_version, adapter_version, config_hash

    @property
    def model_dir(self) -> str:
        return self.engine.model_dir


def resolve_serving(cfg: CmaqConfig) -> Serving:
    """The model directory (the engine's override, else ``model.base_dir``, else the tiny model) and
    the versions; the configuration itself is left as it is."""
    adapter = cfg.pool.adapter or None
    if ":" in cfg.engine.backend:  # an engine of the user's: it names its own model
        engine, model_version = cfg.engine, cfg.engine.backend
    else:
        engine = replace(cfg.engine, model_dir=base_model_dir(cfg.model, cfg.engine.model_dir))
        model_version = dir_hash(engine.model_dir)
    return Serving(engine, adapter, {"model_version": model_version, "adapter_version": adapter_version(adapter),
                                     "config_hash": serving_config_hash(cfg)})


# --------------------------------------------------------------------------- extract


def with_content_hash(content: DataFrame) -> DataFrame:
    """content_hash: sha256 over the fields the prompt uses (a change there means regenerate)."""
    parts = [F.coalesce(F.col(c).cast("string"), F.lit("\u0000null")) for c in CONTENT_FIELDS]
    return content.withColumn("content_hash", F.substring(F.sha2(F.concat_ws("\u0001", *parts), 256), 1, 16))


@dataclass(frozen=True)
class CheckedContent:
    """The content table under the input contract (:mod:`jobs.contract`), each row with its
    content_hash, cached once (the job reads it several times)."""

    checked: DataFrame

    @property
    def rows(self) -> DataFrame:
        """One row per content_id (takedowns included)."""
        return valid_rows(self.checked)

    @property
    def rejected(self) -> DataFrame:
        """The rows the contract set aside, with ``reason`` and ``detail``."""
        return rejected_rows(self.checked)

    def unpersist(self) -> None:
        self.checked.unpersist()


def read_content(spark: SparkSession, source: str) -> CheckedContent:
    """Raises ``BadInput`` on a table the contract refuses, before any data is read."""
    return CheckedContent(with_content_hash(check_rows(conform(read_content_table(spark, source)))).cache())


def max_updated_at_ms(content: DataFrame) -> int | None:
    """The newest ``updated_at`` read: the nearline refresh's starting watermark for this version."""
    value = content.agg(F.max(F.expr("unix_millis(updated_at)"))).first()[0]
    return None if value is None else int(value)


# --------------------------------------------------------------------------- plan


def keyed_content(content: DataFrame, versions: dict) -> DataFrame:
    """Content rows with the full record key: what, and with what model, adapter and config."""
    return content.select(*CONTENT_FIELDS, "content_hash").withColumns(
        {k: F.lit(versions[k]) for k in ("model_version", "adapter_version", "config_hash")})


def carried_keys(keyed: DataFrame, prev_frames: dict | None) -> DataFrame:
    """Keys of input items whose current-version records were made from the same content, model,
    adapter and config: they are carried forward instead of regenerated."""
    if prev_frames is None:
        return keyed.select(*KEY).limit(0)
    return keyed.select(*KEY).join(named_keys(prev_frames, KEY), list(KEY), "inner")


def plan_id(todo: DataFrame, n: int, versions: dict, n_partitions: int) -> str:
    """Same items to generate with the same model, adapter, config and partition count -> same
    staging directory, so a rerun after a crash finds the partitions the first run committed."""
    agg = todo.agg(F.sum(F.xxhash64("content_id", "content_hash").cast("decimal(38,0)"))).first()[0] if n else 0
    blob = json.dumps({"n": n, "sum": str(agg), "partitions": n_partitions, **versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
