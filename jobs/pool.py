"""The recall-pool job: extract -> plan -> generate (chunked) -> gates -> publish.

Layout under ``pool.root``::

    current                          the published run_id (replaced atomically)
    versions/<run_id>/pool/          POOL_SCHEMA, partitioned by category
    versions/<run_id>/dropped/       DROPPED_SCHEMA (reason codes)
    versions/<run_id>/quarantine/    QUARANTINE_SCHEMA
    versions/<run_id>/manifest.json  written last
    staging/<plan_id>/chunk=NNNNN/   generated output of one chunk, then its _COMMITTED marker
    runs/<run_id>.json               every run's manifest, published or not

Exit codes: 0 published, 1 error, 3 ran but failed the gates (nothing published).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cmaq.config import CmaqConfig, config_hash
from cmaq.pool import atomic_write
from cmaq.schema import DROPPED_SCHEMA, POOL_SCHEMA, QUARANTINE_SCHEMA, SCORE_COLUMNS

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_GATES = 0, 1, 3
CONTENT_FIELDS = ("content_id", "lang", "category", "title", "body", "shop_name", "shop_info")
KEY = ("content_id", "content_hash", "model_version", "adapter_version", "config_hash")
FAULT_ENV = "CMAQ_FAULT_INJECTION"  # "generate_first_attempt": chaos test of Spark task retries


# --------------------------------------------------------------------------- settings that change output


def serving_config_hash(cfg: CmaqConfig) -> str:
    """Hash of every setting that changes the pool's rows: prompts (code version), decoding
    (engine settings except placement), filters (serving chain and each filter's settings)."""
    from cmaq import prompts

    e = cfg.engine
    decoding = {k: getattr(e, k) for k in ("max_model_len", "max_new_tokens", "beam_width", "length_penalty",
                                            "dtype")}
    blob = {"prompt": prompts.GEN_INSTRUCTION, "decoding": decoding,
            "filters": {"serving": cfg.filters.serving, **{n: asdict(getattr(cfg.filters, n))
                                                              for n in cfg.filters.serving}}}
    return config_hash(_Wrap(blob))


@dataclass
class _Wrap:
    value: dict


# --------------------------------------------------------------------------- extract


def with_content_hash(content: DataFrame) -> DataFrame:
    """content_hash: sha256 over the fields the prompt uses (a change there means regenerate)."""
    parts = [F.coalesce(F.col(c).cast("string"), F.lit("\u0000null")) for c in CONTENT_FIELDS]
    return content.withColumn("content_hash", F.substring(F.sha2(F.concat_ws("\u0001", *parts), 256), 1, 16))


def read_current(root: Path, spark: SparkSession) -> tuple[str | None, dict | None]:
    pointer = root / "current"
    if not pointer.exists():
        return None, None
    run_id = pointer.read_text().strip()
    manifest = json.loads((root / "versions" / run_id / "manifest.json").read_text())
    return run_id, manifest


def _table(spark: SparkSession, path: Path, schema: pa.Schema) -> DataFrame:
    from cmaq.arrow_spark import empty_frame

    return spark.read.parquet(str(path)) if path.exists() else empty_frame(spark, schema)


# --------------------------------------------------------------------------- generate (executors)


def _generate_batches(batches: Iterator[pa.RecordBatch], cfg: CmaqConfig, adapter: str | None, run_id: str,
                      generated_at_ms: int, model_version: str, adapter_version: str, chash: str
                      ) -> Iterator[pa.RecordBatch]:
    """One Spark partition: beam search, filter, and emit pool / dropped / quarantine rows.
    The engine and the filter chain are created once per Python worker and reused."""
    from pyspark import TaskContext

    from cmaq.engines import get_engine
    from training.data.common import _chain

    if os.environ.get(FAULT_ENV) == "generate_first_attempt":
        ctx = TaskContext.get()
        if ctx is not None and ctx.attemptNumber() == 0:
            raise RuntimeError("injected failure on the first attempt of a generation task")
    engine = get_engine(cfg.engine)
    chain = _chain(cfg.filters, "serving")
    width = cfg.engine.beam_width
    for rb in batches:
        items = _safe_rows(rb)
        if not items:
            continue
        results = engine.beam(items, width=width, adapter=adapter)
        yield _rows_of(items, results, chain, run_id, generated_at_ms, model_version, adapter_version, chash)


def _safe_rows(rb: pa.RecordBatch) -> list[dict]:
    """Rows as dicts. Text that is not valid UTF-8 (Parquet does not check) is decoded with
    replacement characters instead of failing the batch."""
    try:
        return rb.to_pylist()
    except UnicodeDecodeError:
        cols = {}
        for name, col in zip(rb.schema.names, rb.columns):
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                raw = col.view(pa.binary() if pa.types.is_string(col.type) else pa.large_binary()).to_pylist()
                cols[name] = [None if v is None else v.decode("utf-8", "replace") for v in raw]
            else:
                cols[name] = col.to_pylist()
        return [dict(zip(cols, values)) for values in zip(*cols.values())]


def _rows_of(items, results, chain, run_id, generated_at_ms, model_version, adapter_version, chash) -> pa.RecordBatch:
    cand, quarantine = [], []
    for item, res in zip(items, results):
        base = {"content_id": item["content_id"], "content_hash": item["content_hash"], "category": item.get("category")}
        if res.error is not None or not res.candidates:
            reason, detail = res.error or ("no_candidates", "the engine returned nothing")
            quarantine.append({**base, "reason": reason, "detail": detail})
            continue
        for c in res.candidates:
            cand.append({**base, **{k: item.get(k) for k in CONTENT_FIELDS}, "rank": c.rank, "query": c.text,
                         "logprob": c.logprob})
    rows = []
    if cand:
        table = chain.run(pa.Table.from_pylist(cand)).table
        for r in table.to_pylist():
            rows.append({"kind": "pool" if r["keep"] else "dropped", "content_id": r["content_id"],
                         "content_hash": r["content_hash"], "category": r["category"], "rank": r["rank"],
                         "query": r["query_clean"] if r["keep"] else r["query"], "logprob": r["logprob"],
                         "reason": r["reason"], "detail": None,
                         **{s: _finite(r.get(s)) for s in SCORE_COLUMNS}})
    for q in quarantine:
        rows.append({"kind": "quarantine", **q, "rank": None, "query": None, "logprob": None,
                     **{s: None for s in SCORE_COLUMNS}})
    for r in rows:
        r.update(model_version=model_version, adapter_version=adapter_version, config_hash=chash, run_id=run_id,
                 generated_at=generated_at_ms)
    return pa.RecordBatch.from_pylist(rows, schema=STAGING_SCHEMA)


def _finite(v):
    return None if v is None or v != v else float(v)


STAGING_SCHEMA = pa.schema([
    pa.field("kind", pa.string()), pa.field("content_id", pa.string()), pa.field("content_hash", pa.string()),
    pa.field("category", pa.string()), pa.field("rank", pa.int32()), pa.field("query", pa.string()),
    pa.field("logprob", pa.float64()), pa.field("reason", pa.string()), pa.field("detail", pa.string()),
    *[pa.field(s, pa.float64()) for s in SCORE_COLUMNS],
    pa.field("model_version", pa.string()), pa.field("adapter_version", pa.string()),
    pa.field("config_hash", pa.string()), pa.field("run_id", pa.string()), pa.field("generated_at", pa.int64()),
])


# --------------------------------------------------------------------------- the run


@dataclass
class RunReport:
    run_id: str
    status: str = "running"
    exit_code: int = EXIT_ERROR
    inputs: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    chunks: dict = field(default_factory=dict)
    spark_app_id: str = ""
    previous_version: str | None = None
    published_version: str | None = None
    kv: dict = field(default_factory=dict)
    error: str | None = None


class Timer:
    def __init__(self, report: RunReport):
        self.report = report

    def __call__(self, name: str):
        report = self.report

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                report.timings[name] = round(time.perf_counter() - self.t0, 2)

        return _T()


def build_pool(spark: SparkSession, cfg: CmaqConfig, content_source: str) -> RunReport:
    """Run the whole job; never raises for gate failures (see the report's exit_code)."""
    from training.data.common import read_table

    root = Path(cfg.pool.root)
    root.mkdir(parents=True, exist_ok=True)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    report = RunReport(run_id=run_id, spark_app_id=spark.sparkContext.applicationId,
                       inputs={"content": content_source, "pool_root": str(root)})
    timer = Timer(report)
    try:
        kv_url = cfg.pool.kv()
        if kv_url:
            from cmaq.pool.kv import Lease, open_sink

            with Lease(open_sink(kv_url, cfg.pool.kv_prefix), f"nightly {run_id}", cfg.pool.lease_ttl_s):
                _run(spark, cfg, content_source, root, report, timer, read_table)
        else:
            _run(spark, cfg, content_source, root, report, timer, read_table)
    except Exception as exc:  # noqa: BLE001 - recorded in the run manifest, exit code 1
        log.exception("pool job failed")
        report.status, report.exit_code, report.error = "error", EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        (root / "runs").mkdir(exist_ok=True)
        atomic_write(root / "runs" / f"{run_id}.json", json.dumps(asdict(report), indent=2, default=str))
    return report


def _run(spark, cfg, content_source, root, report, timer, read_table) -> None:
    from cmaq.engines import resolve_model_dir
    from cmaq.engines.base import adapter_version as adapter_hash
    from cmaq.engines.tiny import dir_hash

    adapter = cfg.pool.adapter or None
    with timer("resolve_versions"):
        if ":" in cfg.engine.backend:
            model_version = cfg.engine.backend
        else:
            model_dir = resolve_model_dir(cfg.engine)
            cfg.engine.model_dir = model_dir  # executors must not build a model of their own
            model_version = dir_hash(model_dir)
        aversion = adapter_hash(adapter)
        chash = serving_config_hash(cfg)
    report.versions = {"model_version": model_version, "adapter_version": aversion, "config_hash": chash}

    with timer("read"):
        content = with_content_hash(read_table(spark, content_source)).cache()
        n_read = content.count()
    report.counts["read"] = n_read
    prev_id, prev_manifest = read_current(root, spark)
    report.previous_version = prev_id

    with timer("plan"):
        keyed = content.select(*CONTENT_FIELDS, "content_hash").withColumns({
            "model_version": F.lit(model_version), "adapter_version": F.lit(aversion), "config_hash": F.lit(chash)})
        carried_keys = _carried_keys(spark, root, prev_id, keyed)
        todo = keyed.join(carried_keys, list(KEY), "left_anti").cache()
        n_todo = todo.count()
    report.counts["carried_forward"] = n_read - n_todo
    report.counts["to_generate"] = n_todo

    plan_id = _plan_id(todo, n_todo, report.versions)
    staging = root / "staging" / plan_id
    n_chunks = max(1, math.ceil(n_todo / cfg.pool.chunk_items)) if n_todo else 0
    todo = todo.withColumn("_chunk", F.pmod(F.xxhash64("content_id"), F.lit(max(n_chunks, 1))))
    generated_at_ms = int(time.time() * 1000)
    skipped = generated = 0
    with timer("generate"):
        for k in range(n_chunks):
            chunk_dir = staging / f"chunk={k:05d}"
            marker = chunk_dir / "_COMMITTED"
            if marker.exists():
                skipped += json.loads(marker.read_text())["items"]
                log.info("chunk %d/%d already committed, skipped", k + 1, n_chunks)
                continue
            t0 = time.perf_counter()
            part = todo.filter(F.col("_chunk") == k).drop("_chunk")
            items = part.count()
            out = part.repartition(cfg.pool.partitions_per_chunk).mapInArrow(
                lambda it, _cfg=cfg: _generate_batches(it, _cfg, adapter, report.run_id, generated_at_ms,
                                                       model_version, aversion, chash),
                STAGING_SCHEMA_SPARK())
            if chunk_dir.exists():
                shutil.rmtree(chunk_dir)  # a half-written chunk from a crash
            out.write.parquet(str(chunk_dir / "data"))
            atomic_write(marker, json.dumps({"items": items, "run_id": report.run_id}))
            generated += items
            dt = time.perf_counter() - t0
            log.info("chunk %d/%d: %d items in %.1f s (%.1f items/s)", k + 1, n_chunks, items, dt, items / max(dt, 1e-9))
    report.counts["generated"] = generated
    report.counts["skipped_committed"] = skipped
    report.chunks = {"plan_id": plan_id, "chunks": n_chunks}

    with timer("assemble"):
        version_dir = root / "versions" / report.run_id
        chunk_paths = sorted(str(p) for p in staging.glob("chunk=*/data"))
        staged = spark.read.parquet(*chunk_paths) if chunk_paths else None
        new = _assemble(spark, staged, root, prev_id, carried_keys)
        tmp = root / "versions" / f".{report.run_id}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        new["pool"].write.partitionBy("category").parquet(str(tmp / "pool"))
        new["dropped"].write.parquet(str(tmp / "dropped"))
        new["quarantine"].write.parquet(str(tmp / "quarantine"))
    with timer("gates"):
        written = {n: spark.read.parquet(str(tmp / n)) for n in ("pool", "dropped", "quarantine")}
        report.counts.update(_counts(written))
        report.gates = _gates(written, content, report.counts, cfg, prev_manifest)
    if not all(g["ok"] for g in report.gates.values()):
        report.status, report.exit_code = "gates_failed", EXIT_GATES
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if cfg.pool.kv():
        with timer("kv_load"):
            report.kv = load_kv(spark, cfg, tmp / "pool", report.run_id)
    t0 = time.perf_counter()
    tmp.rename(version_dir)
    report.status, report.exit_code, report.published_version = "published", EXIT_OK, report.run_id
    report.timings["publish"] = round(time.perf_counter() - t0, 2)
    # The manifest is the version's last file; the pointer moves only after it is in place.
    atomic_write(version_dir / "manifest.json", json.dumps(asdict(report), indent=2, default=str))
    atomic_write(root / "current", report.run_id + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    _prune(root, cfg.pool.keep_versions)


def load_kv(spark, cfg: CmaqConfig, pool_dir: Path, version: str) -> dict:
    """Load every served item of a version into the cache, verify, then move the cache's pointer.
    Items stream through the driver (bounded memory); the sink pipelines the writes."""
    from cmaq.pool.kv import encode_value, load_version, open_sink

    pool = spark.read.parquet(str(pool_dir))
    per_item = (pool.groupBy("content_id")
                .agg(F.sort_array(F.collect_list(F.struct("rank", "query", "logprob", "score_relevance"))).alias("q")))
    expected = per_item.count()

    def values():
        for row in per_item.toLocalIterator():
            queries = [{"rank": r["rank"], "query": r["query"], "logprob": r["logprob"],
                        "relevance": r["score_relevance"]} for r in row["q"]]
            yield row["content_id"], encode_value(row["content_id"], version, queries)

    sample = [v for _, v in zip(range(20), values())]
    sink = open_sink(cfg.pool.kv(), cfg.pool.kv_prefix)
    return load_version(sink, version, values(), expected, sample, keep=cfg.pool.kv_keep)


def STAGING_SCHEMA_SPARK():
    from cmaq.arrow_spark import spark_schema

    return spark_schema(STAGING_SCHEMA)


def _carried_keys(spark, root: Path, prev_id: str | None, keyed: DataFrame) -> DataFrame:
    """Keys of input items whose current-version records were made from the same content, model,
    adapter and config: they are carried forward instead of regenerated."""
    if prev_id is None:
        return keyed.select(*KEY).limit(0)
    vdir = root / "versions" / prev_id
    seen = None
    for name, schema in (("pool", POOL_SCHEMA), ("dropped", DROPPED_SCHEMA), ("quarantine", QUARANTINE_SCHEMA)):
        t = _table(spark, vdir / name, schema).select(*KEY).distinct()
        seen = t if seen is None else seen.unionByName(t)
    return keyed.select(*KEY).join(seen.distinct(), list(KEY), "inner")


def _plan_id(todo: DataFrame, n: int, versions: dict) -> str:
    """Same items to generate with the same model, adapter and config -> same staging directory,
    so a rerun after a crash finds the chunks the first run committed."""
    import hashlib

    agg = todo.agg(F.sum(F.xxhash64("content_id", "content_hash").cast("decimal(38,0)"))).first()[0] if n else 0
    blob = json.dumps({"n": n, "sum": str(agg), **versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _assemble(spark, staged: DataFrame | None, root: Path, prev_id: str | None, carried_keys: DataFrame) -> dict:
    from cmaq.arrow_spark import empty_frame

    out = {}
    for name, schema in (("pool", POOL_SCHEMA), ("dropped", DROPPED_SCHEMA), ("quarantine", QUARANTINE_SCHEMA)):
        cols = schema.names
        parts = []
        if staged is not None:
            parts.append(staged.filter(F.col("kind") == name)
                         .withColumn("generated_at", (F.col("generated_at") / 1000).cast("timestamp")).select(*cols))
        if prev_id is not None:
            prev = _table(spark, root / "versions" / prev_id / name, schema)
            parts.append(prev.join(carried_keys, list(KEY), "left_semi").select(*cols))
        df = parts[0] if parts else empty_frame(spark, schema)
        for p in parts[1:]:
            df = df.unionByName(p)
        out[name] = df
    return out


def _counts(written: dict) -> dict:
    pool, dropped, quarantine = written["pool"], written["dropped"], written["quarantine"]
    counts = {"pool_rows": pool.count(), "pool_items": pool.select("content_id").distinct().count(),
              "dropped_rows": dropped.count(), "quarantined": quarantine.count()}
    counts["dropped_by_reason"] = {r[0]: int(r[1]) for r in dropped.groupBy("reason").count().collect()}
    counts["quarantined_by_reason"] = {r[0]: int(r[1]) for r in quarantine.groupBy("reason").count().collect()}
    return counts


def _gates(written: dict, content: DataFrame, counts: dict, cfg: CmaqConfig, prev_manifest: dict | None) -> dict:
    pool, dropped, quarantine = written["pool"], written["dropped"], written["quarantine"]
    dupes = pool.groupBy("content_id", "query").count().filter("count > 1").count()
    ids = content.select("content_id").distinct()
    accounted = (pool.select("content_id").union(dropped.select("content_id"))
                 .union(quarantine.select("content_id")).distinct())
    missing = ids.join(accounted, "content_id", "left_anti").count()
    extra = accounted.join(ids, "content_id", "left_anti").count()
    n = max(counts.get("read", 0), 1)
    q_rate = counts["quarantined"] / n
    gates = {
        "no_duplicate_queries": {"ok": dupes == 0, "duplicates": dupes},
        "every_item_accounted_for": {"ok": missing == 0 and extra == 0, "missing": missing, "unexpected": extra},
        "quarantine_rate": {"ok": q_rate <= cfg.pool.max_quarantine_rate, "rate": round(q_rate, 4),
                            "max": cfg.pool.max_quarantine_rate},
    }
    if prev_manifest:
        before = prev_manifest["counts"].get("pool_rows", 0)
        change = abs(counts["pool_rows"] - before) / max(before, 1)
        gates["volume_change"] = {"ok": change <= cfg.pool.max_volume_change, "change": round(change, 4),
                                  "previous_rows": before, "max": cfg.pool.max_volume_change}
    else:
        gates["volume_change"] = {"ok": True, "note": "first version"}
    return gates


def _prune(root: Path, keep: int) -> None:
    versions = sorted((p for p in (root / "versions").iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.name)
    current = (root / "current").read_text().strip()
    for old in versions[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
