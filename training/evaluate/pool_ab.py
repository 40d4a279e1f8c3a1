"""A simulated A/B test of a published pool's arms, read through the online reader as a service would.

Each impression is a (user, note) view: the user is assigned an arm by the version's own traffic split
(:meth:`cmaq.pool.reader.Reader.assign`), the arm's cached queries for the note are read
(:meth:`~cmaq.pool.reader.Reader.get`) and the top one is shown; a note the arm serves nothing for
shows no suggestion. The world's oracle gives the shown query's true CTR and true expansion, and a
click is drawn from the true CTR. Per arm:

- ``impressions``: views the split sent to the arm;
- ``exposure``: the share of them that showed a suggestion;
- ``true_ctr``: the mean true CTR over the arm's impressions (0 where nothing was shown), the
  figure an A/B test estimates; ``clicks`` / ``observed_ctr``: what one simulated run observed;
- ``true_exp``: the mean true expansion of the shown suggestions.

This is evaluation code: the oracle is reached here, never by the serving job.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cmaq.pool.reader import Reader
from cmaq.world.oracle import Oracle
from training.evaluate.offline import oracle_scores

AB_COLUMNS = ("arm", "impressions", "exposure", "true_ctr", "clicks", "observed_ctr", "true_exp")


def shown_queries(reader: Reader, items: Sequence[dict], arms: Sequence[str]) -> dict[str, list[str | None]]:
    """Per arm, per note, the top cached query (None when the arm serves the note nothing)."""
    out = {}
    for arm in arms:
        hits = [reader.get(str(it["content_id"]), arm=arm) for it in items]
        out[arm] = [h.queries[0]["query"] if h.hit and h.queries else None for h in hits]
    return out


def simulate_pool_ab(reader: Reader, items: Sequence[dict], oracle: Oracle, users: int = 200,
                     seed: int = 0) -> pd.DataFrame:
    """One row per arm (columns ``AB_COLUMNS``): ``users`` simulated users each view every note of
    ``items`` once, in the arm the split assigns them."""
    if not items:
        raise ValueError("the simulated A/B needs at least one note")
    split = reader.split()
    if split is None:
        raise ValueError("the cache's current version serves no arms: nothing to compare")
    arms = sorted(split.weights)
    shown = shown_queries(reader, items, arms)
    per_arm_users = pd.Series([split.assign(f"user-{u:06d}") for u in range(users)]).value_counts()
    rng = np.random.default_rng(seed)
    rows = []
    # every user views every note once, so a mean over the notes is the mean over the arm's impressions
    for arm in arms:
        n_users = int(per_arm_users.get(arm, 0))
        served = [i for i, q in enumerate(shown[arm]) if q is not None]
        ctr = np.zeros(len(items))
        exp = np.full(len(items), np.nan)
        if served:
            c, e = oracle_scores(oracle, [items[i] for i in served], [shown[arm][i] for i in served])
            ctr[served], exp[served] = c, e
        impressions = n_users * len(items)
        clicks = int(rng.binomial(n_users, ctr).sum()) if n_users else 0
        rows.append({"arm": arm, "impressions": impressions,
                     "exposure": len(served) / len(items) if n_users else float("nan"),
                     "true_ctr": float(ctr.mean()) if n_users else float("nan"), "clicks": clicks,
                     "observed_ctr": clicks / impressions if impressions else float("nan"),
                     "true_exp": float(np.nanmean(exp)) if served and n_users else float("nan")})
    return pd.DataFrame(rows, columns=list(AB_COLUMNS))
