"""Does a policy write the note's own kind of query? A check of the query-style alignment (QSA).

A top beam is *the note's own kind* when it is one of the note's grammar queries other than the
shop-name copy, the title copy and the near copy (those any model gets by copying the obvious
field), or within normalised edit similarity ``SIMILARITY`` of one (rapidfuzz ``ratio`` on
NFKC-lower-cased text) — and closer to it than to any of the copies: "shop + a short word" is within
0.8 of the bare shop name, so without that tie-break a copy of the shop name would count as the
note's own "shop + booking". The generic, off-topic and far-topic grammar queries are bare phrases
from short lists shared by every note of a category (a policy writing "good food" everywhere would
match one English note in seven), so they do not count either (:data:`NOT_OWN_KINDS`). A policy that
memorised a few popular strings writes few distinct top-1 queries and seldom the note's own kind.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from rapidfuzz import fuzz

from cmaq.text import normalize
from cmaq.world.grammar import REDUNDANT_KINDS

SIMILARITY = 0.8
#: Grammar kinds that are no evidence of writing for this note: copies, and phrases shared by a category.
NOT_OWN_KINDS = (*REDUNDANT_KINDS, "generic", "off_topic", "expansion_far")


def note_queries(world: str | Path, content_ids) -> dict[str, tuple[list[str], list[str]]]:
    """Per content, its normalised grammar queries: (the kinds that count, the others)."""
    truth = pq.read_table(Path(world) / "truth" / "grammar", columns=["content_id", "query", "kind"]).to_pandas()
    truth = truth[truth["content_id"].isin(set(content_ids))]
    out: dict[str, tuple[list[str], list[str]]] = {}
    for cid, q, kind in zip(truth["content_id"], truth["query"], truth["kind"]):
        out.setdefault(cid, ([], []))[kind in NOT_OWN_KINDS].append(normalize(q))
    return out


def is_own_kind(query: str, own: list[str], copies: list[str] = ()) -> bool:
    q = normalize(query)
    if not q or not own:
        return False
    best_own = max(fuzz.ratio(q, o) for o in own)
    best_copy = max((fuzz.ratio(q, c) for c in copies), default=-1.0)
    return best_own >= 100 * SIMILARITY and best_own > best_copy


def style_summary(rows: pd.DataFrame, world: str | Path) -> pd.DataFrame:
    """Per policy of evaluation ``rows`` (policy, content_id, query = top beam): how many contents,
    the share whose top beam is the note's own kind, and the number of distinct top-1 queries."""
    known = note_queries(world, rows["content_id"].unique())
    flags = [is_own_kind(q or "", *known.get(c, ([], []))) for c, q in zip(rows["content_id"], rows["query"])]
    frame = rows.assign(own_kind=flags, query_norm=[normalize(q or "") for q in rows["query"]])
    return (frame.groupby("policy", sort=False)
            .agg(contents=("content_id", "size"), own_kind_share=("own_kind", "mean"),
                 distinct_top1=("query_norm", "nunique"))
            .reset_index())
