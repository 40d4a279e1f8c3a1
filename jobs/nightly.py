"""The nightly recall-pool job: extract -> plan -> generate (one stage) -> assemble -> gates -> publish.

    spark-submit jobs/nightly.py --content data/world/content --set pool.root=/data/pool

Each step is a module: :mod:`jobs.plan` (read, key, carry forward), :mod:`jobs.generate` (prompt,
engine, serving filters on the executors), :mod:`jobs.gates`, :mod:`jobs.publish`. Layout under
``pool.root``::

    current                          the published run_id (replaced atomically)
    versions/<run_id>/pool/          POOL_SCHEMA, partitioned by category
    versions/<run_id>/dropped/       DROPPED_SCHEMA (reason codes)
    versions/<run_id>/quarantine/    QUARANTINE_SCHEMA
    versions/<run_id>/manifest.json  written last
    staging/<plan_id>/pNNNNN/        one plan partition's generated rows, then its _COMMITTED marker
    runs/<run_id>.json               every run's manifest, published or not

The content table is checked against the input contract (:mod:`jobs.contract`) before the writer
lease is taken: a schema it refuses is exit 2 with a ``bad_input`` run record and nothing else
written. Rows it sets aside (no id, an unreadable ``updated_at``, an older duplicate of an id) are
the version's quarantine rows with their reason; takedown rows (``deleted = true``) are left out.

Exit codes: 0 published, 1 error, 2 bad input or configuration, 3 ran but failed the data-quality
gates (nothing published).
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cmaq.config import CmaqConfig
from cmaq.pool import new_op_id
from cmaq.pool.versions import current_version, read_manifest, tables
from jobs.contract import live, takedowns
from jobs.entry import (EXIT_ERROR, EXIT_GATES, Timer, checked_input, content_job_parser, run_content_job,
                        run_recorded)
from jobs.gates import run_gates, table_counts
from jobs.generate import generate_arms
from jobs.plan import (KEY, Arms, CheckedContent, carried_keys, carried_rows, keyed_content, max_updated_at_ms,
                       read_content, resolve_arms)
from jobs.pool_tables import generated_frames, item_columns, read_version_tables, version_frames, write_tables
from jobs.publish import prune_versions, publish_version



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
    generation: dict = field(default_factory=dict)
    spark_app_id: str = ""
    previous_version: str | None = None
    published_version: str | None = None
    kv: dict = field(default_factory=dict)
    arms: dict = field(default_factory=dict)  # name -> weight, adapter, versions ({} without arms)
    traffic_salt: str = ""
    catalog: dict = field(default_factory=dict)
    error: str | None = None


def build_pool(spark: SparkSession, cfg: CmaqConfig, content_source: str) -> RunReport:
    """Run the whole job under the writer lease; never raises (see the report's exit_code)."""
    root = Path(cfg.pool.root)
    root.mkdir(parents=True, exist_ok=True)
    report = RunReport(run_id=new_op_id(), spark_app_id=spark.sparkContext.applicationId,
                       inputs={"content": content_source, "pool_root": str(root)})
    # Bad content and bad arms (a missing adapter, one trained for another base) both stop the run
    # here: exit 2, before the lease, before any generation.
    checked = checked_input(root, report, report.run_id,
                            lambda: (read_content(spark, content_source), resolve_arms(cfg)))
    if checked is not None:
        run_recorded(cfg.pool, report, report.run_id, "nightly",
                     lambda timer: _run(spark, cfg, *checked, root, report, timer))
    return report


def _run(spark: SparkSession, cfg: CmaqConfig, checked: CheckedContent, arms: Arms, root: Path, report: RunReport,
         timer: Timer) -> None:
    report.versions = arms.versions
    report.arms, report.traffic_salt = arms.manifest(), arms.salt
    report.inputs["model_dir"] = arms.arms[0].serving.model_dir
    with timer("read"):
        rows, rejected = checked.rows, checked.rejected
        content = live(rows)
        n_rejected = rejected.count()
        report.counts["taken_down"] = takedowns(rows).count()
        report.counts["read"] = content.count() + n_rejected + report.counts["taken_down"]
        report.inputs["max_updated_at_ms"] = max_updated_at_ms(rows)
    prev_id = current_version(root)
    report.previous_version = prev_id
    # The previous version's own contract rows are not carried: tonight's input says what is rejected.
    prev_frames = generated_frames(version_frames(spark, root / "versions" / prev_id)) if prev_id else None

    with timer("plan"):
        keyed = keyed_content(content, arms)
        carried = carried_keys(keyed, prev_frames).cache()
        todo = keyed.join(carried, [*item_columns(keyed)[:-1], *KEY], "left_anti").cache()
        n_todo = todo.count()
    report.counts["carried_forward"] = carried.count()
    report.counts["to_generate"] = n_todo

    with timer("generate"):
        staged, stats = generate_arms(todo, n_todo, arms, cfg.filters, cfg.pool, root / "staging", report.run_id)
    report.counts["generated"], report.counts["skipped_committed"] = stats.pop("generated"), stats.pop("skipped")
    report.counts["engine_restarts"] = stats["engine_restarts"]
    report.generation = stats

    with timer("assemble"):
        tmp = root / "versions" / f".{report.run_id}.tmp"
        out = assemble(staged, prev_frames, carried)
        out["quarantine"] = out["quarantine"].unionByName(contract_quarantine(rejected, arms, report.run_id))
        write_tables(out, tmp)
    with timer("gates"):
        written = read_version_tables(spark, tmp, arms.armed)
        report.counts.update(table_counts(written))
        expected = content.select("content_id").unionByName(rejected.select("content_id"))
        if arms.armed:
            expected = expected.crossJoin(F.broadcast(arms.frame(spark).select("arm")))
            report.counts["arms"] = arm_counts(written, keyed, carried, stats["arms"])
        report.gates = run_gates(written, expected, report.counts, cfg,
                                 read_manifest(root, prev_id) if prev_id else None)
    if not all(g["ok"] for g in report.gates.values()):
        report.status, report.exit_code = "gates_failed", EXIT_GATES
        shutil.rmtree(tmp, ignore_errors=True)
        return
    publish_version(spark, cfg, root, tmp, report, timer)
    for plan in stats["plan_ids"]:
        shutil.rmtree(root / "staging" / plan, ignore_errors=True)
    prune_versions(root, cfg.pool.keep_versions)
    for df in (todo, carried):
        df.unpersist()
    checked.unpersist()


def assemble(staged: dict, prev_frames: dict | None, carried: DataFrame) -> dict:
    """New rows plus the previous version's rows of carried-forward items (per carrying arm)."""
    if prev_frames is None:
        return staged
    kept = carried_rows(prev_frames, carried)
    return {name: df.unionByName(kept[name].select(*df.columns)) for name, df in staged.items()}


def arm_counts(written: dict, keyed: DataFrame, carried: DataFrame, stages: dict) -> dict:
    """Per arm: items read, carried forward, generated (and skipped as committed), pool items and
    rows, dropped rows and quarantined items."""
    def by_arm(df, distinct: bool = False) -> dict:
        df = df.select("arm", "content_id").distinct() if distinct else df
        return {r[0]: int(r[1]) for r in df.groupBy("arm").count().collect()}

    read, kept = by_arm(keyed), by_arm(carried)
    pool_items, pool_rows = by_arm(written["pool"], True), by_arm(written["pool"])
    dropped, quarantined = by_arm(written["dropped"]), by_arm(written["quarantine"])
    return {arm: {"read": read.get(arm, 0), "carried_forward": kept.get(arm, 0),
                  "generated": st["generated"], "skipped_committed": st["skipped"],
                  "pool_items": pool_items.get(arm, 0), "pool_rows": pool_rows.get(arm, 0),
                  "dropped_rows": dropped.get(arm, 0), "quarantined": quarantined.get(arm, 0)}
            for arm, st in stages.items()}


def contract_quarantine(rejected: DataFrame, arms: Arms, run_id: str) -> DataFrame:
    """The rows the input contract set aside, as this version's quarantine rows (in every arm)."""
    rows = rejected.select("content_id", "content_hash", "category", "reason", "detail")
    if arms.armed:
        rows = rows.crossJoin(F.broadcast(arms.frame(rejected.sparkSession)))
    else:
        rows = rows.withColumns({k: F.lit(v) for k, v in arms.versions.items()})
    schema = dict(tables(arms.armed))["quarantine"]
    return rows.withColumns({"run_id": F.lit(run_id), "generated_at": F.current_timestamp()}).select(*schema.names)


def make_parser():
    return content_job_parser(__doc__)


def main(argv: list[str] | None = None) -> int:
    return run_content_job(argv, __doc__, "cmaq-nightly", build_pool,
                           ("run_id", "status", "exit_code", "counts", "gates"))


if __name__ == "__main__":
    sys.exit(main())
