"""Generate: one Spark stage over the plan's hash partitions. Each task renders its items' prompts,
beam-searches them with the worker's one engine, runs the serving filters, writes its partition's
staging rows and then its commit marker.

    todo ─► pmod(hash(content_id), P) ─► repartition(P, content_id): task i holds plan partition i
        ─► per engine batch: engine.beam ─► FilterChain("serving") ─► STAGING_SCHEMA rows
        ─► staging/<plan_id>/p<i>/data.parquet, then p<i>/_COMMITTED

No barriers: all P tasks are in one stage, so an engine slot that finishes a partition takes the next
one at once; nothing waits for a chunk's slowest task. Commit: a task writes an attempt-unique file
and renames it to ``data.parquet`` before writing the marker. Spark's own commit protocol is not
used because it commits the whole job at its end: a killed driver would lose every finished task,
and resuming is the point. Renames on one filesystem are atomic, so a retried or speculative attempt
never leaves two copies; an attempt that finds the marker discards its own file. A rerun of the same
plan (same items, versions and P) filters the committed partitions out before the shuffle, from the
markers alone (P small files, no item ids).

Engines recover: a dead engine (:class:`cmaq.engines.EngineDead`) is closed, dropped from the
worker's cache and rebuilt inside the task, and the batch is redone. An item that kills the Python
worker itself is hunted down across task attempts (:class:`CrashHunt`) and quarantined
``engine_crash``; the rest of its partition is served. The staging directory must be on storage
every executor and the driver share (the pool root).
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cmaq.config import EngineConfig, FiltersConfig, PoolConfig
from cmaq.engines import EngineDead, GenResult, evict_engine, get_engine
from cmaq.engines.base import ENGINE_CRASH
from cmaq.pool import atomic_write
from cmaq.pool.versions import TABLES, tables
from cmaq.schema import SCORE_COLUMNS
from cmaq.text import to_string_array
from filters.chain import shared_chain
from jobs.arrow_spark import empty_frame, spark_schema
from jobs.plan import CONTENT_FIELDS, Arms, Serving, plan_id

log = logging.getLogger(__name__)
# "generate_first_attempt": the first attempt of every generation task fails (Spark's task retry);
# "engine_dies_once": the first engine call of the plan finds its engine dead (rebuild inside the task).
# "stream_killed_after_publish": the stream's driver is SIGKILLed right after a batch's delta is
# published, before the checkpoint records the batch (jobs.stream: the replay publishes nothing twice).
FAULT_ENV = "CMAQ_FAULT_INJECTION"
PART = "_part"
COMMITTED = "_COMMITTED"
# The figures of a generation stage that add up over arms.
STAGE_TOTALS = ("partitions", "committed_before", "skipped", "generated", "engine_busy_s", "engine_restarts",
                "engine_crash", "wall_s")
CRASH_GROUPS = 16  # a crash hunt narrows its suspects 16-fold per attempt: a 256-item batch in 3 deaths

STAGING_SCHEMA = pa.schema([
    pa.field("kind", pa.string()), pa.field("content_id", pa.string()), pa.field("content_hash", pa.string()),
    pa.field("category", pa.string()), pa.field("rank", pa.int32()), pa.field("query", pa.string()),
    pa.field("logprob", pa.float64()), pa.field("reason", pa.string()), pa.field("detail", pa.string()),
    *[pa.field(s, pa.float64()) for s in SCORE_COLUMNS],
    pa.field("model_version", pa.string()), pa.field("adapter_version", pa.string()),
    pa.field("config_hash", pa.string()), pa.field("run_id", pa.string()), pa.field("generated_at", pa.int64()),
])
# What each task returns to the driver: one row, never the items.
TASK_SCHEMA = pa.schema([
    pa.field("part", pa.int32()), pa.field("items", pa.int64()), pa.field("skipped", pa.bool_()),
    pa.field("engine_s", pa.float64()), pa.field("restarts", pa.int32()), pa.field("crashed", pa.int32()),
    pa.field("attempt", pa.int32()),
])


def partition_column(n_partitions: int):
    """The plan's partition of an item: the very expression ``repartition(P, "content_id")`` uses
    (Murmur3, seed 42, pmod P), so Spark task i receives exactly plan partition i."""
    return F.pmod(F.hash("content_id"), F.lit(n_partitions))


def plan_partitions(n_todo: int, pool: PoolConfig) -> int:
    return pool.partitions or max(1, math.ceil(n_todo / pool.items_per_partition))


def partition_dir(staging: Path, part: int) -> Path:
    return staging / f"p{part:05d}"


@dataclass(frozen=True)
class PartitionJob:
    """Everything a generation task needs, shipped in the closure: settings and paths, no engine."""

    serving: Serving
    filters: FiltersConfig
    staging: str
    run_id: str
    generated_at_ms: int
    engine_batch: int
    max_engine_restarts: int
    fault: str = ""


# --------------------------------------------------------------------------- engines that recover


class EngineSlot:
    """The worker's engine as one task uses it: a dead engine is closed, dropped from the worker's
    cache and rebuilt, and the call redone, at most ``max_restarts`` times per task. A rebuild that
    fails leaves nothing cached, so Spark's retry of the task starts clean."""

    def __init__(self, cfg: EngineConfig, max_restarts: int, fault_token: Path | None = None):
        self.cfg, self.max_restarts, self.fault_token = cfg, max_restarts, fault_token
        self.restarts, self.busy_s = 0, 0.0

    def beam(self, items: list[dict], width: int, adapter: str | None) -> list[GenResult]:
        while True:
            engine = get_engine(self.cfg, exclusive=True)  # another arm's engine is closed first
            t0 = time.perf_counter()
            try:
                if self._injected_death():
                    raise EngineDead(f"{FAULT_ENV}=engine_dies_once: the engine is gone")
                return engine.beam(items, width=width, adapter=adapter)
            except EngineDead as exc:
                evict_engine(self.cfg)
                if self.restarts >= self.max_restarts:
                    raise
                self.restarts += 1
                log.warning("engine died (%s); rebuilt it (restart %d of at most %d in this task)", exc,
                            self.restarts, self.max_restarts)
            finally:
                self.busy_s += time.perf_counter() - t0

    def _injected_death(self) -> bool:
        """Once per plan, whichever task gets there first (an exclusive create on shared staging)."""
        if self.fault_token is None:
            return False
        try:
            os.close(os.open(self.fault_token, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        finally:
            self.fault_token = None
        return True


class CrashHunt:
    """Finds, across a task's attempts, the items that kill the worker process (a segfault, an
    out-of-memory kill: nothing in the process survives to report it).

    Before each engine call the task writes the call's item ids to ``_inflight.<run>.<attempt>.json``
    and removes the file after. A file still there at a later attempt of the same run names the
    call that died with its process. Those items become the suspects: the next attempt serves every
    other item first, then the suspects in 16 groups, one call each, so each death narrows the
    suspects 16-fold; a death on a single item quarantines it as ``engine_crash`` for good (the state
    lives in ``_crash_hunt.json``). A 256-item batch is resolved in three deaths, within Spark's
    default four attempts. Speculative execution must stay off: a live attempt's file would read as
    a death."""

    def __init__(self, pdir: Path, run_id: str, attempt: int):
        self.pdir, self.run_id, self.attempt = pdir, run_id, attempt
        self.state_path = pdir / "_crash_hunt.json"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.suspects: set[str] = set(state.get("suspects", []))
        self.crashed: set[str] = set(state.get("crashed", []))
        self.inflight = pdir / f"_inflight.{run_id}.{attempt}.json"
        self._read_deaths()

    def _read_deaths(self) -> None:
        changed = False
        for f in sorted(self.pdir.glob("_inflight.*.json")):
            _, run, attempt, _ = f.name.split(".")
            this_run = run == self.run_id
            if this_run and int(attempt) >= self.attempt:
                continue  # a concurrent attempt's call in flight
            if this_run:
                ids = json.loads(f.read_text())
                if len(ids) == 1:
                    self.crashed.add(ids[0])
                    self.suspects.discard(ids[0])
                    log.warning("item %s killed the worker; quarantined as %s", ids[0], ENGINE_CRASH)
                else:
                    self.suspects = set(ids)
                    log.warning("a worker died on a call of %d items; narrowing them down", len(ids))
                changed = True
            f.unlink(missing_ok=True)  # read, or left by a killed earlier run
        if changed:
            atomic_write(self.state_path, json.dumps({"suspects": sorted(self.suspects),
                                                      "crashed": sorted(self.crashed)}))

    def call(self, fn, items: list[dict]):
        """``fn(items)`` with the in-flight record around it."""
        self.inflight.write_text(json.dumps([str(it["content_id"]) for it in items]))
        try:
            return fn(items)
        finally:
            self.inflight.unlink(missing_ok=True)

    def suspect_groups(self, held: list[dict]) -> list[list[dict]]:
        size = max(1, math.ceil(len(held) / CRASH_GROUPS))
        return [held[i:i + size] for i in range(0, len(held), size)]


# --------------------------------------------------------------------------- one partition (executors)


def generate_partition(batches: Iterator[pa.RecordBatch], job: PartitionJob, items_done=None,
                       engine_ms=None) -> Iterator[pa.RecordBatch]:
    """One Spark task = one plan partition: generate into an attempt-unique file, rename it to
    ``data.parquet``, then write the marker. A partition already committed (by a speculative or an
    earlier attempt) is drained and skipped."""
    ctx = TaskContext.get()
    attempt, part = ctx.attemptNumber(), ctx.partitionId()
    if job.fault == "generate_first_attempt" and attempt == 0:
        raise RuntimeError("injected failure on the first attempt of a generation task")
    pdir = partition_dir(Path(job.staging), part)
    if (pdir / COMMITTED).exists():
        for _ in batches:
            pass
        yield _skipped_row(part, attempt)
        return
    pdir.mkdir(parents=True, exist_ok=True)
    hunt = CrashHunt(pdir, job.run_id, attempt)
    slot = EngineSlot(job.serving.engine, job.max_engine_restarts,
                      Path(job.staging) / "_fault_engine_dies_once" if job.fault == "engine_dies_once" else None)
    tmp = pdir / f".attempt-{ctx.taskAttemptId()}.parquet.tmp"
    writer = pq.ParquetWriter(tmp, STAGING_SCHEMA)
    try:
        n_items, n_crashed = _generate_into(writer, batches, part, hunt, slot, job)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)  # no half file left behind
        raise
    writer.close()
    if (pdir / COMMITTED).exists():  # another attempt committed while this one ran
        tmp.unlink(missing_ok=True)
        yield _skipped_row(part, attempt)
        return
    os.replace(tmp, pdir / "data.parquet")
    atomic_write(pdir / COMMITTED, json.dumps({
        "items": n_items, "run_id": job.run_id, "attempt": attempt, "engine_s": round(slot.busy_s, 3),
        "restarts": slot.restarts, "crashed": n_crashed}))
    if items_done is not None:
        items_done.add(n_items)
        engine_ms.add(int(slot.busy_s * 1000))
    yield _task_row(part, n_items, False, slot.busy_s, slot.restarts, n_crashed, attempt)


def _generate_into(writer: pq.ParquetWriter, batches: Iterator[pa.RecordBatch], part: int, hunt: CrashHunt,
                   slot: EngineSlot, job: PartitionJob) -> tuple[int, int]:
    """Stream the partition's rows through the engine in ``job.engine_batch`` calls, crash suspects
    last and in groups; returns (items, items quarantined as engine_crash)."""
    chain = shared_chain(job.filters, "serving")
    pending, held, n_items, n_crashed = [], [], 0, 0
    for rb in batches:
        if rb.num_rows and not pc.all(pc.equal(rb.column(PART), part)).as_py():
            raise RuntimeError(f"task {part} got rows of another plan partition: Spark's hash partitioning "
                               f"no longer matches jobs.generate.partition_column")
        for item in safe_rows(rb):
            n_items += 1
            cid = str(item["content_id"])
            if cid in hunt.crashed:
                writer.write_table(_crash_rows(item, job))
                n_crashed += 1
            elif cid in hunt.suspects:
                held.append(item)
            else:
                pending.append(item)
                if len(pending) >= job.engine_batch:
                    writer.write_table(_serve(hunt, slot, chain, pending, job))
                    pending = []
    if pending:
        writer.write_table(_serve(hunt, slot, chain, pending, job))
    for group in hunt.suspect_groups(held):
        writer.write_table(_serve(hunt, slot, chain, group, job))
    return n_items, n_crashed


def _task_row(part, items, skipped, engine_s, restarts, crashed, attempt) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{"part": part, "items": items, "skipped": skipped, "engine_s": engine_s,
                                        "restarts": restarts, "crashed": crashed, "attempt": attempt}],
                                      schema=TASK_SCHEMA)


def _skipped_row(part: int, attempt: int) -> pa.RecordBatch:
    return _task_row(part, 0, True, 0.0, 0, 0, attempt)


def _serve(hunt: CrashHunt, slot: EngineSlot, chain, items: list[dict], job: PartitionJob) -> pa.Table:
    width, adapter = job.serving.engine.beam_width, job.serving.adapter
    results = hunt.call(lambda batch: slot.beam(batch, width, adapter), items)
    return staging_rows(items, results, chain, job.serving.versions, job.run_id, job.generated_at_ms)


def _crash_rows(item: dict, job: PartitionJob) -> pa.Table:
    res = GenResult(str(item["content_id"]), error=(ENGINE_CRASH, "the item killed the engine's worker process "
                                                                  "on every attempt"))
    return staging_rows([item], [res], None, job.serving.versions, job.run_id, job.generated_at_ms)


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
                 generated_at_ms: int) -> pa.Table:
    """Every candidate of every item through the filter chain: served (``pool``) or ``dropped`` with
    its reason; an item the engine could not serve becomes one ``quarantine`` row. Columnar: the
    items' fields are taken once per candidate by index, not copied into a dict per candidate (this
    runs for every item of the night)."""
    served, ranks, queries, logprobs = [], [], [], []
    failed, reasons, details = [], [], []
    for j, res in enumerate(results):
        if res.error is not None or not res.candidates:
            reason, detail = res.error or ("no_candidates", "the engine returned nothing")
            failed.append(j)
            reasons.append(reason)
            details.append(detail)
            continue
        for c in res.candidates:
            served.append(j)
            ranks.append(c.rank)
            queries.append(c.text)
            logprobs.append(c.logprob)
    per_item = {k: to_string_array([it.get(k) for it in items]) for k in ITEM_FIELDS}
    parts = []
    if served:
        take = pa.array(served, pa.int64())
        cand = pa.table({**{k: col.take(take) for k, col in per_item.items()}, "rank": pa.array(ranks, pa.int32()),
                         "query": to_string_array(queries), "logprob": pa.array(logprobs, pa.float64())})
        judged = chain.run(cand).table
        keep = judged["keep"]
        parts.append(_staging_table({
            "kind": pc.if_else(keep, "pool", "dropped"), "content_id": judged["content_id"],
            "content_hash": judged["content_hash"], "category": judged["category"], "rank": judged["rank"],
            "query": pc.if_else(keep, judged["query_clean"], judged["query"]), "logprob": judged["logprob"],
            "reason": judged["reason"],
            **{s: _nan_as_null(judged[s]) for s in SCORE_COLUMNS if s in judged.column_names}},
            len(served), versions, run_id, generated_at_ms))
    if failed:
        take = pa.array(failed, pa.int64())
        parts.append(_staging_table({
            "kind": pa.repeat("quarantine", len(failed)),
            **{k: per_item[k].take(take) for k in ("content_id", "content_hash", "category")},
            "reason": pa.array(reasons, pa.string()), "detail": to_string_array(details)},
            len(failed), versions, run_id, generated_at_ms))
    return pa.concat_tables(parts) if parts else STAGING_SCHEMA.empty_table()


#: What a staging row or the filter chain reads of an item.
ITEM_FIELDS = tuple(dict.fromkeys(("content_id", "content_hash", *CONTENT_FIELDS)))


def _staging_table(columns: dict, n: int, versions: dict, run_id: str, generated_at_ms: int) -> pa.Table:
    """``columns`` (n rows each) in STAGING_SCHEMA, the run's constants added, absent columns null."""
    constants = {**{k: versions[k] for k in ("model_version", "adapter_version", "config_hash")},
                 "run_id": run_id, "generated_at": generated_at_ms}
    arrays = []
    for f in STAGING_SCHEMA:
        if f.name in constants:
            arrays.append(pa.repeat(pa.scalar(constants[f.name], f.type), n))
        elif f.name in columns:
            arrays.append(columns[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=STAGING_SCHEMA)


def _nan_as_null(values):
    """A filter's score, NaN (not computed) as null."""
    return pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)


# --------------------------------------------------------------------------- the stage (driver)


def committed_partitions(staging: Path) -> dict[int, dict]:
    """Plan partition -> its commit marker, from the markers alone."""
    return {int(m.parent.name[1:]): json.loads(m.read_text()) for m in staging.glob(f"p*/{COMMITTED}")}


def generate_partitions(todo: DataFrame, n_todo: int, serving: Serving, filters_cfg: FiltersConfig,
                        pool: PoolConfig, staging_root: Path, run_id: str) -> tuple[DataFrame | None, dict]:
    """Generate ``todo`` into ``staging_root/<plan_id>`` in one stage of P tasks, skipping the
    partitions a crashed earlier run of the same plan committed. Returns the staged rows (None when
    there was nothing to do) and the stage's statistics."""
    n_parts = plan_partitions(n_todo, pool)
    pid = plan_id(todo, n_todo, serving.versions, n_parts)
    staging = staging_root / pid
    staging.mkdir(parents=True, exist_ok=True)
    before = committed_partitions(staging)
    skipped = sum(m["items"] for m in before.values())
    stats = {"plan_id": pid, "partitions": n_parts, "committed_before": len(before), "skipped": skipped,
             "generated": 0, "engine_busy_s": 0.0, "engine_restarts": 0, "engine_crash": 0, "wall_s": 0.0}
    if n_todo and len(before) < n_parts:
        job = PartitionJob(serving, filters_cfg, str(staging), run_id, int(time.time() * 1000),
                           pool.engine_batch, pool.max_engine_restarts, os.environ.get(FAULT_ENV, ""))
        rows = todo.withColumn(PART, partition_column(n_parts))
        if before:
            rows = rows.filter(~F.col(PART).isin(sorted(before)))
        sc = todo.sparkSession.sparkContext
        items_done, engine_ms = sc.accumulator(0), sc.accumulator(0)
        stage = rows.repartition(n_parts, "content_id").mapInArrow(
            lambda it: generate_partition(it, job, items_done, engine_ms), spark_schema(TASK_SCHEMA))
        t0 = time.perf_counter()
        tasks = with_progress(stage.collect, items_done, engine_ms, n_todo - skipped, pool.progress_every_s)
        stats["wall_s"] = round(time.perf_counter() - t0, 3)
        ran = [t for t in tasks if not t["skipped"]]
        stats.update(generated=sum(t["items"] for t in ran), engine_busy_s=round(sum(t["engine_s"] for t in ran), 3),
                     engine_restarts=sum(t["restarts"] for t in ran), engine_crash=sum(t["crashed"] for t in ran))
    files = sorted(str(p) for p in staging.glob("p*/data.parquet"))
    staged = (todo.sparkSession.read.schema(spark_schema(STAGING_SCHEMA)).parquet(*files) if files and n_todo
              else None)
    return staged, stats


def with_progress(action, items_done, engine_ms, total: int, every_s: float):
    """Run ``action()`` (the stage) while logging items done of ``total``, items/s and the ETA every
    ``every_s`` seconds from the tasks' accumulators (they report as each task ends)."""
    result, error, done = [], [], threading.Event()

    def run():
        try:
            result.append(action())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)
        finally:
            done.set()

    t0 = time.perf_counter()
    threading.Thread(target=run, name="generate-stage", daemon=True).start()
    while not done.wait(every_s):
        n, dt = items_done.value, time.perf_counter() - t0
        if n == 0:  # accumulators arrive with finished batches: until then, engines are starting
            log.info("generate: 0 of %d items after %.0f s (engines starting, first batches running)", total, dt)
            continue
        rate = n / dt
        eta = (total - n) / rate
        log.info("generate: %d of %d items (%.1f%%), %.1f items/s, engine busy %.0f s, ETA %s", n, total,
                 100 * n / max(total, 1), rate, engine_ms.value / 1000, f"{eta:.0f} s")
    if error:
        raise error[0]
    log.info("generate: %d items in %.1f s", items_done.value, time.perf_counter() - t0)
    return [r.asDict() for r in result[0]]


def generate_arms(todo: DataFrame, n_todo: int, arms: Arms, filters_cfg: FiltersConfig, pool: PoolConfig,
                  staging_root: Path, run_id: str) -> tuple[dict, dict]:
    """Generate each arm's share of ``todo`` (rows with ``arm`` in a pool with arms), arm after arm:
    one stage of that arm's plan partitions each, so a worker builds an arm's engine once and closes
    it before the next arm's (:func:`cmaq.engines.get_engine` with ``exclusive``). A merged adapter is
    a model of its own; running arms side by side would add their engines' memory up on every worker.
    Returns the staged tables (pool / dropped / quarantine, with ``arm`` when armed) and the
    statistics: the stages' totals, every stage's ``plan_ids``, and per arm under ``arms``.
    ``n_todo``: the rows of ``todo`` (the caller has counted them)."""
    spark = todo.sparkSession
    if not arms.armed:
        staged, stats = generate_partitions(todo, n_todo, arms.arms[0].serving, filters_cfg, pool,
                                            staging_root, run_id)
        return staged_frames(spark, staged), {**stats, "plan_ids": [stats["plan_id"]]}
    todo_by_arm = {r[0]: int(r[1]) for r in todo.groupBy("arm").count().collect()}
    frames, per_arm = [], {}
    for arm in arms.arms:
        n = todo_by_arm.get(arm.name, 0)
        log.info("generate: arm %s, %d items", arm.name, n)
        staged, per_arm[arm.name] = generate_partitions(todo.filter(F.col("arm") == arm.name).drop("arm"), n,
                                                        arm.serving, filters_cfg, pool, staging_root, run_id)
        frames.append(staged_frames(spark, staged, arm.name))
    totals = {k: sum(st[k] for st in per_arm.values()) for k in STAGE_TOTALS}
    return ({name: reduce(DataFrame.unionByName, (f[name] for f in frames)) for name, _ in TABLES},
            {**totals, "plan_ids": sorted({st["plan_id"] for st in per_arm.values()}), "arms": per_arm})


def staged_frames(spark: SparkSession, staged: DataFrame | None, arm: str | None = None) -> dict:
    """The staged rows split into the pool / dropped / quarantine tables, labelled with ``arm``."""
    schemas = tables(arm is not None)
    if staged is None:
        return {name: empty_frame(spark, schema) for name, schema in schemas}
    if arm is not None:
        staged = staged.withColumn("arm", F.lit(arm))
    return {name: staged.filter(F.col("kind") == name)
            .withColumn("generated_at", (F.col("generated_at") / 1000).cast("timestamp")).select(*schema.names)
            for name, schema in schemas}
