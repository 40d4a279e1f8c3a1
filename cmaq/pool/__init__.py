"""Serving the pool: the key-value sinks (``sinks``), the online reader (``reader``), verified loads and
size estimates (``loader``), the single-writer lease (``lease``), the version layout on disk
(``versions``) and rollback (``rollback``). Below: what every writer of the pool shares."""
from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Write then rename: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_record(root: Path, op_id: str, record: dict) -> None:
    """Every job and operator action leaves ``runs/<op_id>.json``, published or not."""
    (root / "runs").mkdir(parents=True, exist_ok=True)
    atomic_write(root / "runs" / f"{op_id}.json", json.dumps(record, indent=2, default=str))


def new_op_id(tag: str = "") -> str:
    """A run or operation id: sortable by time, unique across concurrent attempts. The stamp has
    milliseconds: a version's deltas are ordered by id, and two writers (a stream batch and a purge)
    can publish within one second. (An id of the older, seconds-only form sorts before every id of
    its second in the new form.)"""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")[:-3]
    return f"{stamp}-{tag + '-' if tag else ''}{uuid.uuid4().hex[:6]}"
