"""The pool's single-writer lease: one writer (nightly, nearline, stream batch, purge or rollback) at a
time, held in the cache — or, with the cache disabled, in a lock file under the pool root. A writer
that finds the lease held waits up to ``pool.lease_wait_s`` for it; a crashed writer's lease expires
after its TTL."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import AbstractContextManager
from pathlib import Path

from cmaq.config import PoolConfig
from cmaq.pool.sinks import LeaseStore, open_sink

log = logging.getLogger(__name__)
LEASE_FILE = "_writer.lease"


class LeaseHeld(RuntimeError):
    """Another writer (nightly, nearline, purge or rollback) holds the pool's lease."""


class Lease:
    """``with Lease(store, "writer", ttl_s=3600, wait_s=0): ...`` — one writer at a time. A second
    writer polls for up to ``wait_s`` seconds, then fails with a message naming the holder; a crashed
    writer's lease expires after ``ttl_s``."""

    def __init__(self, store: LeaseStore, owner: str, ttl_s: float = 3600.0, name: str = "writer",
                 wait_s: float = 0.0, poll_s: float = 1.0):
        self.store, self.owner, self.ttl_s, self.name = store, owner, ttl_s, name
        self.wait_s, self.poll_s = wait_s, poll_s

    def __enter__(self) -> "Lease":
        deadline = time.monotonic() + self.wait_s
        holder = self.store.acquire(self.name, self.owner, self.ttl_s)
        if holder is not None and self.wait_s > 0:
            log.info("the pool's lease is held by %s; %s waits up to %.0f s for it", holder, self.owner, self.wait_s)
        while holder is not None and time.monotonic() < deadline:
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))
            holder = self.store.acquire(self.name, self.owner, self.ttl_s)
        if holder is not None:
            waited = f" (waited {self.wait_s:g} s)" if self.wait_s > 0 else ""
            raise LeaseHeld(f"the pool is being written by {holder}{waited}; try again when it finishes "
                            f"(a crashed writer's lease expires after its TTL)")
        return self

    def __exit__(self, *exc) -> None:
        self.store.release(self.name, self.owner)


class FileLeaseStore:
    """Leases as files under a directory (the pool root, shared by every writer): ``_writer.lease``
    holds the holder, its expiry, host and process id. Check-and-set runs under ``flock`` on a
    companion lock file, so two writers never both take a free lease. A holder on this host whose
    process is gone (killed) frees the lease at once; elsewhere its TTL does."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root / (LEASE_FILE if name == "writer" else f"_{name}.lease")

    def _locked(self, name: str):
        self.root.mkdir(parents=True, exist_ok=True)
        return _Flock(self._path(name).with_suffix(".lock"))

    def acquire(self, name: str, owner: str, ttl_s: float) -> str | None:
        path = self._path(name)
        with self._locked(name):
            held = _read_holder(path)
            if held is not None and held["owner"] != owner and not _stale(held):
                return held["owner"]
            record = {"owner": owner, "expires": time.time() + ttl_s, "host": socket.gethostname(), "pid": os.getpid()}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
            return None

    def release(self, name: str, owner: str) -> None:
        path = self._path(name)
        with self._locked(name):
            held = _read_holder(path)
            if held is not None and held["owner"] == owner:
                path.unlink(missing_ok=True)


class _Flock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_holder(path: Path) -> dict | None:
    """The lease file's holder; an unreadable file reads as an expired lease rather than blocking every
    writer forever."""
    try:
        held = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        held = None
    return held if isinstance(held, dict) and "owner" in held else {"owner": "unreadable lease file", "expires": 0.0}


def _stale(held: dict) -> bool:
    if float(held.get("expires", 0)) <= time.time():
        return True
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return True  # its writer was killed on this host
        except PermissionError:
            return False
    return False


def lease_store(pool_cfg: PoolConfig) -> LeaseStore:
    """Where the pool's leases live: the configured cache, or a lock file under the pool root when the
    cache is disabled (``kv_url = none``), so writers exclude each other either way."""
    url = pool_cfg.kv()
    return open_sink(url, pool_cfg.kv_prefix) if url else FileLeaseStore(pool_cfg.root)


def writer_lease(pool_cfg: PoolConfig, owner: str) -> AbstractContextManager:
    """The pool's single-writer lease for ``owner`` (:func:`lease_store`). Waits up to
    ``pool.lease_wait_s`` for a held lease."""
    return Lease(lease_store(pool_cfg), owner, pool_cfg.lease_ttl_s, wait_s=pool_cfg.lease_wait_s)
