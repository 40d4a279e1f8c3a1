"""Nearline as a stream: new and updated notes reach the current pool version (cache and Parquet)
seconds after they are dropped, exactly once, with engines that stay warm (also `cmaq pool stream`).

    spark-submit jobs/stream.py --set pool.root=/data/pool           # runs until SIGTERM / Ctrl-C
    spark-submit jobs/stream.py --once --set pool.root=/data/pool    # what is there now, then exit

The data moves like this (the stream's directory is ``stream.dir``, by default ``<pool.root>/stream``)::

    producers ─► drop/ ─► intake (jobs.stream_intake: each file checked; bad ones ─► quarantine/)
      ─► accepted/ ─► Spark file source (schema given, maxFilesPerTrigger) ─► foreachBatch:
         contract per row (bad rows ─► quarantine/rows/) ─► writer lease (waits while a nightly holds it)
         ─► hand-over if the current version changed ─► classify / generate / publish one delta
            (jobs.nearline.apply_rows: the nightly's code, engine, arms and filters) ─► carry set, status

**Exactly once.** The streaming checkpoint (``checkpoint/``) replays a micro-batch whose commit it
did not record. A batch's delta id carries the stream's query id and the batch id
(``<time>-stream-<query>-b<batch>-<tag>``): a replayed batch whose delta is already part of the
current version (on its own or folded by a compaction) publishes nothing again; one that died before
its delta was renamed in publishes it, writing the same cache keys again. Takedown rows
(``content_id``, ``deleted = true``) go out in the same delta, as purges.

**Living with the nightly.** Each batch takes the pool's writer lease, waiting as long as another
writer holds it (a nightly holds it for its whole run), and never writes without it. A nightly reads
its content table, which need not hold what came through the stream, so the stream keeps a carry set
(``carry/``): every row it published since the current version's nightly that the nightly may not
have seen. When a batch finds a new current version (a nightly, or a rollback), it publishes the carry
set into it together with its own rows; rows the new version already serves with the same content
hash, and takedowns of items it does not hold, leave the set.

**Progress.** Each batch appends one line to ``batches.jsonl`` (rows in, rejected, generated,
published, the latency from each file's arrival to its keys being readable) and rewrites
``status.json`` (the last batch, totals, the streaming query's progress), which ``cmaq pool status``
prints.

Exit codes: 0 stopped (or, with --once, everything available processed), 1 error, 2 bad configuration
(nothing published yet, arms that do not match the current version, a bad adapter).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyspark
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cmaq.config import CmaqConfig
from cmaq.pool import atomic_write, new_op_id
from cmaq.pool.lease import Lease, LeaseHeld, lease_store
from cmaq.pool.versions import current_version, delta_ids, read_manifest, version_arms
from jobs.arrow_spark import spark_schema
from jobs.catalog import catalog_session
from jobs.contract import COLUMNS, BadInput
from jobs.entry import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, Timer, add_config_options, setup
from jobs.generate import FAULT_ENV
from jobs.nearline import apply_rows, check_arms
from jobs.plan import Arms, check_content, resolve_arms
from jobs.pool_tables import named_keys, read_version_tables, version_frames
from jobs.publish import switch_views
from jobs.stream_intake import ACCEPTED, ACCEPTED_SCHEMA, ARRIVED_COLUMN, FILE_COLUMN, QUARANTINE, Intake

log = logging.getLogger(__name__)

CHECKPOINT, CARRY, STATE, BATCHES = "checkpoint", "carry", "state.json", "batches.jsonl"
KAFKA_PACKAGE = f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark.__version__}"
_ISIN_LIMIT = 5000  # ids of a batch looked up with a pushed-down IN list; more with a join


# --------------------------------------------------------------------------- the source


def source_frame(spark: SparkSession, cfg: CmaqConfig, stream_dir: Path) -> DataFrame:
    """The stream's rows in :data:`ACCEPTED_SCHEMA`. Files: the intake's ``accepted/`` directory
    (hidden names, the intake's own half-written files, are never listed). Kafka: each message's
    value a JSON object of the content fields (``updated_at`` an ISO-8601 string); a value that does
    not parse becomes a row without an id, which the contract quarantines."""
    sc = cfg.stream
    if sc.source == "files":
        # cleanSource: a file goes once its batch is committed (a replayed batch still finds its files),
        # so the directory the source lists on every trigger stays small.
        return (spark.readStream.schema(spark_schema(ACCEPTED_SCHEMA))
                .option("maxFilesPerTrigger", sc.max_files_per_trigger).option("cleanSource", "delete")
                .parquet(str(stream_dir / ACCEPTED)))
    value = spark_schema(ACCEPTED_SCHEMA.remove(ACCEPTED_SCHEMA.get_field_index(ARRIVED_COLUMN))
                         .remove(ACCEPTED_SCHEMA.get_field_index(FILE_COLUMN)))
    raw = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", sc.kafka_bootstrap_servers)
           .option("subscribe", sc.kafka_topic).option("startingOffsets", sc.kafka_starting_offsets)
           .option("maxOffsetsPerTrigger", 1000 * sc.max_files_per_trigger).load())
    return raw.select(F.from_json(F.col("value").cast("string"), value).alias("v"), "topic", "partition", "offset",
                      "timestamp").select(
        *(F.col(f"v.{c}").alias(c) for c in COLUMNS),
        F.concat_ws(":", "topic", "partition", "offset").alias(FILE_COLUMN),
        F.expr("unix_millis(timestamp)").alias(ARRIVED_COLUMN))


# --------------------------------------------------------------------------- state kept between batches


@dataclass
class StreamState:
    """``state.json``: the version the stream last published into and its carry set's directory."""

    version: str | None = None
    carry: str | None = None  # relative to the stream directory

    @classmethod
    def load(cls, stream_dir: Path) -> "StreamState":
        path = stream_dir / STATE
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, stream_dir: Path) -> None:
        atomic_write(stream_dir / STATE, json.dumps(asdict(self)))


@dataclass
class BatchReport:
    """One micro-batch, as ``batches.jsonl`` and ``status.json`` show it (and as
    :func:`jobs.nearline.apply_rows` fills it)."""

    batch_id: int
    op_id: str
    status: str = "running"
    exit_code: int = EXIT_ERROR
    version: str | None = None
    files: int = 0
    rows_in: int = 0
    rejected: dict = field(default_factory=dict)
    handover: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    delta: dict = field(default_factory=dict)
    latency_s: dict = field(default_factory=dict)
    lease_wait_s: float = 0.0
    timings: dict = field(default_factory=dict)
    finished_at: str = ""


def trim_carry(carry: DataFrame, base_ids: DataFrame, snapshot_ms: int | None) -> DataFrame:
    """The carry set after a hand-over to a version whose nightly made ``base_ids`` (its content ids)
    from a table whose newest ``updated_at`` was ``snapshot_ms``: a note the table never held stays
    (the nightly cannot carry it); a note it held is left to the nightly unless the stream's row is
    newer than anything the nightly read (then the stream's row is the latest word, a takedown too);
    a takedown of an item the version does not hold is done."""
    newer = F.lit(True) if snapshot_ms is None else F.expr("unix_millis(updated_at)") > F.lit(int(snapshot_ms))
    in_base = F.col("_in_base").isNotNull()
    return (carry.join(base_ids.select("content_id").distinct().withColumn("_in_base", F.lit(True)), "content_id",
                       "left")
            .filter((~F.col("deleted") & ~in_base) | (in_base & F.coalesce(newer, F.lit(True))))
            .drop("_in_base"))


def newest_first(older: DataFrame | None, newer: DataFrame) -> DataFrame:
    """``newer``'s rows, plus ``older``'s rows of ids ``newer`` does not hold: a later arrival wins."""
    if older is None:
        return newer
    return older.join(newer.select("content_id"), "content_id", "left_anti").unionByName(newer)


# --------------------------------------------------------------------------- one micro-batch


class StreamStopped(RuntimeError):
    """The stream was asked to stop while a batch waited for the writer lease; the checkpoint replays
    that batch at the next start."""


class MicroBatches:
    """The ``foreachBatch`` function: each call refreshes the current version with one micro-batch
    (see the module doc). Runs on the driver, in the streaming query's thread; the driver's own loop
    calls :meth:`tick` (a hand-over with nothing arriving, views that lag), one publish at a time."""

    def __init__(self, spark: SparkSession, cfg: CmaqConfig, arms: Arms, stream_dir: Path,
                 stop: threading.Event | None = None):
        self.spark, self.cfg, self.arms, self.dir = spark, cfg, arms, stream_dir
        self.root = Path(cfg.pool.root)
        self.stop = stop or threading.Event()
        self.lock = threading.Lock()  # a batch and the driver's tick never publish at once
        self.totals = {"batches": 0, "rows_in": 0, "generated": 0, "published_deltas": 0, "rejected_rows": 0}
        self.last: dict | None = None
        self.waiting_for: str | None = None  # the writer a batch is waiting for, for the status
        self.query_status: dict = {}
        self.views_behind, self.views_at = False, 0.0  # the catalog's views lag the deltas by up to views_every_s
        self._lease_store = lease_store(cfg.pool)

    @property
    def query_id(self) -> str:
        """The streaming query's id, kept in its checkpoint: the same across restarts."""
        return json.loads((self.dir / CHECKPOINT / "metadata").read_text())["id"]

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        report = BatchReport(batch_id, "")
        timer = Timer(report)
        batch = batch.persist()
        try:
            arrivals = {r[0]: (int(r[1]), int(r[2])) for r in
                        batch.groupBy(FILE_COLUMN).agg(F.min(ARRIVED_COLUMN), F.count(F.lit(1))).collect()}
            report.files, report.rows_in = len(arrivals), sum(n for _, n in arrivals.values())
            if not arrivals:
                report.status, report.exit_code = "empty", EXIT_OK
                return
            # An event without its own time is as new as its arrival (a takedown line often has none).
            arrived_at = F.date_format(F.timestamp_millis(F.col(ARRIVED_COLUMN)), "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'")
            checked = check_content(batch.withColumn("updated_at", F.coalesce(F.col("updated_at"), arrived_at))
                                    .drop(FILE_COLUMN, ARRIVED_COLUMN))
            report.rejected = self._quarantine_rows(checked.rejected, batch_id)
            published_ms = self.publish(checked.rows, report, timer, f"b{batch_id:09d}")
            waits = sorted((published_ms - arrived) / 1000 for arrived, _ in arrivals.values())
            report.latency_s = {"p50": round(statistics.median(waits), 2), "max": round(waits[-1], 2)}
            checked.unpersist()
        finally:
            batch.unpersist()
            report.finished_at = datetime.now(timezone.utc).isoformat()
            self._record(report)

    def tick(self) -> None:
        """The driver's loop, between batches: a new current version (a nightly, a rollback) gets the
        carry set at once, not with the next file; views that lag more than ``views_every_s`` follow."""
        state = StreamState.load(self.dir)
        if state.carry is not None and state.version not in (None, current_version(self.root)):
            report = BatchReport(-1, "")
            try:
                self.publish(None, report, Timer(report), None)
            finally:
                report.finished_at = datetime.now(timezone.utc).isoformat()
                self._record(report)
        if self.views_behind and time.monotonic() - self.views_at >= self.cfg.stream.views_every_s:
            with self.lock:
                self.switch_views()

    # ----------------------------------------------------------------- steps

    def _quarantine_rows(self, rejected: DataFrame, batch_id: int) -> dict:
        """Rows the contract sets aside: written to ``quarantine/rows/b<batch>/`` with their reason,
        counted by reason; the rest of the batch goes on."""
        counts = {r[0]: int(r[1]) for r in rejected.groupBy("reason").count().collect()}
        if counts:
            out = self.dir / QUARANTINE / "rows" / f"b{batch_id:09d}"
            rejected.withColumn("batch_id", F.lit(batch_id)).coalesce(1).write.mode("overwrite").parquet(str(out))
        return counts

    def publish(self, rows: DataFrame | None, report: BatchReport, timer: Timer, batch_tag: str | None) -> float:
        """:meth:`_publish` under the writer lease, one publish at a time."""
        with self.lock, self._lease(report):
            return self._publish(rows, report, timer, batch_tag)

    @contextmanager
    def _lease(self, report: BatchReport):
        """The writer lease, waited for as long as another writer holds it: a nightly holds it for its
        whole run, and the stream must neither fail nor write meanwhile (a stop request ends the wait:
        the batch is replayed at the next start). The owner names the stream (the same after a
        restart), so a stream killed mid-batch takes its own lease back at once; one process per
        stream directory is enforced by :func:`run_stream`."""
        owner = f"stream {self.query_id}"
        t0 = time.monotonic()
        lease = Lease(self._lease_store, owner, self.cfg.pool.lease_ttl_s)
        polls = 0
        while True:
            try:
                lease.__enter__()
                break
            except LeaseHeld as exc:
                if self.stop.is_set():
                    raise StreamStopped(f"stopped while waiting for the lease ({exc})") from None
                if polls % 60 == 0:  # once a minute is enough in the log; the status says it at once
                    log.info("stream batch %d waits: %s", report.batch_id, exc)
                    self.waiting_for = str(exc)
                    self.report_status()
                polls += 1
                time.sleep(1.0)
        self.waiting_for = None
        report.lease_wait_s = round(time.monotonic() - t0, 2)
        try:
            yield lease
        finally:
            lease.__exit__(None, None, None)

    def _publish(self, rows: DataFrame | None, report: BatchReport, timer: Timer, batch_tag: str | None) -> float:
        """Under the lease: hand-over, replay check, the refresh itself, then the carry set. ``rows``
        None: a hand-over alone. Returns when (epoch ms) the keys were readable."""
        tag = f"stream-{self.query_id[:8]}-{batch_tag or 'handover'}"
        report.op_id = new_op_id(tag)  # taken under the lease, so delta ids sort in publish order
        version = current_version(self.root)
        vdir = self.root / "versions" / version
        report.version = version
        check_arms(self.arms, version, read_manifest(self.root, version))
        state = StreamState.load(self.dir)
        carry = self.spark.read.parquet(str(self.dir / state.carry)) if state.carry else None
        handover = state.version is not None and state.version != version and carry is not None
        if handover:
            # A new version (a nightly or a rollback) may lack what the stream published into the old one.
            report.handover = {"from": state.version, "to": version, "carried_rows": carry.count()}
            log.info("stream: version %s replaced %s; %d carried rows go into it", version, state.version,
                     report.handover["carried_rows"])
            rows = carry if rows is None else newest_first(carry, rows)
        if rows is None:  # a hand-over some batch did first
            report.status, report.exit_code = "nothing_to_do", EXIT_OK
            return time.time() * 1000
        rows = rows.cache()
        replayed = sorted(d for d in delta_ids(vdir) if f"-{tag}-" in d) if batch_tag else []
        frames: dict = {}
        if replayed:
            log.info("stream: %s is already in %s as %s; not published again", tag, version, replayed[0])
            report.status, report.exit_code, report.delta = "replayed", EXIT_OK, {"published_as": replayed[0]}
        else:
            frames = _frames_of(version_frames(self.spark, vdir), rows)  # cached: read by classify and purge
            apply_rows(self.spark, self.cfg, self.arms, version, frames, rows, report, timer, "stream", views=False)
            self.views_behind = self.views_behind or bool(report.delta)
        published_ms = time.time() * 1000
        if os.environ.get(FAULT_ENV) == "stream_killed_after_publish":
            os.kill(os.getpid(), signal.SIGKILL)
        if handover or (report.delta or {}).get("compaction") or \
                time.monotonic() - self.views_at >= self.cfg.stream.views_every_s:
            with timer("views"):  # a compaction removed directories the views' SQL names: switch now
                self.switch_views()
        with timer("carry"):
            self._save_carry(version, vdir, rows if handover else newest_first(carry, rows), handover, report.op_id)
        rows.unpersist()
        for df in frames.values():
            df.unpersist()
        return published_ms

    def switch_views(self) -> None:
        """Point the catalog's views at the current version with every delta so far (under the lease,
        or when the stream stops)."""
        if self.views_behind:
            switch_views(self.spark, self.cfg)
            self.views_behind = False
        self.views_at = time.monotonic()

    def _save_carry(self, version: str, vdir: Path, carry: DataFrame, handover: bool, op_id: str) -> None:
        """The carry set after this publish, written aside, then ``state.json`` pointed at it.

        At a hand-over the set is trimmed against what the new version's nightly read
        (:func:`trim_carry`)."""
        if handover:
            base_ids = named_keys(read_version_tables(self.spark, vdir, bool(version_arms(vdir))))
            carry = trim_carry(carry, base_ids,
                               read_manifest(self.root, version).get("inputs", {}).get("max_updated_at_ms"))
        name = f"{CARRY}/{op_id}"
        carry.coalesce(1).write.parquet(str(self.dir / name))
        StreamState(version, name).save(self.dir)
        for old in (self.dir / CARRY).iterdir():  # earlier sets, and one a crash left before its pointer
            if old.name != Path(name).name:
                shutil.rmtree(old, ignore_errors=True)

    # ----------------------------------------------------------------- progress

    def _record(self, report: BatchReport) -> None:
        line = asdict(report)
        if report.status not in ("empty", "nothing_to_do"):
            self.totals["batches"] += 1
            self.totals["rows_in"] += report.rows_in
            self.totals["generated"] += report.counts.get("generated", 0)
            self.totals["published_deltas"] += bool(report.delta and report.status != "replayed")
            self.totals["rejected_rows"] += sum(report.rejected.values())
            with (self.dir / BATCHES).open("a") as fh:
                fh.write(json.dumps(line, default=str) + "\n")
            log.info("stream batch %d: %s, %d files, %d rows in, %d rejected, %d generated, latency p50 %s s, "
                     "max %s s, version %s", report.batch_id, report.status, report.files, report.rows_in,
                     sum(report.rejected.values()), report.counts.get("generated", 0),
                     report.latency_s.get("p50"), report.latency_s.get("max"), report.version)
            self.last = line
        self.report_status()

    def report_status(self, **query) -> None:
        """``status.json``; ``query``: the streaming query's and the intake's figures (the driver's
        loop updates them, batches keep the last ones)."""
        self.query_status.update(query)
        write_status(self.cfg, {"updated_at": datetime.now(timezone.utc).isoformat(),
                                "host": socket.gethostname(), "pid": os.getpid(),
                                "waiting_for_lease": self.waiting_for, "totals": self.totals,
                                "last_batch": self.last, **self.query_status})


def _frames_of(frames: dict, rows: DataFrame) -> dict:
    """The version's tables restricted to the items of ``rows`` (a batch names a few of millions)."""
    ids = [r[0] for r in rows.select("content_id").distinct().limit(_ISIN_LIMIT + 1).collect()]
    if len(ids) <= _ISIN_LIMIT:
        return {n: df.filter(F.col("content_id").isin(ids)).cache() for n, df in frames.items()}
    return {n: df.join(rows.select("content_id").distinct(), "content_id", "left_semi").cache()
            for n, df in frames.items()}


def write_status(cfg: CmaqConfig, status: dict) -> None:
    atomic_write(cfg.stream.status_file(cfg.pool.root), json.dumps(status, indent=2, default=str))


# --------------------------------------------------------------------------- the job


def check_ready(cfg: CmaqConfig) -> Arms:
    """What must hold before the stream starts: a published version made the way this config serves
    (``BadInput`` otherwise: exit 2)."""
    root = Path(cfg.pool.root)
    version = current_version(root)
    if version is None:
        raise BadInput(f"{root}: nothing published yet; run the nightly (cmaq pool build) first")
    arms = resolve_arms(cfg)
    try:
        check_arms(arms, version, read_manifest(root, version))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return arms


def run_stream(spark: SparkSession, cfg: CmaqConfig, once: bool, stop: threading.Event | None = None) -> int:
    """Run the stream until ``stop`` is set (or, with ``once``, until what is available now is
    processed); the exit code."""
    stream_dir = cfg.stream.root(cfg.pool.root)
    try:
        arms = check_ready(cfg)
        stream_dir.mkdir(parents=True, exist_ok=True)
        single = one_process_lock(stream_dir)
    except BadInput as exc:
        log.error("stream not started: %s", exc)
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stop = stop or threading.Event()
    intake = Intake(stream_dir, cfg.stream.intake_poll_s) if cfg.stream.source == "files" else None
    if intake is not None:
        intake.scan()  # what is already dropped is in the first batch
    batches = MicroBatches(spark, cfg, arms, stream_dir, stop)
    batches.views_behind = True
    batches.switch_views()  # now, not in the first batch: the first catalog access boots its metastore
    source = source_frame(spark, cfg, stream_dir)
    writer = (source.writeStream.foreachBatch(batches).queryName("cmaq-pool-stream")
              .option("checkpointLocation", str(stream_dir / CHECKPOINT)))
    writer = (writer.trigger(availableNow=True) if once
              else writer.trigger(processingTime=f"{cfg.stream.trigger_s} seconds"))
    query = writer.start()
    log.info("stream started: query %s, source %s, trigger %s", query.id, cfg.stream.source,
             "available now" if once else f"{cfg.stream.trigger_s:g} s")
    if intake is not None and not once:
        intake.start()
    error, logged_batch = None, None
    try:
        while query.isActive and not stop.is_set():
            query.awaitTermination(timeout=max(1.0, cfg.stream.trigger_s))
            progress = _progress(query.lastProgress)
            batches.report_status(query={"id": str(query.id), "run_id": str(query.runId), "active": query.isActive,
                                         "progress": progress}, intake=intake.counts if intake else None)
            if progress and progress["batchId"] != logged_batch:
                logged_batch = progress["batchId"]
                log.info("stream progress: batch %s, %s rows in, %.1f rows/s processed, trigger %s ms",
                         logged_batch, progress["numInputRows"], progress["processedRowsPerSecond"] or 0.0,
                         (progress["durationMs"] or {}).get("triggerExecution"))
            if query.isActive:
                batches.tick()
        if query.isActive:
            query.stop()
        error = query.exception()
        if error is None and not stop.is_set():
            batches.tick()  # --once: a version switched under it gets the carry set before the exit
        batches.switch_views()  # the views show every delta the stream published
    except Exception as exc:  # noqa: BLE001 - a failed tick ends the stream like a failed batch
        log.exception("stream failed between batches")
        error = exc
        if query.isActive:
            query.stop()
    finally:
        if intake is not None:
            intake.stop()
        single.close()
    if error is not None and stop.is_set():
        log.info("stream stopped; an interrupted batch is replayed at the next start")
        return EXIT_OK
    if error is not None:
        log.error("stream failed: %s", str(error).strip().splitlines()[0] if str(error).strip() else error)
        return EXIT_ERROR
    return EXIT_OK


def one_process_lock(stream_dir: Path):
    """An exclusive lock on ``<stream>/_stream.lock`` for this process's lifetime (the system frees it
    when the process dies, even by SIGKILL): two streams over one directory would share the
    checkpoint and the lease's owner name."""
    fh = (stream_dir / "_stream.lock").open("a")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise BadInput(f"another stream is running over {stream_dir}") from None
    return fh


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set: the stream then stops between batches and exits 0."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _progress(progress: dict | None) -> dict | None:
    """The parts of a streaming query's progress an operator reads."""
    if not progress:
        return None
    return {k: progress.get(k) for k in ("batchId", "timestamp", "numInputRows", "inputRowsPerSecond",
                                         "processedRowsPerSecond", "durationMs")}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--once", action="store_true", help="Process what is available now, then exit.")
    add_config_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    cfg = setup(args)
    if cfg is None:
        return EXIT_BAD_INPUT
    return run_stream(catalog_session("cmaq-pool-stream", cfg.pool), cfg, args.once, stop_on_signals())


if __name__ == "__main__":
    sys.exit(main())
