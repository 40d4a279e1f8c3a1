"""Write a world to disk: content, logs, annotations and the hidden answer key, chunk by chunk.

Layout under ``out``::

    content/part-NNNNN.parquet       CONTENT_SCHEMA        what the platform shows
    logs/part-NNNNN.parquet          LOG_SCHEMA            (content, query, month) impressions, clicks
    annotations/part-NNNNN.parquet   ANNOTATION_SCHEMA     noisy human expansion labels
    truth/grammar/part-NNNNN.parquet GRAMMAR_TRUTH_SCHEMA  answer key: kinds, true CTR and expansion
    truth/mistakes/part-NNNNN.parquet MISTAKE_TRUTH_SCHEMA answer key of the mistaken exposures
    world.json                       config, counts, file hashes, oracle code hash

Memory is bounded by one chunk (``world.chunk_items`` items): each chunk becomes one row group of
each part file, and a part file holds ``world.items_per_file`` items. Items are drawn from
per-item seeds; log and annotation draws from per-chunk seeds, so the same (seed, items,
chunk_items) always gives byte-identical files — there are no timestamps in them.

The logs hold a note's own grammar queries and, a share ``world.mistaken_share`` of its exposed
queries, what an earlier recommender showed by mistake (:mod:`cmaq.world.mistakes`); clicks follow
the oracle's true CTR of each query *for the note it was shown under*. Annotators judge both kinds
(``world.annotated_mistaken_share`` of their pairs are mistaken ones).
"""
from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cmaq.config import WorldConfig
from cmaq.schema import ANNOTATION_SCHEMA, CONTENT_SCHEMA, GRAMMAR_TRUTH_SCHEMA, LOG_SCHEMA, MISTAKE_TRUTH_SCHEMA
from cmaq.world.content import Item, make_item
from cmaq.world.grammar import KINDS, grammar_queries
from cmaq.world.mistakes import mistaken_queries
from cmaq.world.oracle import Oracle, oracle_code_hash
from cmaq.world.parallel import ordered_map

log = logging.getLogger(__name__)

TABLES = {"content": CONTENT_SCHEMA, "logs": LOG_SCHEMA, "annotations": ANNOTATION_SCHEMA,
          "truth/grammar": GRAMMAR_TRUTH_SCHEMA, "truth/mistakes": MISTAKE_TRUTH_SCHEMA}

# How often the platform's old system exposed each kind of query (relative weights).
EXPOSURE_WEIGHT = {"shop_copy": 3.0, "title_copy": 1.0, "near_copy": 2.0, "entity": 3.0, "expansion": 2.0,
                   "expansion_far": 1.0, "action": 2.0, "explore": 1.0, "commercial": 2.0, "generic": 1.0,
                   "off_topic": 1.0}
assert set(EXPOSURE_WEIGHT) == set(KINDS)


_COUNT_KEYS = {"truth/grammar": "grammar_truth", "truth/mistakes": "mistake_truth"}


@dataclass
class WorldSummary:
    out: str
    config: dict
    counts: dict = field(default_factory=dict)
    langs: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)
    label_rate: float = 0.0
    files: dict = field(default_factory=dict)
    oracle_code_hash: str = ""


def month_starts(end_month: str, months: int) -> list[dt.date]:
    year, month = (int(p) for p in end_month.split("-"))
    out = []
    for _ in range(months):
        out.append(dt.date(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out[::-1]


class _PartWriter:
    """Parquet part files of one table, rotated every ``items_per_file`` items."""

    def __init__(self, root: Path, name: str, schema: pa.Schema):
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema, self.part, self.writer, self.rows = schema, -1, None, 0

    def write(self, table: pa.Table, part: int) -> None:
        if part != self.part:
            self.close()
            self.part = part
            self.writer = pq.ParquetWriter(self.dir / f"part-{part:05d}.parquet", self.schema,
                                           compression="zstd")
        self.writer.write_table(table.cast(self.schema), row_group_size=max(1, table.num_rows))
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _items_table(items: list[Item]) -> pa.Table:
    cols = {name: [getattr(it, name) for it in items] for name in CONTENT_SCHEMA.names if name != "updated_at"}
    cols["updated_at"] = pa.array([it.updated_at_s * 1000 for it in items], pa.int64()).cast(
        pa.timestamp("ms", tz="UTC"))
    return pa.table(cols, schema=CONTENT_SCHEMA)


def generate_chunk(cfg: WorldConfig, start: int, stop: int, oracle: Oracle,
                   months: list[dt.date], updated_base_s: int) -> dict[str, pa.Table]:
    """Items [start, stop) with their grammar truth, mistaken exposures, logs and annotations."""
    rng = random.Random()
    items, owner, queries, kinds = [], [], [], []
    for idx in range(start, stop):
        it = make_item(cfg.seed, idx, cfg.zh_fraction, updated_base_s, rng)
        pos = len(items)
        items.append(it)
        for q, kind in grammar_queries(it, rng):
            owner.append(pos)
            queries.append(q)
            kinds.append(kind)
    content = _items_table(items)
    owner_arr = np.asarray(owner, np.int64)
    nrng = np.random.default_rng([cfg.seed, start, 1])
    plan = _ExposurePlan.draw(cfg, nrng, len(items))
    m_owner, m_queries, m_sources = mistaken_queries(nrng, items, owner_arr, queries,
                                                     np.maximum(plan.mistaken, plan.annotated_mistaken))
    # One oracle pass over both sets: each note is prepared once.
    ctr, exp = oracle.score_pairs(content, np.r_[owner_arr, m_owner], queries + m_queries)
    n_own = len(queries)
    true_ctr, true_exp, m_ctr, m_exp = ctr[:n_own], exp[:n_own], ctr[n_own:], exp[n_own:]
    truth = pa.table({"content_id": content["content_id"].take(pa.array(owner_arr)), "query": queries,
                      "kind": kinds, "true_ctr": true_ctr, "true_exp": true_exp}, schema=GRAMMAR_TRUTH_SCHEMA)
    mistakes = pa.table({"content_id": content["content_id"].take(pa.array(m_owner)), "query": m_queries,
                         "source": m_sources, "true_ctr": m_ctr, "true_exp": m_exp}, schema=MISTAKE_TRUTH_SCHEMA)
    own = _Rows(owner_arr, truth)
    wrong = _Rows(m_owner, mistakes)
    return {"content": content, "truth/grammar": truth, "truth/mistakes": mistakes,
            "logs": _logs(nrng, plan, own, wrong, months),
            "annotations": _annotations(cfg, nrng, plan, own, wrong)}


@dataclass
class _ExposurePlan:
    """Per item of a chunk: how many of its own grammar queries and of mistaken ones the old system
    exposed, and how many of each the annotators judged."""

    exposed: np.ndarray
    mistaken: np.ndarray
    annotated_own: np.ndarray
    annotated_mistaken: np.ndarray

    @classmethod
    def draw(cls, cfg: WorldConfig, nrng: np.random.Generator, n_items: int) -> "_ExposurePlan":
        exposed = nrng.integers(cfg.exposed_min, cfg.exposed_max + 1, n_items)
        # Stochastic rounding of exposed * s / (1 - s): mistakes are a share s of all exposures.
        ratio = cfg.mistaken_share / (1.0 - cfg.mistaken_share)
        mistaken = np.floor(exposed * ratio + nrng.random(n_items)).astype(np.int64)
        annotated = nrng.random(n_items) < cfg.annotated_fraction
        per_item = np.where(annotated, cfg.annotations_per_item, 0)
        annotated_mistaken = nrng.binomial(per_item, cfg.annotated_mistaken_share)
        return cls(exposed, mistaken, per_item - annotated_mistaken, annotated_mistaken)


@dataclass
class _Rows:
    """Candidate (item, query) rows of a chunk with their true CTR and expansion; ``owner`` sorted."""

    owner: np.ndarray
    table: pa.Table

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, pa.Array, pa.Array, np.ndarray, np.ndarray]:
        idx = pa.array(rows, pa.int64())
        return (self.owner[rows], self.table["content_id"].take(idx), self.table["query"].take(idx),
                self.table["true_ctr"].to_numpy()[rows], self.table["true_exp"].to_numpy()[rows])


def _pick_per_item(nrng: np.random.Generator, owner: np.ndarray, weights: np.ndarray,
                   counts: np.ndarray) -> np.ndarray:
    """Per item, choose ``counts[item]`` of its rows without replacement, weighted (Efraimidis–Spirakis)."""
    keys = np.log(nrng.random(len(owner))) / weights
    order = np.lexsort((-keys, owner))           # by item, then best key first
    rank = np.empty(len(owner), np.int64)
    starts = np.r_[0, np.nonzero(np.diff(owner[order]))[0] + 1]
    run = np.diff(np.r_[starts, len(owner)])
    rank[order] = np.arange(len(owner)) - np.repeat(starts, run)
    return np.sort(np.nonzero(rank < counts[owner])[0])


def _first_per_item(owner: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rows of each item's first ``counts[item]`` rows (``owner`` sorted; rows already in random order)."""
    if not len(owner):
        return np.zeros(0, np.int64)
    starts = np.searchsorted(owner, owner)
    return np.nonzero(np.arange(len(owner)) - starts < counts[owner])[0]


def _merged(own: tuple, wrong: tuple) -> tuple:
    """Own and mistaken rows of a chunk as one set of columns, item by item (own rows first)."""
    order = np.argsort(np.r_[own[0], wrong[0]], kind="stable")
    return tuple(np.r_[a, b][order] if isinstance(a, np.ndarray)
                 else pa.chunked_array([*a.chunks, *b.chunks], type=a.type).take(pa.array(order))
                 for a, b in zip(own, wrong))


def _logs(nrng: np.random.Generator, plan: _ExposurePlan, own: _Rows, wrong: _Rows,
          months: list[dt.date]) -> pa.Table:
    kinds = own.table["kind"].to_numpy(zero_copy_only=False)
    weights = np.array([EXPOSURE_WEIGHT[k] for k in kinds])
    owner, content_id, query, ctr, _ = _merged(
        own.take(_pick_per_item(nrng, own.owner, weights, plan.exposed)),
        wrong.take(_first_per_item(wrong.owner, plan.mistaken)))
    n_items, n = len(plan.exposed), len(owner)
    m = len(months)
    popularity = nrng.lognormal(0.0, 1.0, n_items)       # some notes are read far more than others
    base = nrng.lognormal(np.log(120.0), 1.2, n) * popularity[owner]
    first = nrng.integers(0, m, n)
    span = 1 + np.floor(nrng.random(n) * (m - first)).astype(np.int64)
    # Expand each exposed query to its active months.
    rep = np.repeat(np.arange(n), span)
    month_idx = first[rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(span) - span, span))
    seasonal = 1.0 + 0.25 * np.sin(2 * np.pi * month_idx / 12.0)
    impressions = nrng.poisson(base[rep] * seasonal)
    # Users click what they see with the query's true CTR under the note it is shown under.
    clicks = nrng.binomial(impressions, ctr[rep])
    keep = impressions > 0
    src = pa.array(rep[keep])
    month_days = np.array([(d - dt.date(1970, 1, 1)).days for d in months], np.int32)
    return pa.table({
        "content_id": content_id.take(src),
        "query": query.take(src),
        "month": pa.array(month_days[month_idx[keep]], pa.int32()).cast(pa.date32()),
        "impressions": impressions[keep].astype(np.int64),
        "clicks": clicks[keep].astype(np.int64),
    }, schema=LOG_SCHEMA)


def _annotations(cfg: WorldConfig, nrng: np.random.Generator, plan: _ExposurePlan, own: _Rows,
                 wrong: _Rows) -> pa.Table:
    _, content_id, query, _, true_exp = _merged(
        own.take(_pick_per_item(nrng, own.owner, np.ones(len(own.owner)), plan.annotated_own)),
        wrong.take(_pick_per_item(nrng, wrong.owner, np.ones(len(wrong.owner)), plan.annotated_mistaken)))
    clean = true_exp > 0.5
    flip = nrng.random(len(clean)) < cfg.annotator_noise
    return pa.table({"content_id": content_id, "query": query, "label": (clean ^ flip).astype(np.int8)},
                    schema=ANNOTATION_SCHEMA)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_workers(cfg: WorldConfig) -> int:
    """Processes for a world: one per core up to 4, never more than there are chunks beyond the
    first two (a small world is faster in one process than it is to start others)."""
    chunks = -(-cfg.items // cfg.chunk_items)
    return max(1, min(os.cpu_count() or 1, 4, chunks - 2))


_worker_oracle: Oracle | None = None


def _start_worker() -> None:
    global _worker_oracle
    _worker_oracle = Oracle()
    pa.set_cpu_count(1)   # one core per worker process: the workers are the parallelism
    gc.disable()          # see generate_world: the chunk's objects hold no cycles


def _worker_chunk(cfg: WorldConfig, start: int, stop: int, months: list[dt.date],
                  updated_base_s: int) -> dict[str, pa.Table]:
    return generate_chunk(cfg, start, stop, _worker_oracle, months, updated_base_s)


def _chunks(cfg: WorldConfig, months: list[dt.date], updated_base_s: int,
            workers: int) -> Iterator[tuple[int, int, dict[str, pa.Table]]]:
    """(start, stop, tables) of every chunk, in order, computed in this process or in ``workers``
    processes. A chunk depends only on (config, start, stop), so the files do not depend on how many
    processes made them."""
    bounds = [(start, min(cfg.items, start + cfg.chunk_items)) for start in range(0, cfg.items, cfg.chunk_items)]
    if workers <= 1:
        oracle = Oracle()
        tables = (generate_chunk(cfg, start, stop, oracle, months, updated_base_s) for start, stop in bounds)
    else:
        tables = ordered_map(_worker_chunk, [(cfg, start, stop, months, updated_base_s) for start, stop in bounds],
                             workers, initializer=_start_worker)
    for (start, stop), chunk in zip(bounds, tables):
        yield start, stop, chunk


def generate_world(cfg: WorldConfig, out: str | Path,
                   progress: Callable[[int, int, float], None] | None = None,
                   workers: int = 1) -> WorldSummary:
    """Generate ``cfg.items`` items into ``out`` (which must be empty or absent), with ``workers``
    processes (the files are the same for any number; :func:`default_workers` suggests one). More
    than one starts worker processes with ``spawn``: a script that calls this needs the usual
    ``if __name__ == "__main__":`` guard."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose a new --out or remove it")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root.mkdir(parents=True, exist_ok=True)
    months = month_starts(cfg.end_month, cfg.months)
    updated_base_s = int(dt.datetime.combine(months[0], dt.time(), dt.timezone.utc).timestamp())
    writers = {name: _PartWriter(root, name, schema) for name, schema in TABLES.items()}
    langs: dict[str, int] = {}
    cats: dict[str, int] = {}
    positives = labels = 0
    t0 = time.perf_counter()
    # The chunk's millions of small strings and tuples hold no cycles; the cyclic collector would
    # only rescan them (a quarter of the run time), so it is paused and restored afterwards.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for start, stop, tables in _chunks(cfg, months, updated_base_s, workers):
            part = start // cfg.items_per_file
            for name, table in tables.items():
                writers[name].write(table, part)
            for key, acc in (("lang", langs), ("category", cats)):
                for v in tables["content"][key].to_pylist():
                    acc[v] = acc.get(v, 0) + 1
            labels += tables["annotations"].num_rows
            positives += int(np.sum(tables["annotations"]["label"].to_numpy()))
            if progress:
                progress(stop, cfg.items, time.perf_counter() - t0)
    finally:
        for w in writers.values():
            w.close()
        if gc_was_enabled:
            gc.enable()
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*.parquet"))}
    summary = WorldSummary(
        out=str(root), config=asdict(cfg),
        counts={_COUNT_KEYS.get(name, name): w.rows for name, w in writers.items()},
        langs=dict(sorted(langs.items())), categories=dict(sorted(cats.items())),
        label_rate=round(positives / labels, 4) if labels else 0.0, files=files,
        oracle_code_hash=oracle_code_hash())
    manifest = asdict(summary)
    manifest.pop("out")
    (root / "world.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
