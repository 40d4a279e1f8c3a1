"""The stream's drop directory: what a producer writes, how each file is checked before the stream
reads it, and where a bad one goes. Plain files and pyarrow; no Spark.

The drop convention (enforced here)::

    <stream>/drop/         a producer writes ``_name.tmp`` or ``.name`` (never read), then renames it
                           to ``name.parquet``, ``name.jsonl`` or ``name.json`` (JSON lines)
    <stream>/accepted/     each good file as Parquet of ACCEPTED_SCHEMA: what the Spark file source reads
    <stream>/quarantine/   each bad file as it came, beside ``<file>.reason.json`` (its name and why)

A file is checked whole before the stream sees it: a Parquet footer that cannot be read, a column of
the wrong type, a required column missing (``content_id``, ``title``, ``body``; JSON lines may leave
keys out, a missing key is null, so a takedown line is just ``{"content_id": ..., "deleted": true}``),
or a line that is not a JSON object quarantines the file and the stream keeps running. What the
contract checks per row (an id, a readable ``updated_at``, duplicates) is left to the batch
(:func:`jobs.contract.check_rows`), which sets such rows aside with a reason.

A good file is rewritten as Parquet in one schema, every field a string except ``deleted``, with the
file's name and its arrival (the rename into ``drop/``: the file's ctime) on every row. Its accepted
name is derived from the arrival, the content's hash and the drop name, so a crash between writing it
and removing the dropped file makes the same accepted file again, not a second one, and a drop name a
producer reuses makes a new one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmaq.pool import atomic_write
from jobs.contract import COLUMNS, REQUIRED

log = logging.getLogger(__name__)

DROP, ACCEPTED, QUARANTINE = "drop", "accepted", "quarantine"
FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
FILE_COLUMN, ARRIVED_COLUMN = "_file", "_arrived_ms"
ACCEPTED_SCHEMA = pa.schema([*((c, pa.bool_() if c == "deleted" else pa.string()) for c in COLUMNS),
                             (FILE_COLUMN, pa.string()), (ARRIVED_COLUMN, pa.int64())])
_EXPECTED = {"content_id": "string or integer", "updated_at": "timestamp, date, ISO-8601 string or epoch "
             "milliseconds (integer)", "deleted": "boolean"}


class BadFile(ValueError):
    """A dropped file the stream will not read; the message is the quarantine reason (one line)."""


def hidden(name: str) -> bool:
    """A name the stream never reads: a producer's file still being written."""
    return name.startswith(("_", "."))


# --------------------------------------------------------------------------- reading one dropped file


def read_dropped(path: Path) -> pa.Table:
    """The file's rows in :data:`ACCEPTED_SCHEMA` (without the file columns); raises :class:`BadFile`."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadFile(f"unknown format {path.suffix or '(no extension)'}: drop .parquet, .jsonl or .json files")
    return _read_parquet(path) if fmt == "parquet" else _read_json_lines(path)


def _read_parquet(path: Path) -> pa.Table:
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a broken footer
        raise BadFile(f"not a readable Parquet file (footer): {_first_line(exc)}") from None
    present = set(parquet.schema_arrow.names)
    missing = [c for c in REQUIRED if c not in present]
    if missing:
        raise BadFile(f"required column {missing[0]!r} is missing (have: {', '.join(sorted(present)) or 'none'})")
    for name in COLUMNS:  # types first: a wrong schema is refused before any data is read
        if name in present:
            _check_type(name, parquet.schema_arrow.field(name).type)
    try:
        table = parquet.read(columns=[c for c in COLUMNS if c in present])
    except Exception as exc:  # noqa: BLE001 - a footer that reads over truncated or corrupt pages
        raise BadFile(f"unreadable Parquet data: {_first_line(exc)}") from None
    return pa.table({c: _as_accepted(c, table.column(c)) if c in present else pa.nulls(len(table), _type(c))
                     for c in COLUMNS}, schema=_row_schema())


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


_ACCEPTS = {  # the contract's accepted types (jobs.contract.conform), as Arrow types; null: all-null column
    "content_id": lambda t: _is_text(t) or pa.types.is_integer(t),
    "updated_at": lambda t: _is_text(t) or pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t),
    "deleted": pa.types.is_boolean,
}


def _check_type(name: str, dtype: pa.DataType) -> None:
    if not (pa.types.is_null(dtype) or _ACCEPTS.get(name, _is_text)(dtype)):
        raise BadFile(f"column {name!r} has type {dtype}, expected {_EXPECTED.get(name, 'string')}")


def _as_accepted(name: str, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """One checked column in the accepted type: timestamps and epoch milliseconds become ISO-8601 UTC
    strings (Spark parses them back exactly), integer ids become strings."""
    dtype = col.type
    if name == "updated_at" and pa.types.is_integer(dtype):
        col = pc.cast(col, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        dtype = col.type
    if name == "updated_at" and pa.types.is_date(dtype):
        col = col.cast(pa.timestamp("s", tz="UTC"))
        dtype = col.type
    if name == "updated_at" and pa.types.is_timestamp(dtype):
        # A zone-less timestamp is read as UTC, as the contract reads it; %S carries the fraction.
        utc = col.cast(pa.timestamp("us", tz=dtype.tz or "UTC"))
        return pc.strftime(utc, format="%Y-%m-%dT%H:%M:%SZ", locale="C", ).cast(pa.string())
    return col.cast(_type(name))


def _read_json_lines(path: Path) -> pa.Table:
    columns: dict[str, list] = {c: [] for c in COLUMNS}
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadFile(f"line {n}: not valid JSON ({_first_line(exc)})") from None
            if not isinstance(row, dict):
                raise BadFile(f"line {n}: a JSON object per line is expected, got {type(row).__name__}")
            for name in COLUMNS:
                columns[name].append(_json_value(name, row.get(name), n))
    return pa.table({c: pa.array(v, _type(c)) for c, v in columns.items()}, schema=_row_schema())


def _json_value(name: str, value, line: int):
    if value is None:
        return None
    if name == "deleted":
        if isinstance(value, bool):
            return value
    elif isinstance(value, str):
        return value
    elif name in ("content_id", "updated_at") and isinstance(value, int) and not isinstance(value, bool):
        if name == "content_id":
            return str(value)
        return datetime.fromtimestamp(value / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    raise BadFile(f"line {line}: {name} is {type(value).__name__} {json.dumps(value)[:40]}, "
                  f"expected {_EXPECTED.get(name, 'string')}")


def _type(name: str) -> pa.DataType:
    return ACCEPTED_SCHEMA.field(name).type


def _row_schema() -> pa.Schema:
    return pa.schema([ACCEPTED_SCHEMA.field(c) for c in COLUMNS])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------- the intake


class Intake:
    """Moves every visible file of ``drop/`` to ``accepted/`` (as Parquet) or ``quarantine/`` (with
    its reason). :meth:`scan` does one pass; :meth:`start` runs passes every ``poll_s`` in a thread."""

    def __init__(self, stream_dir: Path, poll_s: float = 1.0):
        self.drop, self.accepted, self.quarantine = (stream_dir / d for d in (DROP, ACCEPTED, QUARANTINE))
        for d in (self.drop, self.accepted, self.quarantine):
            d.mkdir(parents=True, exist_ok=True)
        self.poll_s = poll_s
        self.counts = {"accepted": 0, "quarantined": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan(self) -> dict:
        """One pass over ``drop/``, oldest arrival first; what it did."""
        done = {"accepted": [], "quarantined": []}
        arrivals = {}
        for path in self.drop.iterdir():
            try:
                if path.is_file() and not hidden(path.name):
                    arrivals[path] = _arrival_ms(path)
            except FileNotFoundError:  # taken back by its producer between the listing and now
                continue
        for path, arrived in sorted(arrivals.items(), key=lambda kv: (kv[1], kv[0].name)):
            try:
                self._accept(path, arrived, read_dropped(path))
            except BadFile as exc:
                self._quarantine(path, arrived, str(exc))
                done["quarantined"].append(path.name)
                continue
            except FileNotFoundError:  # taken back by its producer while we read it
                continue
            done["accepted"].append(path.name)
        for k in done:
            self.counts[k] += len(done[k])
        return done

    def _accept(self, path: Path, arrived: int, table: pa.Table) -> None:
        n = len(table)
        digest = hashlib.sha1(path.read_bytes()).hexdigest()[:8]  # a reused drop name is another file
        table = table.append_column(FILE_COLUMN, pa.array([path.name] * n, pa.string())).append_column(
            ARRIVED_COLUMN, pa.array([arrived] * n, pa.int64()))
        name = f"{arrived:013d}-{digest}-{path.name}" + ("" if path.suffix.lower() == ".parquet" else ".parquet")
        tmp = self.accepted / f".{name}.tmp"  # hidden from the file source until renamed
        pq.write_table(table, tmp)
        os.replace(tmp, self.accepted / name)
        path.unlink(missing_ok=True)
        log.info("intake: %s accepted (%d rows) as %s", path.name, n, name)

    def _quarantine(self, path: Path, arrived: int, reason: str) -> None:
        name = f"{arrived:013d}-{path.name}"
        record = {"file": path.name, "reason": reason, "arrived_at": _iso(arrived),
                  "quarantined_at": datetime.now(timezone.utc).isoformat(), "moved_to": name}
        atomic_write(self.quarantine / f"{name}.reason.json", json.dumps(record, ensure_ascii=False))
        os.replace(path, self.quarantine / name)
        log.warning("intake: %s quarantined: %s", path.name, reason)

    def start(self) -> "Intake":
        self._thread = threading.Thread(target=self._run, name="stream-intake", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.scan()
            except Exception:  # noqa: BLE001 - one bad pass (a full disk) must not end the intake
                log.exception("intake: a pass over %s failed; retrying", self.drop)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _arrival_ms(path: Path) -> int:
    """When the file was renamed into ``drop/`` (a rename sets the ctime)."""
    return int(path.stat().st_ctime * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()
