"""Generate (the executors' side): each Spark partition renders its items' prompts, beam-searches them
with the process's one engine, runs the serving filters, and emits pool / dropped / quarantine rows.

    items (CONTENT_FIELDS + key) ─► engine.beam (prompt per item: ``cmaq.prompts.generation_prompt``)
        ─► candidates ─► FilterChain("serving") ─► STAGING_SCHEMA rows, one or more per item

The driver side (:func:`generate_chunks`) runs the todo list chunk by chunk into staging, each chunk
committed on its own, so a crashed run redoes at most one chunk.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cmaq.config import FiltersConfig
from cmaq.engines import get_engine
from cmaq.pool import atomic_write
from cmaq.pool.versions import TABLES
from cmaq.schema import SCORE_COLUMNS
from filters.chain import shared_chain
from jobs.arrow_spark import empty_frame, spark_schema
from jobs.plan import CONTENT_FIELDS, Serving, plan_id

log = logging.getLogger(__name__)
FAULT_ENV = "CMAQ_FAULT_INJECTION"  # "generate_first_attempt": chaos test of Spark task retries

STAGING_SCHEMA = pa.schema([
    pa.field("kind", pa.string()), pa.field("content_id", pa.string()), pa.field("content_hash", pa.string()),
    pa.field("category", pa.string()), pa.field("rank", pa.int32()), pa.field("query", pa.string()),
    pa.field("logprob", pa.float64()), pa.field("reason", pa.string()), pa.field("detail", pa.string()),
    *[pa.field(s, pa.float64()) for s in SCORE_COLUMNS],
    pa.field("model_version", pa.string()), pa.field("adapter_version", pa.string()),
    pa.field("config_hash", pa.string()), pa.field("run_id", pa.string()), pa.field("generated_at", pa.int64()),
])


# --------------------------------------------------------------------------- one partition (executors)


def generate_batches(batches: Iterator[pa.RecordBatch], serving: Serving, filters_cfg: FiltersConfig, run_id: str,
                     generated_at_ms: int) -> Iterator[pa.RecordBatch]:
    """One Spark partition: beam search, filter, and emit staging rows. The engine and the filter chain
    are created once per Python worker and reused by every partition it runs."""
    if os.environ.get(FAULT_ENV) == "generate_first_attempt":
        ctx = TaskContext.get()
        if ctx is not None and ctx.attemptNumber() == 0:
            raise RuntimeError("injected failure on the first attempt of a generation task")
    engine = get_engine(serving.engine)
    chain = shared_chain(filters_cfg, "serving")
    for rb in batches:
        items = safe_rows(rb)
        if not items:
            continue
        results = engine.beam(items, width=serving.engine.beam_width, adapter=serving.adapter)
        yield staging_rows(items, results, chain, serving.versions, run_id, generated_at_ms)


def safe_rows(rb: pa.RecordBatch) -> list[dict]:
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


def staging_rows(items: list[dict], results, chain, versions: dict, run_id: str,
                 generated_at_ms: int) -> pa.RecordBatch:
    """Every candidate of every item through the filter chain: served (``pool``) or ``dropped`` with
    its reason; an item the engine could not serve becomes one ``quarantine`` row."""
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
        r.update(model_version=versions["model_version"], adapter_version=versions["adapter_version"],
                 config_hash=versions["config_hash"], run_id=run_id, generated_at=generated_at_ms)
    return pa.RecordBatch.from_pylist(rows, schema=STAGING_SCHEMA)


def _finite(v):
    return None if v is None or v != v else float(v)


# --------------------------------------------------------------------------- chunks (driver)


def generate_chunks(todo: DataFrame, n_todo: int, serving: Serving, filters_cfg: FiltersConfig, chunk_items: int,
                    partitions_per_chunk: int, staging_root: Path, run_id: str) -> tuple[DataFrame | None, dict]:
    """Generate ``todo`` chunk by chunk into ``staging_root/<plan_id>``; a chunk whose _COMMITTED
    marker exists (a crashed earlier attempt of the same plan) is not generated again. Returns the
    staged rows (None when there was nothing to do) and the chunk statistics."""
    pid = plan_id(todo, n_todo, serving.versions)
    staging = staging_root / pid
    n_chunks = max(1, math.ceil(n_todo / chunk_items)) if n_todo else 0
    todo = todo.withColumn("_chunk", F.pmod(F.xxhash64("content_id"), F.lit(max(n_chunks, 1))))
    generated_at_ms = int(time.time() * 1000)
    out_schema = spark_schema(STAGING_SCHEMA)
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
        # The closure carries settings only; each executor builds (once) the engine they name.
        out = part.repartition(partitions_per_chunk).mapInArrow(
            lambda it: generate_batches(it, serving, filters_cfg, run_id, generated_at_ms), out_schema)
        if chunk_dir.exists():
            shutil.rmtree(chunk_dir)  # a half-written chunk from a crash
        out.write.parquet(str(chunk_dir / "data"))
        atomic_write(marker, json.dumps({"items": items, "run_id": run_id}))
        generated += items
        dt = time.perf_counter() - t0
        log.info("chunk %d/%d: %d items in %.1f s (%.1f items/s)", k + 1, n_chunks, items, dt, items / max(dt, 1e-9))
    paths = sorted(str(p) for p in staging.glob("chunk=*/data"))
    staged = todo.sparkSession.read.parquet(*paths) if paths else None
    return staged, {"plan_id": pid, "chunks": n_chunks, "generated": generated, "skipped": skipped}


def staged_frames(spark: SparkSession, staged: DataFrame | None) -> dict:
    """The staged rows split into the pool / dropped / quarantine tables."""
    if staged is None:
        return {name: empty_frame(spark, schema) for name, schema in TABLES}
    return {name: staged.filter(F.col("kind") == name)
            .withColumn("generated_at", (F.col("generated_at") / 1000).cast("timestamp")).select(*schema.names)
            for name, schema in TABLES}
