"""The pool's single-writer lease: one writer (nightly, nearline, purge or rollback) at a time, held
in the cache; a crashed writer's lease expires after its TTL."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from cmaq.config import PoolConfig
from cmaq.pool.sinks import LeaseStore, open_sink

class LeaseHeld(RuntimeError):
    """Another writer (nightly, nearline, purge or rollback) holds the pool's lease."""


class Lease:
    """``with Lease(sink, "writer", ttl_s=3600): ...`` — one writer at a time; a crashed writer's
    lease expires after ``ttl_s``. A second writer fails fast with a message naming the holder."""

    def __init__(self, sink: LeaseStore, owner: str, ttl_s: float = 3600.0, name: str = "writer"):
        self.sink, self.owner, self.ttl_s, self.name = sink, owner, ttl_s, name

    def __enter__(self) -> "Lease":
        holder = self.sink.acquire(self.name, self.owner, self.ttl_s)
        if holder is not None:
            raise LeaseHeld(f"the pool is being written by {holder}; try again when it finishes "
                            f"(a crashed writer's lease expires after its TTL)")
        return self

    def __exit__(self, *exc) -> None:
        self.sink.release(self.name, self.owner)



def writer_lease(pool_cfg: PoolConfig, owner: str) -> AbstractContextManager:
    """The pool's single-writer lease for ``owner``, held in the configured cache (a no-op context
    when the cache is disabled: then the Parquet pointer is the only shared state)."""
    url = pool_cfg.kv()
    if not url:
        return nullcontext()
    return Lease(open_sink(url, pool_cfg.kv_prefix), owner, pool_cfg.lease_ttl_s)

