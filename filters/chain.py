"""FilterChain: run configured filters over a batch of (content item, candidate) rows.

The chain normalises each candidate once (the lexical filter's ``clean``), then runs its filters in
order; each filter looks only at rows no earlier filter dropped. The output has exactly the input
rows, in order, plus ``query_clean``, ``keep``, ``reason`` (the first failing reason code, null when
kept) and one ``score_<filter>`` column per filter (NaN where a filter did not look at the row).
It takes and returns an Arrow table or record batch, or a pandas DataFrame, so it runs inside
Spark's mapInArrow / mapInPandas.

>>> import pyarrow as pa
>>> from cmaq.config import FiltersConfig
>>> chain = FilterChain.serving(FiltersConfig())
>>> rows = pa.table({"content_id": ["c1", "c1"], "lang": ["en", "en"], "shop_name": ["Jade Hotpot"] * 2,
...                  "title": ["Jade Hotpot review"] * 2, "body": ["Great beef tripe and broth."] * 2,
...                  "shop_info": ["Riverside"] * 2, "query": ["beef tripe dipping sauce", "www.spam.com"]})
>>> out = chain.run(rows)
>>> out.table["reason"].to_pylist(), out.counts["kept"]
([None, 'url'], 1)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from cmaq.config import FiltersConfig
from cmaq.schema import OPTIONAL_CONTENT_FIELDS
from cmaq.text import to_string_array
from filters import base as b
from filters.commercial import CommercialFilter
from filters.harm import HarmFilter
from filters.lexical import LexicalFilter
from filters.relevance import RelevanceFilter
from filters.similarity import SimilarityFilter

OUTPUT_COLUMNS = ("query_clean", "keep", "reason")


def build_filter(name: str, cfg: FiltersConfig):
    factories = {
        "lexical": lambda: LexicalFilter(cfg.lexical),
        "commercial": lambda: CommercialFilter(cfg.commercial),
        "harm": lambda: HarmFilter(cfg.harm),
        "similarity": lambda: SimilarityFilter(cfg.similarity),
        "relevance": lambda: RelevanceFilter(cfg.relevance),
    }
    if name not in factories:
        raise ValueError(f"unknown filter {name!r} (known: {', '.join(factories)})")
    return factories[name]()


@dataclass
class ChainResult:
    table: pa.Table | pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)


class FilterChain:
    def __init__(self, names: Sequence[str], cfg: FiltersConfig | None = None):
        self.cfg = cfg or FiltersConfig()
        self.names = list(names)
        self.filters = [build_filter(n, self.cfg) for n in self.names]
        self._cleaner = LexicalFilter(self.cfg.lexical)
        self.required_columns = tuple(dict.fromkeys(
            (b.QUERY_COLUMN, "content_id", *(c for f in self.filters for c in getattr(f, "required_columns", ())))))

    @classmethod
    def serving(cls, cfg: FiltersConfig) -> "FilterChain":
        return cls(cfg.serving, cfg)

    @classmethod
    def training(cls, cfg: FiltersConfig) -> "FilterChain":
        return cls(cfg.training, cfg)

    def score_columns(self) -> list[str]:
        return [f"score_{n}" for n in self.names]

    def run(self, data: pa.Table | pa.RecordBatch | pd.DataFrame) -> ChainResult:
        as_pandas = isinstance(data, pd.DataFrame)
        table = _to_table(data)
        for name in OPTIONAL_CONTENT_FIELDS:  # content without the column reads as null, as the nightly's reader does
            if name in self.required_columns and name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        missing = [c for c in self.required_columns if c not in table.column_names]
        if missing:
            raise ValueError(f"filter input lacks columns {missing} (chain: {', '.join(self.names)})")
        clash = [c for c in (*OUTPUT_COLUMNS, *self.score_columns()) if c in table.column_names]
        if clash:
            raise ValueError(f"filter input already has output columns {clash}")
        cleaned = self._cleaner.clean_array(table[b.QUERY_COLUMN]).to_pylist()
        batch = b.FilterBatch(table, cleaned, [q.lower() for q in cleaned])

        active = np.ones(batch.n, bool)
        reasons: list[str | None] = [None] * batch.n
        scores = {}
        for name, flt in zip(self.names, self.filters):
            verdict = flt.apply(batch, active)
            scores[f"score_{name}"] = verdict.score
            for i in np.flatnonzero(verdict.drop & active):
                reasons[i] = verdict.reason[i]
            active &= ~verdict.drop

        out = table.append_column("query_clean", pa.array(cleaned, pa.string()))
        out = out.append_column("keep", pa.array(active, pa.bool_()))
        out = out.append_column("reason", pa.array(reasons, pa.string()))
        for col, values in scores.items():
            out = out.append_column(col, pa.array(values, pa.float64()))
        if out.num_rows != table.num_rows:  # every row comes out exactly once
            raise AssertionError(f"filter chain returned {out.num_rows} rows for {table.num_rows}")
        counts = {"input": batch.n, "kept": int(active.sum())}
        for r in reasons:
            if r is not None:
                counts[r] = counts.get(r, 0) + 1
        return ChainResult(out.to_pandas() if as_pandas else out, counts)


    def judge(self, items: Sequence[dict], candidates: Sequence[Sequence[str]]) -> pa.Table:
        """Every candidate of every item through the chain: one output row per candidate, flat in
        item then candidate order. A field an item lacks counts as empty."""
        flat = [(item, q) for item, qs in zip(items, candidates) for q in qs]
        cols = {c: pa.array([str(item.get(c) or "") for item, _ in flat], pa.string())
                for c in self.required_columns if c != b.QUERY_COLUMN}
        return self.run(pa.table({**cols, b.QUERY_COLUMN: to_string_array([q for _, q in flat])})).table


def _to_table(data) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pd.DataFrame):
        try:
            return pa.Table.from_pandas(data, preserve_index=False)
        except (UnicodeEncodeError, pa.ArrowInvalid):
            # Text that cannot be UTF-8 (lone surrogates) is repaired per value, not a failed batch.
            fixed = {c: (to_string_array(data[c].tolist()) if data[c].dtype == object else data[c])
                     for c in data.columns}
            return pa.table(fixed)
    raise TypeError(f"expected an Arrow table or record batch or a pandas DataFrame, got {type(data).__name__}")


def merge_counts(*counts: dict[str, int]) -> dict[str, int]:
    """Add per-batch counts (e.g. from Spark partitions) into one dict."""
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


_SHARED: dict[tuple[str, str], FilterChain] = {}


def shared_chain(cfg: FiltersConfig, which: str) -> FilterChain:
    """The ``serving`` or ``training`` chain for this config, built once per process: Spark's Python
    workers are reused across tasks, so the term matchers and any embedding model load once."""
    key = (which, repr(cfg))
    if key not in _SHARED:
        if which not in ("serving", "training"):
            raise ValueError(f"unknown chain {which!r}: use 'serving' or 'training'")
        _SHARED[key] = FilterChain.serving(cfg) if which == "serving" else FilterChain.training(cfg)
    return _SHARED[key]
