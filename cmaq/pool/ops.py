"""Operator actions on a published pool that need no regeneration: rollback (purge and nearline
refresh follow). Each takes the single-writer lease and records a manifest under runs/."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from cmaq.config import CmaqConfig


def _write(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rollback(cfg: CmaqConfig, to: str | None = None) -> dict:
    """Move the Parquet `current` pointer and the cache's pointer back together: to ``to``, or to
    the version the current one replaced. The target must still exist in both stores."""
    from cmaq.pool.kv import Lease, open_sink

    root = Path(cfg.pool.root)
    pointer = root / "current"
    if not pointer.exists():
        raise FileNotFoundError(f"{root}: nothing published yet, nothing to roll back")
    current = pointer.read_text().strip()
    manifest = json.loads((root / "versions" / current / "manifest.json").read_text())
    target = to or manifest.get("previous_version")
    if not target:
        raise ValueError(f"version {current} has no previous version; name one with --to")
    if target == current:
        raise ValueError(f"{target} is already the current version")
    if not (root / "versions" / target / "manifest.json").exists():
        raise FileNotFoundError(f"version {target} is not on disk any more (pool.keep_versions)")
    op_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-rb-" + uuid.uuid4().hex[:6]
    record = {"op": "rollback", "op_id": op_id, "from": current, "to": target}
    kv_url = cfg.pool.kv()
    if kv_url:
        sink = open_sink(kv_url, cfg.pool.kv_prefix)
        with Lease(sink, f"rollback {op_id}", cfg.pool.lease_ttl_s):
            if target not in sink.versions():
                raise FileNotFoundError(f"version {target} is not in the cache any more (pool.kv_keep)")
            sink.set_pointer(target)
            _write(pointer, target + "\n")
    else:
        _write(pointer, target + "\n")
    (root / "runs").mkdir(exist_ok=True)
    _write(root / "runs" / f"{op_id}.json", json.dumps(record, indent=2))
    return record
