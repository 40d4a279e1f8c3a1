"""The GSB kit (the method's Figure 6): people compare two policies' served queries side by side.

    cmaq eval gsb export --rows EVAL_OUT --a cmaq-a0.4 --b qsa --out gsb/     # sheet for judges + key
    cmaq eval gsb judge --world W --sheet gsb/gsb_sheet.csv --key gsb/gsb_key.csv --out judged.csv
    cmaq eval gsb import --key gsb/gsb_key.csv judge1.csv judge2.csv           # G/S/B of A against B

1. **Export**: a seeded sample of held-out notes, stratified by category (each category gets its
   share of the notes, rounded by largest remainder), with the query each policy serves (its exposed
   query: the first beam candidate that passes the serving filters; "(no suggestion)" when none does).
   The sheet is blinded — no policy names — and each row's sides are shuffled; the key that unblinds it
   is a separate file the judges never see.
2. **Judging**: a judge fills ``judgement`` with ``left``, ``right`` or ``same`` (``l``/``r``/``s``,
   any case). The simulated judge (:func:`simulated_judgements`) does it from the world's oracle so the
   kit is tested end to end: the side whose query has the higher true combined score
   (true_exp^α · true_ctr^(1−α); a missing suggestion scores 0) wins, unless the two are within
   ``margin`` of each other (relative), which is ``same``.
3. **Import**: every judgement CSV is read row by row; a row with an unknown item, a missing or
   unreadable judgement, or an item judged twice in one file is reported with its file, the line it
   starts on and its spreadsheet row (the header is row 1), and
   nothing is dropped silently: any such row makes the command exit 2. From A's side, each judgement
   is Good (A's query preferred), Same or Bad; the report gives the three rates and
   GSB = (G − B) / (G + S + B) with a bootstrap interval over judgements.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cmaq.rewards import combine
from training.evaluate.offline import oracle_scores
from training.evaluate.stats import bootstrap_mean

SHEET_COLUMNS = ("item_id", "lang", "category", "title", "body", "query_left", "query_right", "judgement", "comment")
KEY_COLUMNS = ("item_id", "content_id", "left", "right")
NO_SUGGESTION = "(no suggestion)"
NO_CATEGORY = "(none)"
VERDICTS = {"left": "left", "l": "left", "right": "right", "r": "right", "same": "same", "s": "same"}


def stratified_sample(items: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of ``items`` (all of them when fewer), each category with its share (largest
    remainder), drawn with ``seed``."""
    if n >= len(items):
        return items.sort_values("content_id").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    # notes without a category are a stratum of their own, not left out
    items = items.assign(category=items["category"].fillna(NO_CATEGORY))
    sizes = items.groupby("category").size().sort_index()
    quota = sizes / sizes.sum() * n
    take = np.floor(quota).astype(int)
    for cat in (quota - take).sort_values(ascending=False, kind="stable").index[:n - int(take.sum())]:
        take[cat] += 1
    picked = [g.sort_values("content_id").iloc[rng.permutation(len(g))[:take[cat]]]
              for cat, g in items.groupby("category", sort=True)]
    return pd.concat(picked).sort_values("content_id").reset_index(drop=True)


def export_sheet(rows: pd.DataFrame, items: pd.DataFrame, a: str, b: str, n: int, seed: int
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sheet, key) for policies ``a`` and ``b`` (names in ``rows.policy``), on notes both were
    evaluated on. ``items`` holds the notes' fields (content_id, lang, category, title, body)."""
    served = {}
    for name in (a, b):
        mine = rows[rows["policy"] == name]
        if mine.empty:
            raise ValueError(f"no evaluation rows for policy {name!r} (have: {sorted(rows['policy'].unique())})")
        served[name] = dict(zip(mine["content_id"].astype(str), mine["exposed_query"]))
    common = set(served[a]) & set(served[b])
    notes = stratified_sample(items[items["content_id"].astype(str).isin(common)], n, seed)
    rng = np.random.default_rng(seed + 1)
    sheet, key = [], []
    for i, note in enumerate(notes.to_dict("records"), start=1):
        left, right = (a, b) if rng.random() < 0.5 else (b, a)
        cid = str(note["content_id"])
        item_id = f"g{i:04d}"
        sheet.append({"item_id": item_id, "lang": note.get("lang"), "category": note.get("category"),
                      "title": note.get("title") or "", "body": note.get("body") or "",
                      "query_left": served[left][cid] or NO_SUGGESTION, "query_right": served[right][cid] or NO_SUGGESTION,
                      "judgement": "", "comment": ""})
        key.append({"item_id": item_id, "content_id": cid, "left": left, "right": right})
    return pd.DataFrame(sheet, columns=SHEET_COLUMNS), pd.DataFrame(key, columns=KEY_COLUMNS)


def read_key(path: str | Path) -> pd.DataFrame:
    """The key as written: every column text (a content id "007" stays "007")."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")


def simulated_judgements(sheet: pd.DataFrame, key: pd.DataFrame, items: pd.DataFrame, oracle,
                         alpha: float = 0.5, margin: float = 0.1) -> pd.DataFrame:
    """The sheet with ``judgement`` filled by the oracle (see the module's docstring)."""
    by_id = items.assign(content_id=items["content_id"].astype(str)).set_index("content_id")
    notes = by_id.loc[key.set_index("item_id").loc[sheet["item_id"], "content_id"]].reset_index().to_dict("records")

    def utility(queries: pd.Series) -> np.ndarray:
        real = queries.ne(NO_SUGGESTION).to_numpy()
        ctr, exp = oracle_scores(oracle, notes, [q if ok else "" for q, ok in zip(queries, real)])
        return np.where(real, combine(exp, ctr, alpha), 0.0)

    left, right = utility(sheet["query_left"]), utility(sheet["query_right"])
    close = np.abs(left - right) <= margin * np.maximum(left, right)
    verdict = np.where(close, "same", np.where(left > right, "left", "right"))
    return sheet.assign(judgement=verdict)


@dataclass
class Judgements:
    """What :func:`read_judgements` found: one G/S/B per well-formed row, and every malformed row."""

    outcomes: list[str] = field(default_factory=list)          # "G", "S" or "B", from policy A's side
    malformed: list[str] = field(default_factory=list)         # "file:line (row n): reason"
    files: int = 0
    unjudged: list[str] = field(default_factory=list)          # the key's items no file judged


def read_judgements(paths: Sequence[str | Path], key: pd.DataFrame, a: str) -> Judgements:
    """Read judgement CSVs against the sheet's ``key``; ``a`` is the policy whose side is G."""
    sides = {r["item_id"]: (r["left"], r["right"]) for r in key.to_dict("records")}
    if a not in {p for pair in sides.values() for p in pair}:
        raise ValueError(f"policy {a!r} is in no row of the key")
    out, judged = Judgements(files=len(paths)), set()
    for path in paths:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = {"item_id", "judgement"} - set(reader.fieldnames or ())
            if missing:
                out.malformed.append(f"{path}:1: missing column(s) {', '.join(sorted(missing))}")
                continue
            seen: set[str] = set()
            end = reader.line_num
            for number, row in enumerate(reader, start=2):
                # a note's body may hold line breaks: a record starts on the line after the last one ended
                where, end = f"{path}:{end + 1} (row {number})", reader.line_num
                item, raw = (row.get("item_id") or "").strip(), (row.get("judgement") or "").strip().lower()
                if item not in sides:
                    out.malformed.append(f"{where}: unknown item_id {item!r}")
                elif item in seen:
                    out.malformed.append(f"{where}: {item} judged twice in this file")
                elif raw not in VERDICTS:
                    out.malformed.append(f"{where}: judgement {raw!r} is not left, right or same")
                else:
                    seen.add(item)
                    judged.add(item)
                    verdict = VERDICTS[raw]
                    winner = None if verdict == "same" else sides[item][0 if verdict == "left" else 1]
                    out.outcomes.append("S" if winner is None else ("G" if winner == a else "B"))
    out.unjudged = sorted(set(sides) - judged)
    return out


def gsb_summary(judgements: Judgements, a: str, b: str, rounds: int = 2000, seed: int = 0) -> dict:
    """Good/Same/Bad rates of ``a`` against ``b`` and GSB = (G − B)/(G + S + B) with its interval."""
    n = len(judgements.outcomes)
    counts = {k: judgements.outcomes.count(k) for k in "GSB"}
    report = {"a": a, "b": b, "files": judgements.files, "judgements": n, "malformed": len(judgements.malformed),
              "unjudged_items": len(judgements.unjudged),
              **{f"{k}_count": v for k, v in counts.items()}}
    if n == 0:
        return {**report, "gsb": None}
    score = np.array([{"G": 1.0, "S": 0.0, "B": -1.0}[o] for o in judgements.outcomes])
    interval = bootstrap_mean(score, rounds=rounds, seed=seed)
    return {**report, **{f"{k}_rate": round(v / n, 4) for k, v in counts.items()},
            "gsb": round(float(score.mean()), 4), "gsb_interval": [round(interval["lo"], 4), round(interval["hi"], 4)]}
