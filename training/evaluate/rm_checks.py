"""Do the reward models read the note? Two checks on held-out notes, in the oracle's terms.

**Swapped-note accuracy.** The same query under two notes of the same language and category, kept
only where the oracle's judgements of the two differ by a clear margin; the RM must order the two
as the oracle does.

- CTR: a held-out note's grammar query shown under another held-out note of its category; kept when
  the two true CTRs differ by ``CTR_LOGIT_MARGIN`` in logit: 1 (an odds ratio of e ≈ 2.7) beyond the
  most the oracle's per-note offsets (±``ctr_item_spread`` each, from a hash of the content id, which
  no model can see) can add, so the order comes from how the query relates to each note. The CTR
  RM's raw scores are compared (its offset per note is learnt from the note's text, not fixed).
- Expansion: a query naming a related topic of the category that one note mentions and the other
  does not; kept when the true expansions differ by at least ``EXP_MARGIN`` (0.3).

**Note-blindness on generated text.** k samples of a policy (QSA, and later the final CMAQ policy)
for held-out notes: for the strings the policy wrote under at least ``MIN_NOTES`` notes, the share
of each score's variance that the query string alone explains (η², between-string over total sum
of squares), and, over all samples, the mean within-note Spearman correlation of each RM with the
oracle. The oracle's own η² is reported next to the RMs' as the reference. The share is only
reported over at least ``MIN_STRINGS`` strings and ``MIN_ROWS`` rows; below that it is ``None``
with the counts.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cmaq.text import normalize
from cmaq.world import lexicon as lx
from cmaq.world.oracle import Oracle, OracleWeights
from training.evaluate.offline import oracle_scores
from training.reward_models.scorer import RewardScorer
from training.reward_models.train import spearman

CTR_LOGIT_MARGIN = 1.0 + 2 * OracleWeights().ctr_item_spread
EXP_MARGIN = 0.3
MIN_NOTES, MIN_STRINGS, MIN_ROWS = 5, 50, 1000
NOTE_FIELDS = ("title", "body", "shop_info", "shop_name")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _partners(items: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Each held-out note with another held-out note of its language and category (a seeded
    derangement within each group): columns content_id, partner."""
    rows = []
    rng = np.random.default_rng(seed)
    for _, group in items.groupby(["lang", "category"], sort=True):
        ids = sorted(group["content_id"])
        if len(ids) < 2:
            continue
        order = list(rng.permutation(ids))
        rows += [(a, b) for a, b in zip(order, order[1:] + order[:1])]
    return pd.DataFrame(rows, columns=["content_id", "partner"])


def swapped_ctr_pairs(world: str | Path, items: pd.DataFrame, oracle: Oracle, seed: int = 0) -> pd.DataFrame:
    """(note A, note B, query) with the query one of A's grammar queries, and both true CTRs, kept
    where they differ by the margin."""
    truth = pq.read_table(Path(world) / "truth" / "grammar", columns=["content_id", "query", "true_ctr"]).to_pandas()
    pairs = _partners(items, seed).merge(truth, on="content_id")
    by_id = items.set_index("content_id")
    partner_items = by_id.loc[pairs["partner"]].reset_index().to_dict("records")
    other_ctr, _ = oracle_scores(oracle, partner_items, pairs["query"].tolist())
    pairs = pairs.assign(truth_a=pairs["true_ctr"], truth_b=other_ctr).drop(columns="true_ctr")
    keep = np.abs(_logit(pairs["truth_a"].to_numpy()) - _logit(pairs["truth_b"].to_numpy())) >= CTR_LOGIT_MARGIN
    return pairs[keep].reset_index(drop=True)


@lru_cache(maxsize=None)
def _related_topics(lang: str, category: str) -> tuple[str, ...]:
    """The category's near and far related topics, normalised."""
    cat = lx.CATEGORY_BY_KEY[category]
    return tuple(normalize(t) for t in (*cat.near(lang), *cat.far(lang)))


def swapped_exp_pairs(world: str | Path, items: pd.DataFrame, oracle: Oracle) -> pd.DataFrame:
    """(note A, note B, query) with the query one of A's grammar queries naming a related topic that
    B's text mentions and A's does not, and both true expansions, kept where they differ by the margin."""
    truth = pq.read_table(Path(world) / "truth" / "grammar", columns=["content_id", "query", "true_exp"]).to_pandas()
    truth = truth[truth["content_id"].isin(items["content_id"])]
    text = {r["content_id"]: normalize(" ".join(str(r[c] or "") for c in NOTE_FIELDS))
            for r in items.to_dict("records")}
    group_of = {r["content_id"]: (r["lang"], r["category"]) for r in items.to_dict("records")}
    members: dict[tuple, list[str]] = {}
    for cid, key in sorted(group_of.items()):
        members.setdefault(key, []).append(cid)
    rows = []
    for r in truth.itertuples(index=False):
        lang, category = group_of[r.content_id]
        if category not in lx.CATEGORY_BY_KEY:
            continue
        q = normalize(r.query)
        topics = [t for t in _related_topics(lang, category) if t in q]
        for topic in topics:
            if topic in text[r.content_id]:
                continue
            partner = next((b for b in members[(lang, category)] if b != r.content_id and topic in text[b]), None)
            if partner is not None:
                rows.append((r.content_id, partner, r.query, r.true_exp))
                break
    pairs = pd.DataFrame(rows, columns=["content_id", "partner", "query", "truth_a"])
    if pairs.empty:
        return pairs.assign(truth_b=[])
    by_id = items.set_index("content_id")
    _, other_exp = oracle_scores(oracle, by_id.loc[pairs["partner"]].reset_index().to_dict("records"),
                                 pairs["query"].tolist())
    pairs = pairs.assign(truth_b=other_exp)
    return pairs[np.abs(pairs["truth_a"] - pairs["truth_b"]) >= EXP_MARGIN].reset_index(drop=True)


def swapped_accuracy(pairs: pd.DataFrame, items: pd.DataFrame, score) -> dict:
    """Share of ``pairs`` the RM orders as the oracle does; ``score(items, queries)`` gives the RM's scores."""
    if pairs.empty:
        return {"pairs": 0, "accuracy": None}
    by_id = items.set_index("content_id")
    a = by_id.loc[pairs["content_id"]].reset_index().to_dict("records")
    b = by_id.loc[pairs["partner"]].reset_index().to_dict("records")
    queries = pairs["query"].tolist()
    s = np.asarray(score(a + b, queries + queries), float)
    n = len(pairs)
    agree = np.sign(s[:n] - s[n:]) == np.sign(pairs["truth_a"].to_numpy() - pairs["truth_b"].to_numpy())
    return {"pairs": n, "accuracy": round(float(agree.mean()), 4)}


def variance_explained(frame: pd.DataFrame, column: str) -> float:
    """η²: the share of ``column``'s variance between query strings (1 − within / total)."""
    values = frame[column].to_numpy(float)
    total = ((values - values.mean()) ** 2).sum()
    if total <= 0:
        return float("nan")
    within = (frame[column] - frame.groupby("query")[column].transform("mean")).pow(2).sum()
    return float(1 - within / total)


def note_blindness(samples: pd.DataFrame, score_columns: Sequence[str] = ("r_exp", "r_ctr_raw", "true_exp",
                                                                         "true_ctr")) -> dict:
    """η² of each score column over strings seen under ≥ MIN_NOTES notes (None below MIN_STRINGS strings or
    MIN_ROWS rows), and each RM's mean within-note Spearman with the oracle over notes with ≥ 3 samples.
    ``samples``: content_id, query and the score columns, one row per (note, distinct sample)."""
    notes_per_string = samples.groupby("query")["content_id"].nunique()
    common = samples[samples["query"].isin(notes_per_string[notes_per_string >= MIN_NOTES].index)]
    strings, rows = int(common["query"].nunique()), len(common)
    enough = strings >= MIN_STRINGS and rows >= MIN_ROWS
    share = {c: (round(variance_explained(common, c), 4) if enough else None) for c in score_columns}
    within = {}
    for rm_column, truth_column in (("r_exp", "true_exp"), ("r_ctr_raw", "true_ctr")):
        rhos = [spearman(g[rm_column], g[truth_column]) for _, g in samples.groupby("content_id") if len(g) >= 3]
        rhos = [x for x in rhos if x == x]
        within[rm_column] = round(float(np.mean(rhos)), 4) if rhos else None
    return {"samples": len(samples), "notes": int(samples["content_id"].nunique()),
            "strings_on_min_notes": strings, "rows_of_those_strings": rows, "min_notes": MIN_NOTES,
            "computed": enough, "variance_explained_by_string": share, "within_note_spearman": within}


def policy_samples(engine, scorer, oracle: Oracle, items: list[dict], k: int, temperature: float, seed: int,
                   adapter: str | None, batch: int = 32) -> pd.DataFrame:
    """k samples per note from a policy, distinct per note, with both RMs' scores and the oracle's."""
    rows = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        for it, res in zip(chunk, engine.sample(chunk, k=k, temperature=temperature, seed=seed, adapter=adapter)):
            seen = []
            for c in (res.candidates if res.ok else []):
                q = c.text.strip()
                if q and q not in seen:
                    seen.append(q)
            rows += [(it, q) for q in seen]
    frame = pd.DataFrame({"content_id": [str(it["content_id"]) for it, _ in rows], "query": [q for _, q in rows]})
    if frame.empty:
        return frame.assign(r_exp=[], r_ctr_raw=[], true_exp=[], true_ctr=[])
    scores = scorer.score([it for it, _ in rows], frame["query"].tolist())
    true_ctr, true_exp = oracle_scores(oracle, [it for it, _ in rows], frame["query"].tolist())
    return frame.assign(r_exp=scores.r_exp, r_ctr_raw=scores.r_ctr_raw, true_exp=true_exp, true_ctr=true_ctr)


def swapped_note_checks(world: str | Path, items: list[dict], scorer, oracle: Oracle | None = None,
                        seed: int = 0) -> dict:
    """Swapped-note accuracy of both RMs of ``scorer`` (a RewardScorer) on the held-out ``items``."""
    oracle = oracle or Oracle()
    frame = pd.DataFrame(items)
    frame["content_id"] = frame["content_id"].astype(str)
    ctr_pairs = swapped_ctr_pairs(world, frame, oracle, seed)
    exp_pairs = swapped_exp_pairs(world, frame, oracle)
    return {
        "ctr": {**swapped_accuracy(ctr_pairs, frame, lambda it, q: scorer.ctr.score(it, q, scorer.batch_size)),
                "margin": f"|logit true_ctr(A) - logit true_ctr(B)| >= {CTR_LOGIT_MARGIN:g} "
                          f"(1 beyond the oracle's per-note offsets)"},
        "expansion": {**swapped_accuracy(exp_pairs, frame, lambda it, q: scorer.exp.score(it, q, scorer.batch_size)),
                      "margin": f"a related topic one note mentions and the other does not, "
                                f"|true_exp(A) - true_exp(B)| >= {EXP_MARGIN:g}"},
    }


def record_in_metrics(rm_dir: str | Path, key: str, value: dict) -> None:
    """Add ``value`` under ``key`` to an RM's metrics.json (the checks run after the RM was trained)."""
    path = Path(rm_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[key] = value
    path.write_text(json.dumps(metrics, indent=2, default=float))


def check_reward_models(world: str | Path, items: list[dict], rm_exp: str, rm_ctr: str, engine=None,
                        policy: str | None = None, k: int = 8, temperature: float = 1.0, seed: int = 0,
                        samples_out: str | Path | None = None) -> dict:
    """Both checks on held-out ``items``, recorded in each RM's metrics.json (``swapped_note``, and with
    an ``engine`` ``note_blindness`` on ``k`` samples of ``policy`` — an adapter, None for the bare
    model) and returned. ``samples_out``: where the scored samples go (Parquet), for a closer look."""
    scorer, oracle = RewardScorer(rm_exp, rm_ctr), Oracle()
    result = {"held_out_notes": len(items), "swapped_note": swapped_note_checks(world, items, scorer, oracle, seed)}
    if engine is not None:
        samples = policy_samples(engine, scorer, oracle, items, k, temperature, seed, policy)
        if samples_out:
            Path(samples_out).parent.mkdir(parents=True, exist_ok=True)
            samples.to_parquet(samples_out, index=False)
        blind = note_blindness(samples)
        result["note_blindness"] = {"policy": policy or "base model", "k": k, "temperature": temperature, **blind}
    for rm_dir, objective, score_column, truth_column in ((rm_exp, "expansion", "r_exp", "true_exp"),
                                                          (rm_ctr, "ctr", "r_ctr_raw", "true_ctr")):
        record_in_metrics(rm_dir, "swapped_note", result["swapped_note"][objective])
        if "note_blindness" in result:
            nb = result["note_blindness"]
            record_in_metrics(rm_dir, "note_blindness", {
                "policy": nb["policy"], "k": k, "strings_on_min_notes": nb["strings_on_min_notes"],
                "rows_of_those_strings": nb["rows_of_those_strings"], "computed": nb["computed"],
                "variance_explained_by_string": nb["variance_explained_by_string"][score_column],
                "oracle_variance_explained_by_string": nb["variance_explained_by_string"][truth_column],
                "within_note_spearman": nb["within_note_spearman"][score_column]})
    return result
