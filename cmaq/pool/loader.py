"""Loading a complete version into the cache (verified before the pointer moves) and estimating the
cache's size."""
from __future__ import annotations

import statistics
import time
from typing import Iterable

from cmaq.pool.sinks import SizedStore, VersionStore, redact_url

def load_version(sink: VersionStore, version: str, items: Iterable[tuple[str, bytes]], expected: int,
                 sample: list[tuple[str, bytes]], keep: int = 2, grace_s: float = 0.0) -> dict:
    """Load a complete version, verify it (count and a sample read back), then move the pointer and
    retire versions beyond the newest ``keep`` (readable for ``grace_s`` more seconds). Raises before
    touching the pointer if verification fails. ``sample`` (item id, value) pairs are read back after
    the write, so ``items`` may fill it as it streams."""
    t0 = time.perf_counter()
    written = sink.write(version, items)
    stored = sink.count(version)
    if stored != expected or written != expected:
        raise RuntimeError(f"KV load of {version} incomplete: expected {expected}, wrote {written}, found {stored}")
    for content_id, value in sample:
        if sink.get(version, content_id) != value:
            raise RuntimeError(f"KV load of {version}: {content_id} reads back different")
    previous = sink.pointer()
    sink.set_pointer(version)
    removed = []
    for old in sink.versions()[:-keep]:
        if old not in (version, previous):
            sink.retire_version(old, grace_s)
            removed.append(old)
    return {"version": version, "items": stored, "previous": previous, "retired": removed, "grace_s": grace_s,
            "seconds": round(time.perf_counter() - t0, 2), "url": redact_url(sink.url)}



def estimate_size(sink: SizedStore, sample: int = 200, version: str | None = None) -> dict:
    """Memory per item and for two versions (the current one and the next, during a load), from a
    sample of the version's items."""
    version = version or sink.pointer()
    if version is None:
        raise LookupError("the cache has no current version yet")
    items = sink.count(version)
    sizes = sorted(sink.item_sizes(version, sample))
    if not sizes:
        raise LookupError(f"version {version} has no items in the cache")
    mean = statistics.fmean(sizes)
    return {"version": version, "items": items, "sampled": len(sizes), "method": sink.size_method,
            "bytes_per_item_mean": round(mean, 1), "bytes_per_item_p95": sizes[int(0.95 * (len(sizes) - 1))],
            "version_bytes": int(mean * items), "two_versions_bytes": int(2 * mean * items),
            "url": redact_url(sink.url)}
