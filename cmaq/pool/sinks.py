"""Key-value stores for the served pool, chosen by URL: what a load writes and a reader reads.

    redis://[:password@]host:port/db   rediss://...   production: pipelined, non-transactional bulk writes
    sqlite:///path/to/pool.db                           the embedded default, same semantics

Layout: every published version under versioned keys ``{prefix}:{version}:{content_id}``; the pointer
``{prefix}:current`` names the version readers use. A version that serves A/B arms keys each value
``{prefix}:{version}:{arm}:{content_id}`` (:func:`item_id`; an arm name holds no ``:``) and holds its
traffic split under ``{prefix}:{version}:_arms`` (:func:`encode_arms`). Values are JSON with a schema version and the
ordered queries with their scores (:func:`encode_value`). Each sink plays four roles, one protocol
each, so a caller states which part it needs: reading (:class:`ReadableStore`), loading and retiring
versions (:class:`VersionStore`), holding the writer's lease (:class:`LeaseStore`) and measuring
itself (:class:`SizedStore`).

Only the standard library is imported here (``redis`` when a Redis sink is opened), so the online
reader runs with nothing but ``redis`` installed.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Iterable, Iterator, Protocol
from urllib.parse import urlsplit, urlunsplit

VALUE_SCHEMA_VERSION = 1
ARMS_ITEM = "_arms"  # no arm name starts with "_", so no served item has this id


def item_id(content_id: str, arm: str | None = None) -> str:
    """The cache's id of one served item: the content id, or ``arm:content_id`` in a pool with arms."""
    return f"{arm}:{content_id}" if arm else content_id


def encode_arms(weights: dict[str, float], salt: str) -> bytes:
    """A version's traffic split, published with it: the online service assigns units with
    :func:`cmaq.pool.arms.assign_arm` from these weights and this salt."""
    return json.dumps({"schema": VALUE_SCHEMA_VERSION, "weights": weights, "salt": salt},
                      sort_keys=True).encode("utf-8")


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and manifests."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def encode_value(content_id: str, version: str, queries: list[dict]) -> bytes:
    return json.dumps({"schema": VALUE_SCHEMA_VERSION, "content_id": content_id, "version": version,
                       "queries": queries}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")



class ReadableStore(Protocol):
    """What the online reader needs."""

    url: str

    def pointer(self) -> str | None: ...
    def get(self, version: str, content_id: str) -> bytes | None: ...


class VersionStore(ReadableStore, Protocol):
    """What a bulk load, a delta, a rollback and a retirement need."""

    def write(self, version: str, items: Iterable[tuple[str, bytes]]) -> int: ...
    def count(self, version: str) -> int: ...
    def set_pointer(self, version: str) -> None: ...
    def versions(self) -> list[str]: ...
    def retire_version(self, version: str, grace_s: float) -> None: ...
    def delete_items(self, version: str, content_ids: Iterable[str]) -> None: ...


class LeaseStore(Protocol):
    """Where the single-writer lease is held."""

    def acquire(self, name: str, owner: str, ttl_s: float) -> str | None: ...
    def release(self, name: str, owner: str) -> None: ...


class SizedStore(ReadableStore, Protocol):
    """What `cmaq pool kv-size` measures."""

    size_method: str  # what item_sizes measures, for the kv-size report

    def count(self, version: str) -> int: ...
    def item_sizes(self, version: str, n: int) -> list[int]: ...


class KVSink(VersionStore, LeaseStore, SizedStore, Protocol):
    """Every role: what :func:`open_sink` returns."""


# --------------------------------------------------------------------------- SQLite


class SQLiteSink:
    """One table of (version, content_id) -> value and one of metadata (the pointer, versions)."""

    size_method = "sqlite stored bytes (lower bound)"

    def __init__(self, url: str, prefix: str = "cmaq", batch: int = 5000):
        self.url, self.prefix, self.batch = url, prefix, batch
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
        if not path:
            raise ValueError(f"{url}: expected sqlite:///path/to/file.db")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._conn() as con:
            con.execute("PRAGMA journal_mode=WAL")  # readers are not blocked by the writer
            con.execute("CREATE TABLE IF NOT EXISTS kv (prefix TEXT, version TEXT, content_id TEXT, value BLOB,"
                        " PRIMARY KEY (prefix, version, content_id))")
            con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            con.execute("CREATE TABLE IF NOT EXISTS versions (prefix TEXT, version TEXT, created REAL,"
                        " PRIMARY KEY (prefix, version))")
            con.execute("CREATE TABLE IF NOT EXISTS retired (prefix TEXT, version TEXT, expires REAL,"
                        " PRIMARY KEY (prefix, version))")

    def _conn(self) -> closing[sqlite3.Connection]:
        """A connection closed on leaving the ``with`` block (sqlite3's own context manager only
        commits), in autocommit mode: transactions are explicit BEGIN ... COMMIT."""
        return closing(sqlite3.connect(self.path, timeout=30, isolation_level=None))

    def write(self, version: str, items: Iterable[tuple[str, bytes]]) -> int:
        n = 0
        self._sweep()
        with self._conn() as con:
            con.execute("INSERT OR IGNORE INTO versions VALUES (?, ?, ?)", (self.prefix, version, time.time()))
            buf: list[tuple] = []
            for content_id, value in items:
                buf.append((self.prefix, version, content_id, value))
                if len(buf) >= self.batch:
                    n += self._flush(con, buf)
            n += self._flush(con, buf)
        return n

    @staticmethod
    def _flush(con: sqlite3.Connection, buf: list[tuple]) -> int:
        if not buf:
            return 0
        con.execute("BEGIN")
        con.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)", buf)
        con.execute("COMMIT")
        n = len(buf)
        buf.clear()
        return n

    def count(self, version: str) -> int:
        with self._conn() as con:
            return con.execute("SELECT COUNT(*) FROM kv WHERE prefix = ? AND version = ?",
                               (self.prefix, version)).fetchone()[0]

    def get(self, version: str, content_id: str) -> bytes | None:
        with self._conn() as con:
            row = con.execute("SELECT value FROM kv WHERE prefix = ? AND version = ? AND content_id = ?",
                              (self.prefix, version, content_id)).fetchone()
        return row[0] if row else None

    def pointer(self) -> str | None:
        with self._conn() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (f"{self.prefix}:current",)).fetchone()
        return row[0] if row else None

    def set_pointer(self, version: str) -> None:
        with self._conn() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"{self.prefix}:current", version))

    def versions(self) -> list[str]:
        with self._conn() as con:
            rows = con.execute("SELECT version FROM versions WHERE prefix = ? ORDER BY created", (self.prefix,)).fetchall()
        return [r[0] for r in rows]

    def delete_items(self, version: str, content_ids: Iterable[str]) -> None:
        with self._conn() as con:
            con.execute("BEGIN")
            con.executemany("DELETE FROM kv WHERE prefix = ? AND version = ? AND content_id = ?",
                            [(self.prefix, version, c) for c in content_ids])
            con.execute("COMMIT")

    def acquire(self, name: str, owner: str, ttl_s: float) -> str | None:
        """Take the lease row if it is free or expired; else return its holder."""
        with self._conn() as con:
            con.execute("BEGIN IMMEDIATE")  # one writer decides at a time
            row = con.execute("SELECT value FROM meta WHERE key = ?", (f"{self.prefix}:lease:{name}",)).fetchone()
            now = time.time()
            if row:
                holder, expires = json.loads(row[0])
                if expires > now and holder != owner:
                    con.execute("COMMIT")
                    return holder
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (f"{self.prefix}:lease:{name}", json.dumps([owner, now + ttl_s])))
            con.execute("COMMIT")
            return None

    def release(self, name: str, owner: str) -> None:
        with self._conn() as con:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT value FROM meta WHERE key = ?", (f"{self.prefix}:lease:{name}",)).fetchone()
            if row and json.loads(row[0])[0] == owner:
                con.execute("DELETE FROM meta WHERE key = ?", (f"{self.prefix}:lease:{name}",))
            con.execute("COMMIT")

    def retire_version(self, version: str, grace_s: float) -> None:
        """Take the version out of the list at once; its rows go at the first write after the grace."""
        with self._conn() as con:
            con.execute("BEGIN")
            con.execute("DELETE FROM versions WHERE prefix = ? AND version = ?", (self.prefix, version))
            con.execute("INSERT OR REPLACE INTO retired VALUES (?, ?, ?)", (self.prefix, version, time.time() + grace_s))
            con.execute("COMMIT")
        if grace_s <= 0:
            self._sweep()

    def _sweep(self) -> None:
        with self._conn() as con:
            expired = [r[0] for r in con.execute("SELECT version FROM retired WHERE prefix = ? AND expires <= ?",
                                                 (self.prefix, time.time())).fetchall()]
            for version in expired:
                con.execute("BEGIN")
                con.execute("DELETE FROM kv WHERE prefix = ? AND version = ?", (self.prefix, version))
                con.execute("DELETE FROM retired WHERE prefix = ? AND version = ?", (self.prefix, version))
                con.execute("COMMIT")

    def item_sizes(self, version: str, n: int) -> list[int]:
        """Stored bytes (key + value) of up to ``n`` items: SQLite adds a few bytes per row and the
        primary-key index on top, so treat it as a lower bound."""
        with self._conn() as con:
            rows = con.execute("SELECT length(prefix) + length(version) + length(content_id) + length(value) FROM kv"
                               " WHERE prefix = ? AND version = ? LIMIT ?", (self.prefix, version, n)).fetchall()
        return [int(r[0]) for r in rows]


# --------------------------------------------------------------------------- Redis


class RedisSink:
    """String keys per item, a sorted set of versions, and the pointer key; bulk writes pipelined
    without MULTI (a load is verified as a whole before the pointer moves, so it needs no transaction)."""

    size_method = "redis MEMORY USAGE"

    def __init__(self, url: str, prefix: str = "cmaq", batch: int = 500, flush_every: int = 10,
                 timeout: float = 5.0):
        import redis  # the serve extra: only a Redis sink needs it (SQLite is the standard library's)

        self.url, self.prefix, self.batch, self.flush_every = url, prefix, batch, flush_every
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def _key(self, version: str, content_id: str) -> str:
        return f"{self.prefix}:{version}:{content_id}"

    def write(self, version: str, items: Iterable[tuple[str, bytes]]) -> int:
        # MSET of `batch` keys per command, `flush_every` commands per round trip: the client spends
        # its time packing one command instead of a thousand (about 4x the items/s of pipelined SETs).
        self.client.zadd(f"{self.prefix}:versions", {version: time.time()})
        pipe = self.client.pipeline(transaction=False)
        n = queued = 0
        chunk: dict[str, bytes] = {}
        for content_id, value in items:
            chunk[self._key(version, content_id)] = value
            n += 1
            if len(chunk) >= self.batch:
                pipe.mset(chunk)
                chunk, queued = {}, queued + 1
                if queued >= self.flush_every:
                    pipe.execute()
                    queued = 0
        if chunk:
            pipe.mset(chunk)
        pipe.execute()
        return n

    def _scan(self, version: str) -> Iterator[bytes]:
        yield from self.client.scan_iter(match=f"{self.prefix}:{version}:*", count=1000)

    def count(self, version: str) -> int:
        return sum(1 for _ in self._scan(version))

    def get(self, version: str, content_id: str) -> bytes | None:
        return self.client.get(self._key(version, content_id))

    def pointer(self) -> str | None:
        v = self.client.get(f"{self.prefix}:current")
        return v.decode() if v is not None else None

    def set_pointer(self, version: str) -> None:
        self.client.set(f"{self.prefix}:current", version)  # a single SET: atomic for every reader

    def versions(self) -> list[str]:
        return [v.decode() for v in self.client.zrange(f"{self.prefix}:versions", 0, -1)]

    def delete_items(self, version: str, content_ids: Iterable[str]) -> None:
        keys = [self._key(version, c) for c in content_ids]
        for i in range(0, len(keys), self.batch):
            if keys[i:i + self.batch]:
                self.client.unlink(*keys[i:i + self.batch])

    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
    _RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
              "else return 0 end")

    def acquire(self, name: str, owner: str, ttl_s: float) -> str | None:
        key = f"{self.prefix}:lease:{name}"
        if self.client.set(key, owner, nx=True, px=int(ttl_s * 1000)):
            return None
        # Held by this same owner (a stream restarted after a kill names itself as before): renewed.
        if self.client.eval(self._RENEW, 1, key, owner, int(ttl_s * 1000)):
            return None
        holder = self.client.get(key)
        return holder.decode() if holder is not None else "unknown (just released; retry)"

    def release(self, name: str, owner: str) -> None:
        # Delete only our own lease: compare and delete in one server-side step.
        self.client.eval(self._RELEASE, 1, f"{self.prefix}:lease:{name}", owner)

    def retire_version(self, version: str, grace_s: float) -> None:
        """Out of the list at once; its keys expire after the grace (UNLINK at once when it is 0:
        UNLINK frees the memory in the background instead of blocking the server)."""
        self.client.zrem(f"{self.prefix}:versions", version)
        pipe = self.client.pipeline(transaction=False)
        pending = 0
        for key in self._scan(version):
            if grace_s > 0:
                pipe.expire(key, max(1, int(grace_s)))
            else:
                pipe.unlink(key)
            pending += 1
            if pending >= self.batch:
                pipe.execute()
                pending = 0
        if pending:
            pipe.execute()

    def item_sizes(self, version: str, n: int) -> list[int]:
        """MEMORY USAGE of up to ``n`` of the version's keys: what the server really spends per item,
        key, value and allocator overhead included."""
        keys = [k for _, k in zip(range(n), self._scan(version))]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return [int(v) for v in pipe.execute() if v is not None]


def open_sink(url: str, prefix: str = "cmaq") -> KVSink:
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        return RedisSink(url, prefix)
    if scheme == "sqlite":
        return SQLiteSink(url, prefix)
    raise ValueError(f"{redact_url(url)}: unsupported KV URL (use redis://, rediss:// or sqlite:///path)")

