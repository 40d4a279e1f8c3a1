"""Rollback: serve an earlier version again, in Parquet and the cache together, under the writer lease."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from cmaq.config import CmaqConfig
from cmaq.pool import atomic_write, new_op_id, write_record
from cmaq.pool.lease import writer_lease
from cmaq.pool.sinks import open_sink
from cmaq.pool.versions import current_version, read_manifest


def rollback(cfg: CmaqConfig, to: str | None = None, after_switch: Callable[[], dict] | None = None) -> dict:
    """Move the Parquet `current` pointer and the cache's pointer back together: to ``to``, or to
    the version the current one replaced. The target must still exist in both stores.
    ``after_switch()`` runs under the same lease once both pointers moved (the catalog's views are
    switched there); what it returns is recorded as ``catalog``."""
    root = Path(cfg.pool.root)
    current = current_version(root)
    if current is None:
        raise FileNotFoundError(f"{root}: nothing published yet, nothing to roll back")
    target = to or read_manifest(root, current).get("previous_version")
    if not target:
        raise ValueError(f"version {current} has no previous version; name one with --to")
    if target == current:
        raise ValueError(f"{target} is already the current version")
    if not (root / "versions" / target / "manifest.json").exists():
        raise FileNotFoundError(f"version {target} is not on disk any more (pool.keep_versions)")
    op_id = new_op_id("rb")
    record = {"op": "rollback", "op_id": op_id, "from": current, "to": target}
    with writer_lease(cfg.pool, f"rollback {op_id}"):
        kv_url = cfg.pool.kv()
        if kv_url:
            sink = open_sink(kv_url, cfg.pool.kv_prefix)
            if target not in sink.versions():
                raise FileNotFoundError(f"version {target} is not in the cache any more (pool.kv_keep)")
            sink.set_pointer(target)
        atomic_write(root / "current", target + "\n")
        if after_switch is not None:
            record["catalog"] = after_switch()
    write_record(root, op_id, record)
    return record
