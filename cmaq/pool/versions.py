"""A published pool version on disk: the pointer, the manifest, the tables and the nearline deltas.

A version directory holds the nightly's tables (``pool``, ``dropped``, ``quarantine``) and, under
``deltas/<delta_id>/``, the tables of each nearline refresh since. A delta replaces every row of the
items it names, so the version a reader sees is: base rows of items no delta names, plus each item's
rows from the newest delta that names it. Reading that with Spark is ``jobs.pool_tables.version_frames``;
everything here is plain file layout, read by the jobs and by operator actions alike.
"""
from __future__ import annotations

import json
from pathlib import Path

from cmaq.schema import DROPPED_SCHEMA, POOL_SCHEMA, QUARANTINE_SCHEMA, with_arm

TABLES = (("pool", POOL_SCHEMA), ("dropped", DROPPED_SCHEMA), ("quarantine", QUARANTINE_SCHEMA))
ARMED_TABLES = tuple((name, with_arm(schema)) for name, schema in TABLES)


def tables(armed: bool) -> tuple:
    """(name, schema) of a version's three tables: with the ``arm`` column when it serves arms."""
    return ARMED_TABLES if armed else TABLES


def version_arms(vdir: Path) -> dict:
    """The arms a published version serves (name -> weight, adapter, versions), {} for a pool without arms."""
    manifest = vdir / "manifest.json"
    return json.loads(manifest.read_text()).get("arms") or {} if manifest.exists() else {}
DELTA_MANIFEST = "manifest.json"  # written last: a delta without it is not part of the version


def current_version(root: str | Path) -> str | None:
    pointer = Path(root) / "current"
    return pointer.read_text().strip() if pointer.exists() else None


def read_manifest(root: str | Path, version: str) -> dict:
    return json.loads((Path(root) / "versions" / version / "manifest.json").read_text())


def committed_deltas(vdir: Path) -> list[Path]:
    """The version's published deltas, oldest first (delta ids sort by time). A compacted delta
    (:mod:`jobs.compact`) takes the place of the deltas its manifest lists under ``compacts``: those
    are left out from the moment its manifest exists, before they are removed."""
    published = _published_deltas(vdir)
    covered = covered_by(published)
    return [p for p in published if p.name not in covered]


def delta_ids(vdir: Path) -> set[str]:
    """Every delta id that is part of the version: published on its own or folded into a compaction
    (how a replayed stream batch finds that it was already published)."""
    published = _published_deltas(vdir)
    return {p.name for p in published} | covered_by(published)


def covered_deltas(vdir: Path) -> list[Path]:
    """Delta directories still on disk that a compaction's manifest lists: replaced, to be removed."""
    ddir = vdir / "deltas"
    return sorted(ddir / name for name in covered_by(_published_deltas(vdir)) if (ddir / name).exists())


def _published_deltas(vdir: Path) -> list[Path]:
    ddir = vdir / "deltas"
    if not ddir.exists():
        return []
    return sorted(p for p in ddir.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / DELTA_MANIFEST).exists())


def covered_by(published: list[Path]) -> set[str]:
    """The delta ids the compaction manifests among ``published`` list as replaced."""
    return {name for p in published for name in json.loads((p / DELTA_MANIFEST).read_text()).get("compacts", ())}
