"""Extract and plan: read the content, key every item by how its queries would be made, and keep only
the items the current pool version cannot carry forward.

A record's key is (content_id, content_hash, model_version, adapter_version, config_hash): the same
content served with the same model, adapter and serving settings needs no new generation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cmaq import prompts
from cmaq.artifacts import dir_hash
from cmaq.config import CmaqConfig, EngineConfig, config_hash
from cmaq.config.engines import DECODING_FIELDS
from cmaq.engines import base_model_dir
from cmaq.engines.base import adapter_version
from cmaq.engines.merged import AdapterMismatch, serving_engine
from jobs.contract import BadInput, check_rows, conform, read_content_table, rejected_rows, valid_rows
from jobs.pool_tables import item_columns, named_keys

# What the prompt and the serving filters read (the district tells a place from a shop-info fact).
CONTENT_FIELDS = ("content_id", "lang", "category", "title", "body", "shop_name", "district", "shop_info")
KEY = ("content_id", "content_hash", "model_version", "adapter_version", "config_hash")
VERSION_FIELDS = ("model_version", "adapter_version", "config_hash")


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


def resolve_serving(cfg: CmaqConfig, adapter: str | None) -> Serving:
    """How ``adapter`` (None: the bare base) is served: the model directory (the engine's override,
    else ``model.base_dir``, else the project's model), merged with the adapter when
    ``engine.adapter_mode`` merges, and the versions every record carries: the base's and the
    adapter's own hashes whichever way it is served. Raises ``BadInput`` for an adapter directory
    that is missing or was trained for another base."""
    if ":" in cfg.engine.backend:  # an engine of the user's: it names its own model
        engine, model_version, served = cfg.engine, cfg.engine.backend, adapter
    else:
        base = base_model_dir(cfg.model, cfg.engine.model_dir)
        try:
            engine, served = serving_engine(cfg.engine, base, adapter)
        except AdapterMismatch as exc:
            raise BadInput(str(exc)) from None
        model_version = dir_hash(base)
    try:
        version = adapter_version(adapter)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    return Serving(engine, served, {"model_version": model_version, "adapter_version": version,
                                    "config_hash": serving_config_hash(cfg)})


DEFAULT_ARM = ""  # the one arm of a pool without [pool.arms]: its rows carry no arm column


@dataclass(frozen=True)
class Arm:
    name: str
    serving: Serving
    weight: float = 1.0
    adapter: str | None = None  # as configured (the served one may be a merged model instead)


@dataclass(frozen=True)
class Arms:
    """What one run serves: the configured arms in order, or the one default arm."""

    arms: tuple[Arm, ...]
    salt: str = ""

    @property
    def armed(self) -> bool:
        return self.arms[0].name != DEFAULT_ARM

    @property
    def versions(self) -> dict:
        """The record versions: one dict, or arm -> dict in a pool with arms."""
        if not self.armed:
            return self.arms[0].serving.versions
        return {a.name: a.serving.versions for a in self.arms}

    def manifest(self) -> dict:
        """The manifest's ``arms``: name -> weight, adapter and versions ({} without arms)."""
        return {a.name: {"weight": a.weight, "adapter": a.adapter, **a.serving.versions}
                for a in self.arms} if self.armed else {}

    def weights(self) -> dict[str, float]:
        return {a.name: a.weight for a in self.arms}

    def frame(self, spark: SparkSession) -> DataFrame:
        """One row per arm: ``arm`` and the three record versions."""
        rows = [(a.name, *(a.serving.versions[k] for k in VERSION_FIELDS)) for a in self.arms]
        return spark.createDataFrame(rows, "arm string, model_version string, adapter_version string, "
                                           "config_hash string")


def resolve_arms(cfg: CmaqConfig) -> Arms:
    """Every arm's serving, checked before anything runs (``BadInput`` names the arm), adapters
    merged where ``engine.adapter_mode`` says so."""
    if not cfg.pool.arms:
        return Arms((Arm(DEFAULT_ARM, resolve_serving(cfg, cfg.pool.adapter or None), 1.0, cfg.pool.adapter or None),))
    arms = []
    for name, arm in cfg.pool.arms.items():
        try:
            serving = resolve_serving(cfg, arm.adapter_dir)
        except BadInput as exc:
            raise BadInput(f"arm {name}: {exc}") from None
        arms.append(Arm(name, serving, arm.weight, arm.adapter_dir))
    return Arms(tuple(arms), cfg.pool.traffic_salt)


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
    return check_content(read_content_table(spark, source))


def check_content(content: DataFrame) -> CheckedContent:
    """Any content DataFrame (a table, a stream's micro-batch) under the contract; raises ``BadInput``
    on a schema it refuses, before any data is read."""
    return CheckedContent(with_content_hash(check_rows(conform(content))).cache())


def max_updated_at_ms(content: DataFrame) -> int | None:
    """The newest ``updated_at`` read: the nearline refresh's starting watermark for this version."""
    value = content.agg(F.max(F.expr("unix_millis(updated_at)"))).first()[0]
    return None if value is None else int(value)


# --------------------------------------------------------------------------- plan


def keyed_content(content: DataFrame, arms: Arms) -> DataFrame:
    """Content rows with the full record key: what, and with what model, adapter and config; one
    row per (arm, content) in a pool with arms."""
    rows = content.select(*CONTENT_FIELDS, "content_hash")
    if not arms.armed:
        versions = arms.versions
        return rows.withColumns({k: F.lit(versions[k]) for k in VERSION_FIELDS})
    return rows.crossJoin(F.broadcast(arms.frame(content.sparkSession)))


def carried_keys(keyed: DataFrame, prev_frames: dict | None) -> DataFrame:
    """Keys (with their arm in a pool with arms) of input items whose records the current version
    made from the same content, model, adapter and config: carried forward instead of regenerated.
    Any arm's records of a key serve every arm with that key (same inputs, same beams)."""
    own = [*item_columns(keyed)[:-1], *KEY]
    if prev_frames is None:
        return keyed.select(*own).limit(0)
    return keyed.select(*own).join(named_keys(prev_frames, KEY), list(KEY), "inner")


def carried_rows(prev_frames: dict, carried: DataFrame) -> dict:
    """The previous version's rows of the carried keys, labelled with the carrying arm. Where arms
    of the previous version share a key, one of them (the first by name) is the source, so a row is
    carried once per arm that carries it."""
    if "arm" in prev_frames["pool"].columns:
        source = named_keys(prev_frames, ("arm", *KEY)).groupBy(*KEY).agg(F.min("arm").alias("_source"))
        prev_frames = {n: df.join(source, list(KEY)).filter(F.col("arm") == F.col("_source")).drop("arm", "_source")
                       for n, df in prev_frames.items()}
    return {n: df.join(carried, list(KEY)) for n, df in prev_frames.items()}


def plan_id(todo: DataFrame, n: int, versions: dict, n_partitions: int) -> str:
    """Same items to generate with the same model, adapter, config and partition count -> same
    staging directory, so a rerun after a crash finds the partitions the first run committed."""
    agg = todo.agg(F.sum(F.xxhash64("content_id", "content_hash").cast("decimal(38,0)"))).first()[0] if n else 0
    blob = json.dumps({"n": n, "sum": str(agg), "partitions": n_partitions, **versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
