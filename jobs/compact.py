"""Delta compaction: a version's deltas folded into one, atomically, so reading the version (the SQL
views, purge, nearline, the next nightly's carry-forward) does not slow down as a day's refreshes
accumulate.

    deltas/d1 … dn  ─► the rows of each item from the newest delta naming it (one read per table)
        ─► deltas/.<dn>-c<n>.tmp ─► renamed to deltas/<dn>-c<n>, its manifest (listing d1 … dn
           under ``compacts``) written last ─► d1 … dn removed

The manifest is the commit point: from the moment it exists, :func:`cmaq.pool.versions.committed_deltas`
reads the compacted delta in place of d1 … dn, so a crash before it leaves the old deltas in force and
a crash after it only leaves directories to remove (the next compaction removes them). The id
``<dn>-c<n>`` sorts right after dn and before any later delta, so the newest-delta-wins rule
reads the same rows. The cache is not touched: it already holds each item's newest value. The caller
holds the pool's writer lease (nearline and purge compact at the end of their publish; ``cmaq pool
compact`` takes it itself).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from cmaq.config import CmaqConfig, PoolConfig
from cmaq.pool import atomic_write, new_op_id, write_record
from cmaq.pool.lease import writer_lease
from cmaq.pool.versions import (DELTA_MANIFEST, committed_deltas, covered_by, covered_deltas, current_version,
                                 version_arms)
from jobs.catalog import register_current
from jobs.pool_tables import latest_delta_rows, write_tables

log = logging.getLogger(__name__)
COMPACTED = "-c"  # <newest id>-c<count>


def due(vdir: Path, pool: PoolConfig, now: float | None = None) -> bool:
    """Whether the version's deltas should be compacted now: ``pool.compact_every`` of them, or the
    oldest written ``pool.compact_every_min`` minutes ago or more (0 turns a rule off)."""
    deltas = committed_deltas(vdir)
    if len(deltas) < 2:
        return False
    if pool.compact_every and len(deltas) >= pool.compact_every:
        return True
    oldest = min(d.stat().st_mtime for d in deltas)
    return bool(pool.compact_every_min) and (now or time.time()) - oldest >= 60 * pool.compact_every_min


def compact_deltas(spark, vdir: Path) -> dict:
    """Fold every committed delta of the version at ``vdir`` into one; what was done, for the record."""
    deltas = committed_deltas(vdir)
    if len(deltas) < 2:
        return {"compacted": 0}
    t0 = time.perf_counter()
    remove_covered(vdir)  # what a crash after an earlier compaction's commit left behind
    # right after the newest delta in id order, before any later one: the newest-delta-wins rule holds
    name = f"{deltas[-1].name}{COMPACTED}{len(deltas)}"
    # what earlier compactions replaced too: a stream's replayed batch looks its delta id up here
    covered = [d.name for d in deltas] + sorted(covered_by(deltas))
    tmp = vdir / "deltas" / f".{name}.tmp"
    sc = spark.sparkContext
    group = f"cmaq-compact-{name}"
    sc.setJobGroup(group, f"compact {len(deltas)} deltas of {vdir.name}")
    try:
        write_tables(latest_delta_rows(spark, deltas, bool(version_arms(vdir))), tmp, partitioned=False)
        _settle(sc, group)
    finally:
        for key in ("spark.jobGroup.id", "spark.job.description"):
            sc.setLocalProperty(key, None)
    target = vdir / "deltas" / name
    shutil.rmtree(target, ignore_errors=True)  # renamed in by a run that died before its manifest
    tmp.rename(target)
    atomic_write(target / DELTA_MANIFEST, json.dumps({
        "op": "compact", "op_id": name, "compacts": covered,
        "published_at": datetime.now(timezone.utc).isoformat()}, indent=2))
    for d in deltas:
        shutil.rmtree(d, ignore_errors=True)
    seconds = round(time.perf_counter() - t0, 2)
    log.info("compacted %d deltas of %s into %s in %.1f s", len(deltas), vdir.name, name, seconds)
    return {"compacted": len(deltas), "into": name, "seconds": seconds}


def _settle(sc, group: str, timeout_s: float = 60.0) -> None:
    """Wait until no job of ``group`` runs. A write can return while a stage that adaptive query
    execution no longer needs (the other side of a join it found empty) still reads the deltas; removing
    them under it fails that orphaned job with FILE_NOT_EXIST errors in the log."""
    tracker = sc.statusTracker()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        infos = (tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(group))
        if not any(info is not None and info.status == "RUNNING" for info in infos):
            return
        time.sleep(0.2)
    log.warning("compaction %s: a job still runs after %.0f s; removing the compacted deltas anyway", group,
                timeout_s)


def remove_covered(vdir: Path) -> list[str]:
    """Delta directories a committed compaction covers but a crash left behind (of any earlier
    compaction whose manifest is still on disk)."""
    removed = covered_deltas(vdir)
    for d in removed:
        shutil.rmtree(d, ignore_errors=True)
    return [d.name for d in removed]


def compact_current(cfg: CmaqConfig, spark) -> dict:
    """``cmaq pool compact``: the current version's deltas folded into one under the writer lease, the
    catalog's views re-created over the result; recorded under ``runs/``."""
    root = Path(cfg.pool.root)
    version = current_version(root)
    if version is None:
        raise FileNotFoundError(f"{root}: nothing published yet")
    op_id = new_op_id("compact")
    with writer_lease(cfg.pool, f"compact {op_id}"):
        record = {"op": "compact", "op_id": op_id, "version": version,
                  **compact_deltas(spark, root / "versions" / version)}
        record["catalog"] = register_current(spark, cfg.pool) if record["compacted"] else {"registered": False}
    write_record(root, op_id, record)
    return record
