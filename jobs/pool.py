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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cmaq.config import CmaqConfig, config_hash
from cmaq.pool import atomic_write, new_op_id, write_record
from cmaq.pool.versions import (TABLES, current_version, kv_items, named_keys, read_manifest, read_pool_table,
                                unaccounted, version_frames, write_tables)
from cmaq.schema import POOL_SCHEMA, SCORE_COLUMNS

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


def read_content(spark: SparkSession, source: str) -> DataFrame:
    """The content table with its content_hash, cached (the job reads it several times)."""
    from training.data.common import read_table

    return with_content_hash(read_table(spark, source)).cache()


def max_updated_at_ms(content: DataFrame) -> int | None:
    """The newest ``updated_at`` read: the nearline refresh's starting watermark for this version."""
    value = content.agg(F.max(F.expr("unix_millis(updated_at)"))).first()[0]
    return None if value is None else int(value)


def keyed_content(content: DataFrame, versions: dict) -> DataFrame:
    """Content rows with the full record key: what, and with what model, adapter and config."""
    return content.select(*CONTENT_FIELDS, "content_hash").withColumns(
        {k: F.lit(versions[k]) for k in ("model_version", "adapter_version", "config_hash")})


# --------------------------------------------------------------------------- generate (executors)


def _generate_batches(batches: Iterator[pa.RecordBatch], cfg: CmaqConfig, adapter: str | None, run_id: str,
                      generated_at_ms: int, model_version: str, adapter_version: str, chash: str
                      ) -> Iterator[pa.RecordBatch]:
    """One Spark partition: beam search, filter, and emit pool / dropped / quarantine rows.
    The engine and the filter chain are created once per Python worker and reused."""
    from pyspark import TaskContext

    from cmaq.engines import get_engine
    from filters.chain import shared_chain

    if os.environ.get(FAULT_ENV) == "generate_first_attempt":
        ctx = TaskContext.get()
        if ctx is not None and ctx.attemptNumber() == 0:
            raise RuntimeError("injected failure on the first attempt of a generation task")
    engine = get_engine(cfg.engine)
    chain = shared_chain(cfg.filters, "serving")
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
    from cmaq.pool.kv import writer_lease

    root = Path(cfg.pool.root)
    root.mkdir(parents=True, exist_ok=True)
    report = RunReport(run_id=new_op_id(), spark_app_id=spark.sparkContext.applicationId,
                       inputs={"content": content_source, "pool_root": str(root)})
    try:
        with writer_lease(cfg.pool, f"nightly {report.run_id}"):
            _run(spark, cfg, content_source, root, report, Timer(report))
    except Exception as exc:  # noqa: BLE001 - recorded in the run manifest, exit code 1
        log.exception("pool job failed")
        report.status, report.exit_code, report.error = "error", EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        write_record(root, report.run_id, asdict(report))
    return report


def _run(spark, cfg, content_source, root, report, timer) -> None:
    with timer("resolve_versions"):
        report.versions = resolve_versions(cfg)
    with timer("read"):
        content = read_content(spark, content_source)
        report.counts["read"] = content.count()
        report.inputs["max_updated_at_ms"] = max_updated_at_ms(content)
    prev_id = current_version(root)
    report.previous_version = prev_id
    prev_frames = version_frames(spark, root / "versions" / prev_id) if prev_id else None

    with timer("plan"):
        keyed = keyed_content(content, report.versions)
        carried = _carried_keys(keyed, prev_frames)
        todo = keyed.join(carried, list(KEY), "left_anti").cache()
        n_todo = todo.count()
    report.counts["carried_forward"] = report.counts["read"] - n_todo
    report.counts["to_generate"] = n_todo

    with timer("generate"):
        staged, stats = generate_chunks(todo, n_todo, cfg, root / "staging", report.run_id, report.versions)
    report.counts["generated"], report.counts["skipped_committed"] = stats.pop("generated"), stats.pop("skipped")
    report.chunks = stats

    with timer("assemble"):
        tmp = root / "versions" / f".{report.run_id}.tmp"
        write_tables(_assemble(spark, staged, prev_frames, carried), tmp)
    with timer("gates"):
        written = {n: read_pool_table(spark, tmp / n, schema) for n, schema in TABLES}
        report.counts.update(_counts(written))
        report.gates = _gates(written, content, report.counts, cfg,
                              read_manifest(root, prev_id) if prev_id else None)
    if not all(g["ok"] for g in report.gates.values()):
        report.status, report.exit_code = "gates_failed", EXIT_GATES
        shutil.rmtree(tmp, ignore_errors=True)
        return
    _publish(spark, cfg, root, tmp, report, timer)
    shutil.rmtree(root / "staging" / stats["plan_id"], ignore_errors=True)
    _prune(root, cfg.pool.keep_versions)
    todo.unpersist()
    content.unpersist()


def resolve_versions(cfg: CmaqConfig) -> dict:
    """model_version, adapter_version and config_hash: the part of every record's key that says how
    it was made. Resolving the model here also pins its directory for the executors."""
    from cmaq.engines import resolve_model_dir
    from cmaq.engines.base import adapter_version
    from cmaq.engines.tiny import dir_hash

    if ":" in cfg.engine.backend:
        model_version = cfg.engine.backend
    else:
        cfg.engine.model_dir = resolve_model_dir(cfg.engine)  # executors must not build a model of their own
        model_version = dir_hash(cfg.engine.model_dir)
    return {"model_version": model_version, "adapter_version": adapter_version(cfg.pool.adapter or None),
            "config_hash": serving_config_hash(cfg)}


def generate_chunks(todo: DataFrame, n_todo: int, cfg: CmaqConfig, staging_root: Path, run_id: str,
                    versions: dict) -> tuple[DataFrame | None, dict]:
    """Generate ``todo`` chunk by chunk into ``staging_root/<plan_id>``; a chunk whose _COMMITTED
    marker exists (a crashed earlier attempt of the same plan) is not generated again. Returns the
    staged rows (None when there was nothing to do) and the chunk statistics."""
    adapter = cfg.pool.adapter or None
    plan_id = _plan_id(todo, n_todo, versions)
    staging = staging_root / plan_id
    n_chunks = max(1, math.ceil(n_todo / cfg.pool.chunk_items)) if n_todo else 0
    todo = todo.withColumn("_chunk", F.pmod(F.xxhash64("content_id"), F.lit(max(n_chunks, 1))))
    generated_at_ms = int(time.time() * 1000)
    mv, av, ch = versions["model_version"], versions["adapter_version"], versions["config_hash"]
    skipped = generated = 0
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
            lambda it, _cfg=cfg: _generate_batches(it, _cfg, adapter, run_id, generated_at_ms, mv, av, ch),
            STAGING_SCHEMA_SPARK())
        if chunk_dir.exists():
            shutil.rmtree(chunk_dir)  # a half-written chunk from a crash
        out.write.parquet(str(chunk_dir / "data"))
        atomic_write(marker, json.dumps({"items": items, "run_id": run_id}))
        generated += items
        dt = time.perf_counter() - t0
        log.info("chunk %d/%d: %d items in %.1f s (%.1f items/s)", k + 1, n_chunks, items, dt, items / max(dt, 1e-9))
    paths = sorted(str(p) for p in staging.glob("chunk=*/data"))
    staged = todo.sparkSession.read.parquet(*paths) if paths else None
    return staged, {"plan_id": plan_id, "chunks": n_chunks, "generated": generated, "skipped": skipped}


def _publish(spark, cfg: CmaqConfig, root: Path, tmp: Path, report: RunReport, timer) -> None:
    """Load the cache (its pointer moves when the load verifies), then the version directory and
    its manifest, then the Parquet pointer."""
    if cfg.pool.kv():
        with timer("kv_load"):
            report.kv = load_kv(spark, cfg, tmp / "pool", report.run_id)
    t0 = time.perf_counter()
    version_dir = root / "versions" / report.run_id
    tmp.rename(version_dir)
    report.status, report.exit_code, report.published_version = "published", EXIT_OK, report.run_id
    report.timings["publish"] = round(time.perf_counter() - t0, 2)
    # The manifest is the version's last file; the pointer moves only after it is in place.
    atomic_write(version_dir / "manifest.json", json.dumps(asdict(report), indent=2, default=str))
    atomic_write(root / "current", report.run_id + "\n")


def load_kv(spark, cfg: CmaqConfig, pool_dir: Path, version: str) -> dict:
    """Load every served item of a version into the cache, verify, then move the cache's pointer."""
    from cmaq.pool.kv import load_version, open_sink

    pool = read_pool_table(spark, pool_dir, POOL_SCHEMA)
    expected = pool.select("content_id").distinct().count()
    sample = [v for _, v in zip(range(20), kv_items(pool, version))]
    sink = open_sink(cfg.pool.kv(), cfg.pool.kv_prefix)
    return load_version(sink, version, kv_items(pool, version), expected, sample, keep=cfg.pool.kv_keep,
                        grace_s=cfg.pool.kv_grace_s)


def STAGING_SCHEMA_SPARK():
    from cmaq.arrow_spark import spark_schema

    return spark_schema(STAGING_SCHEMA)


def _carried_keys(keyed: DataFrame, prev_frames: dict | None) -> DataFrame:
    """Keys of input items whose current-version records were made from the same content, model,
    adapter and config: they are carried forward instead of regenerated."""
    if prev_frames is None:
        return keyed.select(*KEY).limit(0)
    return keyed.select(*KEY).join(named_keys(prev_frames, KEY), list(KEY), "inner")


def _plan_id(todo: DataFrame, n: int, versions: dict) -> str:
    """Same items to generate with the same model, adapter and config -> same staging directory,
    so a rerun after a crash finds the chunks the first run committed."""
    import hashlib

    agg = todo.agg(F.sum(F.xxhash64("content_id", "content_hash").cast("decimal(38,0)"))).first()[0] if n else 0
    blob = json.dumps({"n": n, "sum": str(agg), **versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def staged_frames(spark, staged: DataFrame | None) -> dict:
    """The staged rows split into the pool / dropped / quarantine tables."""
    from cmaq.arrow_spark import empty_frame

    if staged is None:
        return {name: empty_frame(spark, schema) for name, schema in TABLES}
    return {name: staged.filter(F.col("kind") == name)
            .withColumn("generated_at", (F.col("generated_at") / 1000).cast("timestamp")).select(*schema.names)
            for name, schema in TABLES}


def _assemble(spark, staged: DataFrame | None, prev_frames: dict | None, carried_keys: DataFrame) -> dict:
    """New rows plus the previous version's rows of carried-forward items."""
    out = staged_frames(spark, staged)
    if prev_frames is not None:
        out = {name: df.unionByName(prev_frames[name].join(carried_keys, list(KEY), "left_semi"))
               for name, df in out.items()}
    return out


def _counts(written: dict) -> dict:
    pool, dropped, quarantine = written["pool"], written["dropped"], written["quarantine"]
    counts = {"pool_rows": pool.count(), "pool_items": pool.select("content_id").distinct().count(),
              "dropped_rows": dropped.count(), "quarantined": quarantine.count()}
    counts["dropped_by_reason"] = {r[0]: int(r[1]) for r in dropped.groupBy("reason").count().collect()}
    counts["quarantined_by_reason"] = {r[0]: int(r[1]) for r in quarantine.groupBy("reason").count().collect()}
    return counts


def _gates(written: dict, content: DataFrame, counts: dict, cfg: CmaqConfig, prev_manifest: dict | None) -> dict:
    dupes = written["pool"].groupBy("content_id", "query").count().filter("count > 1").count()
    missing, extra = unaccounted(written, content)
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
