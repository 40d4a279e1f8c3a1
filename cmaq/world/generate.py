"""Write a world to disk: content, logs, annotations and the hidden answer key, chunk by chunk.

Layout under ``out``::

    content/part-NNNNN.parquet       CONTENT_SCHEMA        what the platform shows
    logs/part-NNNNN.parquet          LOG_SCHEMA            (content, query, month) impressions, clicks
    annotations/part-NNNNN.parquet   ANNOTATION_SCHEMA     noisy human expansion labels
    truth/grammar/part-NNNNN.parquet GRAMMAR_TRUTH_SCHEMA  answer key: kinds, true CTR and expansion
    world.json                       config, counts, file hashes, oracle code hash

Memory is bounded by one chunk (``world.chunk_items`` items): each chunk becomes one row group of
each part file, and a part file holds ``world.items_per_file`` items. Items are drawn from
per-item seeds; log and annotation draws from per-chunk seeds, so the same (seed, items,
chunk_items) always gives byte-identical files — there are no timestamps in them.
"""
from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cmaq.config import WorldConfig
from cmaq.schema import ANNOTATION_SCHEMA, CONTENT_SCHEMA, GRAMMAR_TRUTH_SCHEMA, LOG_SCHEMA
from cmaq.world.content import Item, make_item
from cmaq.world.grammar import KINDS, grammar_queries
from cmaq.world.oracle import Oracle, oracle_code_hash

log = logging.getLogger(__name__)

TABLES = {"content": CONTENT_SCHEMA, "logs": LOG_SCHEMA, "annotations": ANNOTATION_SCHEMA,
          "truth/grammar": GRAMMAR_TRUTH_SCHEMA}

# How often the platform's old system exposed each kind of query (relative weights).
EXPOSURE_WEIGHT = {"shop_copy": 3.0, "title_copy": 1.0, "near_copy": 2.0, "entity": 3.0, "expansion": 2.0,
                   "expansion_far": 1.0, "action": 2.0, "explore": 1.0, "commercial": 2.0, "generic": 1.0,
                   "off_topic": 1.0}
assert set(EXPOSURE_WEIGHT) == set(KINDS)


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
    """Items [start, stop) with their grammar truth, logs and annotations."""
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
    true_ctr, true_exp = oracle.score_pairs(content, owner_arr, queries)
    truth = pa.table({"content_id": content["content_id"].take(pa.array(owner_arr)), "query": queries,
                      "kind": kinds, "true_ctr": true_ctr, "true_exp": true_exp}, schema=GRAMMAR_TRUTH_SCHEMA)

    nrng = np.random.default_rng([cfg.seed, start, 1])
    return {"content": content, "truth/grammar": truth,
            "logs": _logs(cfg, nrng, owner_arr, truth, months),
            "annotations": _annotations(cfg, nrng, owner_arr, truth, len(items))}


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


def _logs(cfg: WorldConfig, nrng: np.random.Generator, owner: np.ndarray, truth: pa.Table,
          months: list[dt.date]) -> pa.Table:
    n_items = int(owner.max()) + 1 if len(owner) else 0
    kinds = truth["kind"].to_numpy(zero_copy_only=False)
    weights = np.array([EXPOSURE_WEIGHT[k] for k in kinds])
    per_item = nrng.integers(cfg.exposed_min, cfg.exposed_max + 1, n_items)
    rows = _pick_per_item(nrng, owner, weights, per_item)
    m = len(months)
    popularity = nrng.lognormal(0.0, 1.0, n_items)       # some notes are read far more than others
    base = nrng.lognormal(np.log(120.0), 1.2, len(rows)) * popularity[owner[rows]]
    first = nrng.integers(0, m, len(rows))
    span = 1 + np.floor(nrng.random(len(rows)) * (m - first)).astype(np.int64)
    # Expand each exposed query to its active months.
    rep = np.repeat(np.arange(len(rows)), span)
    month_idx = first[rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(span) - span, span))
    seasonal = 1.0 + 0.25 * np.sin(2 * np.pi * month_idx / 12.0)
    impressions = nrng.poisson(base[rep] * seasonal)
    ctr = truth["true_ctr"].to_numpy()[rows][rep]
    clicks = nrng.binomial(impressions, ctr)
    keep = impressions > 0
    src = rows[rep][keep]
    month_days = np.array([(d - dt.date(1970, 1, 1)).days for d in months], np.int32)
    return pa.table({
        "content_id": truth["content_id"].take(pa.array(src)),
        "query": truth["query"].take(pa.array(src)),
        "month": pa.array(month_days[month_idx[keep]], pa.int32()).cast(pa.date32()),
        "impressions": impressions[keep].astype(np.int64),
        "clicks": clicks[keep].astype(np.int64),
    }, schema=LOG_SCHEMA)


def _annotations(cfg: WorldConfig, nrng: np.random.Generator, owner: np.ndarray, truth: pa.Table,
                 n_items: int) -> pa.Table:
    annotated = nrng.random(n_items) < cfg.annotated_fraction
    counts = np.where(annotated, cfg.annotations_per_item, 0)
    rows = _pick_per_item(nrng, owner, np.ones(len(owner)), counts)
    clean = truth["true_exp"].to_numpy()[rows] > 0.5
    flip = nrng.random(len(rows)) < cfg.annotator_noise
    return pa.table({
        "content_id": truth["content_id"].take(pa.array(rows, pa.int64())),
        "query": truth["query"].take(pa.array(rows, pa.int64())),
        "label": (clean ^ flip).astype(np.int8),
    }, schema=ANNOTATION_SCHEMA)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def generate_world(cfg: WorldConfig, out: str | Path,
                   progress: Callable[[int, int, float], None] | None = None) -> WorldSummary:
    """Generate ``cfg.items`` items into ``out`` (which must be empty or absent)."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose a new --out or remove it")
    root.mkdir(parents=True, exist_ok=True)
    oracle = Oracle()
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
        for start in range(0, cfg.items, cfg.chunk_items):
            stop = min(cfg.items, start + cfg.chunk_items)
            tables = generate_chunk(cfg, start, stop, oracle, months, updated_base_s)
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
        counts={name.replace("truth/grammar", "grammar_truth"): w.rows for name, w in writers.items()},
        langs=dict(sorted(langs.items())), categories=dict(sorted(cats.items())),
        label_rate=round(positives / labels, 4) if labels else 0.0, files=files,
        oracle_code_hash=oracle_code_hash())
    manifest = asdict(summary)
    manifest.pop("out")
    (root / "world.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
