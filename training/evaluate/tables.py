"""From per-content rows (`offline.evaluate_policy`) to the report's tables: one row per policy,
Pareto fronts with hypervolumes, and the simulated A/B against QSA."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from cmaq.rewards import combine
from training.evaluate.stats import (bootstrap_mean, bootstrap_relative_delta, bootstrap_seeds_contents_delta,
                                     bootstrap_seeds_contents_mean, hypervolume_2d, pareto_front)

#: Objective pairs (x = CTR, y = expansion) per space; the reference point of each is the origin: every
#: score is a probability, so (0, 0) is dominated by anything and stays fixed across runs.
SPACES = {"rm": ("r_ctr", "r_exp"), "oracle": ("true_ctr", "true_exp")}
REFERENCE = (0.0, 0.0)
MULTI_OBJECTIVE = ("cmaq", "dpo-lw", "dpo-soup", "morl")
SINGLE_OBJECTIVE = ("dpo",)
ABLATIONS = ("cmaq-wo-ot", "cmaq-wo-cds", "cmaq-wo-ct")
CONTROL = "qsa"


def combined(r_exp, r_ctr, alpha: float) -> np.ndarray:
    return combine(np.asarray(r_exp, float), np.asarray(r_ctr, float), alpha)


def score_means(g: pd.DataFrame, alpha) -> dict:
    """One policy's (or arm's) mean scores over its rows: both RMs, the oracle, the combined reward at
    ``alpha`` (NaN without one), the exposed query's CTR and the exposure rate."""
    rec = {col: float(g[col].mean()) for col in ("r_exp", "r_ctr", "true_exp", "true_ctr")}
    rec["combined"] = float(combined(g["r_exp"], g["r_ctr"], alpha).mean()) if pd.notna(alpha) else np.nan
    rec["exposed_ctr"] = float(g["exposed_true_ctr"].mean())
    rec["exposure_rate"] = float(g["exposed_query"].notna().mean())
    return rec


def summarise(rows: pd.DataFrame, rounds: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per policy: means of the four scores, the combined reward at the policy's α, the exposed
    (A/B) CTR and its relative change against QSA with a paired bootstrap interval."""
    control = rows[rows["method"] == CONTROL].set_index("content_id")
    out = []
    for name, g in rows.groupby("policy", sort=False):
        g = g.set_index("content_id")
        alpha = g["alpha"].iloc[0]
        rec = {"policy": name, "method": g["method"].iloc[0], "alpha": alpha, "iteration": int(g["iteration"].iloc[0]),
               "contents": len(g), **score_means(g, alpha)}
        if len(control) and name != control["policy"].iloc[0]:
            c = control.loc[g.index]
            if pd.notna(alpha):  # the combined reward's gain over QSA at this α, paired by content
                gain = combined(g["r_exp"], g["r_ctr"], alpha) - combined(c["r_exp"], c["r_ctr"], alpha)
                b = bootstrap_mean(gain, rounds, seed)
                rec.update(combined_gain=b["mean"], combined_gain_se=b["se"])
            d = bootstrap_relative_delta(g["exposed_true_ctr"], c["exposed_true_ctr"], rounds, seed)
            rec.update(delta_ctr=d["delta"], delta_ctr_lo=d["lo"], delta_ctr_hi=d["hi"])
            rec["exposed_ctr_se"] = bootstrap_mean(g["exposed_true_ctr"], rounds, seed)["se"]
        else:
            rec.update(delta_ctr=0.0, delta_ctr_lo=0.0, delta_ctr_hi=0.0)
        out.append(rec)
    return pd.DataFrame(out)


#: Figure 7's policies: CMAQ at one (k, γ), named by :func:`figure7_name`.
FIGURE7_PREFIX = "cmaq-k"
#: The iteration label of the proxy's arm (real iterations count from 1; other methods have -1).
PROXY_ITERATION = 0


def figure7_name(k: int, gamma: float) -> str:
    return f"{FIGURE7_PREFIX}{k}-g{gamma:g}"


def proxy_arm(alpha: float) -> str:
    """The arm of CMAQ at ``alpha`` served at each seed's proxy-chosen iteration."""
    return f"cmaq-a{alpha:g}-proxy"


def with_chosen_iterations(rows: pd.DataFrame, chosen: dict[int, int], alpha: float) -> pd.DataFrame:
    """``rows`` plus the arm :func:`proxy_arm`: for every seed in ``chosen`` (seed → iteration its proxy
    chose), the rows of CMAQ at ``alpha`` and that iteration (iteration 0 marks the arm)."""
    picked = [rows[(rows["method"] == "cmaq") & np.isclose(rows["alpha"].astype(float), alpha)
                   & (rows["seed"] == s) & (rows["iteration"] == t)] for s, t in chosen.items()]
    picked = [p for p in picked if len(p)]
    if not picked:
        return rows
    arm = pd.concat(picked).assign(arm=proxy_arm(alpha), iteration=PROXY_ITERATION)
    arm["policy"] = arm["arm"] + "-s" + arm["seed"].astype(str)
    return pd.concat([rows, arm], ignore_index=True)


def _by_seed(g: pd.DataFrame, column: str, contents: pd.Index) -> np.ndarray:
    """``column`` of one arm's rows as a (seeds, contents) matrix in the order of ``contents``."""
    return g.pivot(index="seed", columns="content_id", values=column)[contents].to_numpy(float)


def seed_t_interval(per_seed: list[float], level: float = 0.95) -> dict:
    """A t-interval over the seeds' own values: with few seeds, resampling them understates their spread
    (three seeds give ten distinct resamples), so the report shows this one beside the bootstrap's."""
    n = len(per_seed)
    if n < 2:
        return {"delta_ctr_seed_t_lo": np.nan, "delta_ctr_seed_t_hi": np.nan}
    mean, half = float(np.mean(per_seed)), float(student_t.ppf((1 + level) / 2, n - 1) * np.std(per_seed, ddof=1)
                                               / np.sqrt(n))
    return {"delta_ctr_seed_t_lo": mean - half, "delta_ctr_seed_t_hi": mean + half}


def summarise_arms(rows: pd.DataFrame, rounds: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per arm (a policy's seeds together): the means over seeds and contents of
    :func:`summarise`'s scores; ΔCTR against QSA and the combined reward's gain with intervals that resample
    seeds and contents together; ``delta_ctr_seed_sd`` the spread of the seeds' own ΔCTR, and the exposed
    queries' true expansion (``exposed_exp``, ``delta_exp``)."""
    control = rows[rows["method"] == CONTROL]
    contents = pd.Index(sorted(control["content_id"].unique() if len(control) else rows["content_id"].unique()))
    c = {col: _by_seed(control, col, contents) for col in ("exposed_true_ctr", "exposed_true_exp", "r_exp", "r_ctr")} \
        if len(control) else {}
    out = []
    for arm, g in rows.groupby("arm", sort=False):
        alpha = g["alpha"].iloc[0]
        rec = {"policy": arm, "method": g["method"].iloc[0], "alpha": alpha, "iteration": int(g["iteration"].iloc[0]),
               "seeds": int(g["seed"].nunique()), "contents": int(g["content_id"].nunique()), **score_means(g, alpha),
               "exposed_exp": float(g["exposed_true_exp"].mean())}
        if c and rec["method"] != CONTROL:
            m = {col: _by_seed(g, col, contents) for col in c}
            if pd.notna(alpha):
                gain = combined(m["r_exp"], m["r_ctr"], alpha) - combined(c["r_exp"], c["r_ctr"], alpha)
                b = bootstrap_seeds_contents_mean(gain, rounds, seed)
                rec.update(combined_gain=b["mean"], combined_gain_se=b["se"])
            d = bootstrap_seeds_contents_delta(m["exposed_true_ctr"], c["exposed_true_ctr"], rounds, seed)
            rec.update(delta_ctr=d["delta"], delta_ctr_lo=d["lo"], delta_ctr_hi=d["hi"], delta_ctr_seed_sd=d["seed_sd"],
                       delta_ctr_by_seed=d["seed_deltas"], **seed_t_interval(d["seed_deltas"]))
            e = bootstrap_seeds_contents_delta(m["exposed_true_exp"], c["exposed_true_exp"], rounds, seed)
            rec.update(delta_exp=e["delta"], delta_exp_lo=e["lo"], delta_exp_hi=e["hi"])
        else:
            rec.update(delta_ctr=0.0, delta_ctr_lo=0.0, delta_ctr_hi=0.0, delta_ctr_seed_sd=0.0, delta_exp=0.0,
                       delta_exp_lo=0.0, delta_exp_hi=0.0)
        out.append(rec)
    return pd.DataFrame(out)


def final_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Each method's final policies: for iterated methods only the last iteration (never the proxy's arm)."""
    summary = summary[summary["iteration"] != PROXY_ITERATION]
    last = summary.groupby(["method", "alpha"], dropna=False)["iteration"].transform("max")
    return summary[summary["iteration"] == last]


def hypervolumes(summary: pd.DataFrame) -> pd.DataFrame:
    """Hypervolume of each method's front (its final policies over the α grid), per space, plus one
    row per CMAQ iteration (``method = cmaq@it<t>``)."""
    final = final_rows(summary)
    groups = [(m, g) for m, g in final.groupby("method", sort=False)]
    cmaq = summary[summary["method"] == "cmaq"]
    groups += [(f"cmaq@it{t}", g) for t, g in cmaq.groupby("iteration") if t >= 1]
    recs = []
    for method, g in groups:
        rec = {"method": method, "points": len(g)}
        for space, (x, y) in SPACES.items():
            pts = g[[x, y]].to_numpy()
            rec[f"hv_{space}"] = hypervolume_2d(pts, REFERENCE)
            rec[f"front_{space}"] = len(pareto_front(pts))
        recs.append(rec)
    return pd.DataFrame(recs)


def reward_hacking(summary: pd.DataFrame) -> pd.DataFrame:
    """Policies whose reward-model score rose over QSA's while the oracle's score of the same
    objective fell: the RM was fooled, not the users pleased."""
    control = summary[summary["method"] == CONTROL]
    if control.empty:
        return pd.DataFrame(columns=["policy", "objective", "rm_change", "oracle_change"])
    base = control.iloc[0]
    recs = []
    for _, r in summary[summary["method"] != CONTROL].iterrows():
        for objective, rm_col, true_col in (("ctr", "r_ctr", "true_ctr"), ("expansion", "r_exp", "true_exp")):
            rm_change, oracle_change = r[rm_col] - base[rm_col], r[true_col] - base[true_col]
            if rm_change > 0 and oracle_change < 0:
                recs.append({"policy": r["policy"], "objective": objective, "rm_change": float(rm_change),
                             "oracle_change": float(oracle_change)})
    return pd.DataFrame(recs, columns=["policy", "objective", "rm_change", "oracle_change"])
