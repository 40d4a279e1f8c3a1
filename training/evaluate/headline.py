"""Issue 18's acceptance points, judged from the evaluation's rows and the training runs' own records.

Each check returns a :class:`~training.evaluate.claims.Verdict` (``met``, ``not met`` or ``not tested``)
with the numbers it used; nothing here is written by hand into the report.

- **ab**: CMAQ at the headline α, served at each seed's proxy-chosen iteration, against QSA in the
  simulated A/B: ΔCTR > 0 with its 95% interval (seeds × contents) above 0, exposure ≥ QSA's, exposed true
  expansion ≥ QSA's;
- **collapse**: at every iteration of every seed, the distinct top-1 share on the held-out notes ≥ half of
  QSA's and no top-1 string under more than 10% of notes;
- **proxy**: over CMAQ's (seed, iteration) points, Spearman(proxy, oracle exposed CTR) ≥ 0.5, and the proxy's
  choice's mean ΔCTR over seeds ≥ the last iteration's;
- **hypervolume** (full protocol): CMAQ's oracle-space hypervolume ≥ each baseline's;
- **hacking**: reward hacking (RM up, oracle down, same objective) on at most a quarter of the (headline
  policy at its chosen iteration, objective) pairs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from training.evaluate.claims import Verdict
from training.evaluate.rm_checks import MIN_NOTES, variance_explained
from training.evaluate.tables import CONTROL, proxy_arm, reward_hacking
from training.reward_models.train import spearman

MET, NOT_MET, NOT_TESTED = "met", "not met", "not tested"
COLLAPSE_DISTINCT_RATIO, COLLAPSE_TOP_SHARE = 0.5, 0.10
PROXY_SPEARMAN = 0.5
HACKING_SHARE = 0.25
BASELINES = ("dpo", "dpo-lw", "dpo-soup", "morl")


def _at_least(a: float, b: float) -> bool:
    """a ≥ b up to float rounding (means of the same numbers in another order differ in the last bits)."""
    return bool(a >= b or np.isclose(a, b, rtol=1e-9, atol=1e-12))


def _verdict(ok: bool) -> str:
    return MET if ok else NOT_MET


def _arm(arms: pd.DataFrame, name: str) -> pd.Series | None:
    row = arms[arms["policy"] == name]
    return None if row.empty else row.iloc[0]


def top1_figures(rows: pd.DataFrame) -> pd.DataFrame:
    """Per evaluated policy (one seed, one iteration): distinct top-1 share and the most frequent top-1
    string's share over the held-out notes."""
    out = []
    for policy, g in rows.groupby("policy", sort=False):
        counts = g["query"].value_counts()
        out.append({"policy": policy, "arm": g["arm"].iloc[0], "seed": int(g["seed"].iloc[0]),
                    "method": g["method"].iloc[0], "alpha": g["alpha"].iloc[0], "iteration": int(g["iteration"].iloc[0]),
                    "distinct_top1_share": len(counts) / len(g), "top_string": counts.index[0],
                    "top_string_share": counts.iloc[0] / len(g)})
    return pd.DataFrame(out)


def note_blindness_by_arm(rows: pd.DataFrame) -> pd.DataFrame:
    """Per arm, over its top-1 strings shown under ≥ MIN_NOTES notes (all seeds pooled): η² of each RM's score
    and of the oracle's (None where fewer than 2 such strings)."""
    out = []
    for arm, g in rows.groupby("arm", sort=False):
        notes = g.groupby("query")["content_id"].nunique()
        common = g[g["query"].isin(notes[notes >= MIN_NOTES].index)]
        rec = {"policy": arm, "strings": int(common["query"].nunique()), "rows": len(common)}
        for column in ("r_ctr", "true_ctr", "r_exp", "true_exp"):
            value = variance_explained(common, column) if rec["strings"] >= 2 else float("nan")
            rec[f"eta2_{column}"] = None if value != value else round(value, 4)
        out.append(rec)
    return pd.DataFrame(out)


def _cmaq(frame: pd.DataFrame, alpha: float) -> pd.DataFrame:
    return frame[(frame["method"] == "cmaq") & np.isclose(frame["alpha"].astype(float), alpha)
                 & (frame["iteration"] >= 1)]


def check_ab(arms: pd.DataFrame, alpha: float) -> Verdict:
    statement = (f"CMAQ α={alpha:g} (proxy-chosen iteration) vs QSA: ΔCTR > 0 with its 95% interval above 0, "
                 "exposure ≥ QSA's, exposed true expansion ≥ QSA's")
    cmaq, qsa = _arm(arms, proxy_arm(alpha)), _arm(arms, CONTROL)
    if cmaq is None or qsa is None:
        return Verdict("ab", statement, NOT_TESTED)
    evidence = {"delta_ctr": float(cmaq["delta_ctr"]), "interval": [float(cmaq["delta_ctr_lo"]),
                                                                    float(cmaq["delta_ctr_hi"])],
                "delta_ctr_by_seed": cmaq.get("delta_ctr_by_seed"), "seed_sd": float(cmaq["delta_ctr_seed_sd"]),
                "exposure": {"cmaq": float(cmaq["exposure_rate"]), "qsa": float(qsa["exposure_rate"])},
                "exposed_true_exp": {"cmaq": float(cmaq["exposed_exp"]), "qsa": float(qsa["exposed_exp"])}}
    ok = (cmaq["delta_ctr"] > 0 and cmaq["delta_ctr_lo"] > 0 and _at_least(cmaq["exposure_rate"], qsa["exposure_rate"])
          and _at_least(cmaq["exposed_exp"], qsa["exposed_exp"]))
    return Verdict("ab", statement, _verdict(bool(ok)), evidence)


def check_collapse(top1: pd.DataFrame, alpha: float) -> Verdict:
    statement = (f"every iteration of every seed (CMAQ α={alpha:g}, held-out notes): distinct top-1 share ≥ "
                 f"{COLLAPSE_DISTINCT_RATIO:g} × QSA's, no top-1 string under more than {COLLAPSE_TOP_SHARE:.0%} of notes")
    qsa, cmaq = top1[top1["method"] == CONTROL], _cmaq(top1, alpha)
    if qsa.empty or cmaq.empty:
        return Verdict("collapse", statement, NOT_TESTED)
    floor = COLLAPSE_DISTINCT_RATIO * float(qsa["distinct_top1_share"].iloc[0])
    points = [{"seed": int(r.seed), "iteration": int(r.iteration), "distinct_top1_share": round(r.distinct_top1_share, 4),
               "top_string": r.top_string, "top_string_share": round(r.top_string_share, 4)}
              for r in cmaq.sort_values(["seed", "iteration"]).itertuples()]
    ok = all(p["distinct_top1_share"] >= floor and p["top_string_share"] <= COLLAPSE_TOP_SHARE for p in points)
    return Verdict("collapse", statement, _verdict(ok), {"qsa_distinct_top1_share": float(qsa["distinct_top1_share"].iloc[0]),
                                                         "floor": floor, "points": points})


def proxy_points(rows: pd.DataFrame, training: dict, alpha: float) -> pd.DataFrame:
    """CMAQ's (seed, iteration) points: the probe proxy each iteration recorded, the oracle's exposed CTR on
    the held-out notes, and whether the proxy chose it."""
    exposed = _cmaq(rows, alpha).groupby(["seed", "iteration"])["exposed_true_ctr"].mean()
    out = []
    for seed, metrics in training.items():
        for it in metrics.get("iterations", []):
            t, probe = int(it["iteration"]), it.get("probe") or {}
            if (int(seed), t) in exposed.index and "proxy" in probe:
                out.append({"seed": int(seed), "iteration": t, "proxy": probe["proxy"],
                            "exposed_ctr": float(exposed.loc[(int(seed), t)]),
                            "chosen": t == metrics.get("selected_iteration")})
    return pd.DataFrame(out, columns=["seed", "iteration", "proxy", "exposed_ctr", "chosen"])


def check_proxy(points: pd.DataFrame, arms: pd.DataFrame, alpha: float, iterations: int) -> Verdict:
    statement = (f"the proxy tracks the truth (CMAQ α={alpha:g}): Spearman(proxy, oracle exposed CTR) over (seed, "
                 f"iteration) ≥ {PROXY_SPEARMAN:g}, and its choice's mean ΔCTR over seeds ≥ the last iteration's")
    chosen, last = _arm(arms, proxy_arm(alpha)), _arm(arms, f"cmaq-a{alpha:g}-it{iterations}")
    if len(points) < 3 or chosen is None or last is None:
        return Verdict("proxy", statement, NOT_TESTED, {"points": len(points)})
    rho = spearman(points["proxy"], points["exposed_ctr"])
    # The check pools the seeds, as the issue states it; the proxy only has to rank one seed's iterations, so
    # the mean within-seed correlation is shown beside it.
    within = [spearman(g["proxy"], g["exposed_ctr"]) for _, g in points.groupby("seed") if len(g) >= 2]
    within = [x for x in within if x == x]
    evidence = {"spearman": None if rho != rho else round(float(rho), 4),
                "within_seed_spearman_mean": round(float(np.mean(within)), 4) if within else None,
                "points": points.to_dict("records"),
                "chosen_delta_ctr": float(chosen["delta_ctr"]), "last_delta_ctr": float(last["delta_ctr"])}
    ok = rho == rho and rho >= PROXY_SPEARMAN and _at_least(chosen["delta_ctr"], last["delta_ctr"])
    return Verdict("proxy", statement, _verdict(bool(ok)), evidence)


def check_hypervolume(hv: pd.DataFrame, protocol: str) -> Verdict:
    statement = "oracle space (full protocol): CMAQ's hypervolume ≥ each baseline's"
    if protocol != "full":
        return Verdict("hypervolume", statement, NOT_TESTED, {"why": "the headline protocol has one α per method"})
    values = dict(zip(hv["method"], hv["hv_oracle"]))
    if "cmaq" not in values:
        return Verdict("hypervolume", statement, NOT_TESTED)
    others = {m: float(values[m]) for m in BASELINES if m in values}
    return Verdict("hypervolume", statement, _verdict(all(_at_least(values["cmaq"], v) for v in others.values())),
                   {"cmaq": float(values["cmaq"]), **others})


def check_hacking(arms: pd.DataFrame, alpha: float) -> Verdict:
    statement = (f"reward hacking (RM up, oracle down, same objective) on at most {HACKING_SHARE:.0%} of the "
                 "(headline policy at its chosen iteration, objective) pairs")
    names = ["dpo", f"morl-a{alpha:g}", proxy_arm(alpha)]
    headline = arms[arms["policy"].isin([CONTROL, *names])]
    present = [n for n in names if n in set(headline["policy"])]
    if not present or CONTROL not in set(headline["policy"]):
        return Verdict("hacking", statement, NOT_TESTED)
    hacked = reward_hacking(headline)
    share = len(hacked) / (2 * len(present))
    return Verdict("hacking", statement, _verdict(share <= HACKING_SHARE),
                   {"pairs": 2 * len(present), "hacked": hacked.to_dict("records"), "share": round(share, 4)})


def judge_headline(arms: pd.DataFrame, rows: pd.DataFrame, hv: pd.DataFrame, training: dict, alpha: float,
                   iterations: int, protocol: str, top1: pd.DataFrame) -> tuple[list[Verdict], pd.DataFrame]:
    """Every acceptance verdict and the proxy's points (``top1``: :func:`top1_figures` of ``rows``)."""
    points = proxy_points(rows, training, alpha)
    verdicts = [check_ab(arms, alpha), check_collapse(top1, alpha), check_proxy(points, arms, alpha, iterations),
                check_hypervolume(hv, protocol), check_hacking(arms, alpha)]
    return verdicts, points
