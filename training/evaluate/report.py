"""Writes the evaluation's tables (CSV and JSON), figures (PNG) and the reproduction report (Markdown)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from training.evaluate.claims import Verdict, judge
from training.evaluate.headline import judge_headline, note_blindness_by_arm, top1_figures
from training.evaluate.runs import RunRegistry
from training.evaluate.stats import pareto_front
from training.evaluate.style import style_summary
from training.evaluate.tables import (FIGURE7_PREFIX, PROXY_ITERATION, REFERENCE, SPACES, final_rows, hypervolumes,
                                      proxy_arm, reward_hacking, summarise, summarise_arms, with_chosen_iterations)

LABELS = {"rm": ("mean r_ctr (CTR RM)", "mean r_exp (expansion RM)"),
          "oracle": ("oracle true CTR", "oracle true expansion")}


def write_tables(out: Path, frames: dict[str, pd.DataFrame], verdicts: list[Verdict]) -> None:
    """Each frame as ``<name>.csv`` and ``<name>.json``; the verdicts (the paper's claims and the
    acceptance checks) in ``claims.json``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
        (out / f"{name}.json").write_text(frame.to_json(orient="records", indent=1, double_precision=6,
                                                        force_ascii=False))
    (out / "claims.json").write_text(json.dumps([v.to_dict() for v in verdicts], indent=1, default=float,
                                                ensure_ascii=False))


def _finish(fig, ax, space: str, title: str, path: Path) -> str:
    """Labels, legend and title of a one-panel front plot; saves it and returns its file name."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(LABELS[space][0])
    ax.set_ylabel(LABELS[space][1])
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_fronts(out: Path, summary: pd.DataFrame) -> list[str]:
    """One PNG per space: every method's final policies and front; one PNG of CMAQ's iterations."""
    # matplotlib only where figures are drawn: importing it costs seconds, and scoring never needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    final = final_rows(summary)
    final = final[~final["method"].str.startswith(FIGURE7_PREFIX)]
    for space, (x, y) in SPACES.items():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for i, (method, g) in enumerate(final.groupby("method", sort=False)):
            color, marker = f"C{i % 10}", "o" if method.startswith("cmaq") else "s"
            ax.scatter(g[x], g[y], label=method, s=26, color=color, marker=marker)
            front = pareto_front(g[[x, y]].to_numpy())
            if len(front) > 1:
                ax.plot(front[:, 0], front[:, 1], lw=1, color=color)
        written.append(_finish(fig, ax, space, f"Pareto fronts over α ({space} space)", out / f"fronts_{space}.png"))
    cmaq = summary[(summary["method"] == "cmaq") & (summary["iteration"] >= 1)]
    if not cmaq.empty:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (space, (x, y)) in zip(axes, SPACES.items()):
            for t, g in cmaq.groupby("iteration"):
                front = pareto_front(g[[x, y]].to_numpy())
                ax.plot(front[:, 0], front[:, 1], marker="o", label=f"iteration {t}")
            ax.set_xlabel(LABELS[space][0])
            ax.set_ylabel(LABELS[space][1])
            ax.set_title(f"CMAQ by iteration ({space})")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "cmaq_iterations.png", dpi=110)
        plt.close(fig)
        written.append("cmaq_iterations.png")
    return written


def plot_figure7(out: Path, summary: pd.DataFrame) -> list[str]:
    """Figure 7: CMAQ's front over α for every (k, γ) of the grid, one line each, per space."""
    fig7 = summary[summary["method"].str.startswith(FIGURE7_PREFIX)]
    if fig7.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for space, (x, y) in SPACES.items():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for i, (method, g) in enumerate(fig7.groupby("method", sort=True)):
            pts = pareto_front(g[[x, y]].to_numpy())
            ax.plot(pts[:, 0], pts[:, 1], marker="o", lw=1, color=f"C{i % 10}",
                    label=method.removeprefix("cmaq-").replace("-g", ", γ=").replace("k", "k=", 1))
        written.append(_finish(fig, ax, space, f"Figure 7: CMAQ's front over α by k and γ ({space} space)",
                               out / f"figure7_{space}.png"))
    return written


def _md_table(frame: pd.DataFrame, columns: list[str], digits: int = 4) -> str:
    cols = [c for c in columns if c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for _, r in frame.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, (float, np.floating)):
                cells.append("–" if np.isnan(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reward_model_lines(reward_models: dict) -> list[str]:
    """The report's reward-model section: held-out quality and whether each RM reads the note."""
    if not reward_models:
        return []

    def field(*path):
        """A cell: the value at ``path`` in an RM's metrics, or – where there is none."""
        def cell(metrics: dict) -> str:
            for key in path:
                if not isinstance(metrics, dict) or metrics.get(key) is None:
                    return "–"
                metrics = metrics[key]
            return f"{metrics:.4f}" if isinstance(metrics, float) else str(metrics)
        return cell

    def ece(metrics: dict) -> str:
        values = (metrics.get("calibration") or {}).get("ece") or {}
        return " / ".join(f"{values[m]:.4f}" if m in values else "–" for m in ("sigmoid", "minmax", "calibrated"))

    def same(*path):
        return field(*path), field(*path)

    def pair(first, second):
        return lambda metrics: f"{first(metrics)} / {second(metrics)}"

    strings_and_rows = pair(field("note_blindness", "strings_on_min_notes"),
                            field("note_blindness", "rows_of_those_strings"))
    rows = [("held-out accuracy (exp) / pair accuracy (CTR)", field("test_accuracy"), field("test_pair_accuracy")),
            ("test examples / pairs", field("test_examples"), field("test_pairs")),
            ("ensemble members", *same("members_count")),
            ("swapped-note accuracy", *same("swapped_note", "accuracy")),
            ("swapped-note pairs", *same("swapped_note", "pairs")),
            ("variance explained by the query string (QSA samples)",
             *same("note_blindness", "variance_explained_by_string")),
            ("… the oracle's, same samples", *same("note_blindness", "oracle_variance_explained_by_string")),
            ("strings on ≥ 5 notes / their rows", strings_and_rows, strings_and_rows),
            ("within-note Spearman with the oracle", *same("note_blindness", "within_note_spearman")),
            ("ECE sigmoid / minmax / calibrated", lambda m: "–", ece)]
    exp, ctr = reward_models.get("rm-exp", {}), reward_models.get("rm-ctr", {})
    lines = ["", "## Reward models (held-out notes)", "",
             "Swapped-note accuracy: the same query under two notes of one language and category, where the "
             "oracle's judgements differ clearly (CTR: |Δ logit| ≥ 1.6, 1 beyond what the oracle's per-note "
             "offsets can add; expansion: a related topic one note "
             "mentions and the other does not, |Δ true_exp| ≥ 0.3); the RM must order them as the oracle does. "
             "The note-blindness rows use k = 8 samples of QSA per held-out note.", "",
             "| metric | expansion RM | CTR RM |", "| --- | --- | --- |"]
    lines += [f"| {label} | {exp_cell(exp)} | {ctr_cell(ctr)} |" for label, exp_cell, ctr_cell in rows]
    return lines


def _verdict_lines(title: str, verdicts: list[Verdict]) -> list[str]:
    lines = [f"## {title}", "", "| check | statement | verdict |", "| --- | --- | --- |"]
    lines += [f"| ({v.claim}) | {v.statement} | **{v.verdict}** |" for v in verdicts]
    lines += [""]
    for v in verdicts:
        lines += [f"<details><summary>({v.claim}) evidence</summary>", "", "```json",
                  json.dumps(v.evidence, indent=1, default=float, ensure_ascii=False), "```", "</details>", ""]
    return lines


def training_lines(training: dict) -> list[str]:
    """Per seed and iteration of the headline CMAQ run: the reward gate's failures and the collapse
    guards on the probe set, as the run recorded them (no oracle)."""
    if not training:
        return []
    lines = ["## The headline CMAQ runs, iteration by iteration (probe set, no oracle)", "",
             "Gate: the share of sampled candidates the serving chain passed and its most frequent reasons; probe: "
             "distinct top-1 share, the most frequent top-1 string's share, beams passing, KL to QSA, the proxy "
             "(beams passing × lower-bound combined reward + distinct share) and the iteration it chose.", "",
             "| seed | iteration | pairs | gate pass rate | top gate reasons | distinct top-1 | top string (share) | "
             "beams passing | KL to QSA | proxy | served |", "|" + " --- |" * 11]
    for seed, metrics in sorted(training.items()):
        qsa = metrics.get("probe_qsa") or {}
        if qsa:
            lines.append(f"| {seed} | QSA | – | – | – | {qsa.get('distinct_top1_share')} | {qsa.get('top_string')} "
                         f"({qsa.get('top_string_share')}) | {qsa.get('beams_passing')} | 0 | {qsa.get('proxy')} | |")
        for it in metrics.get("iterations", []):
            gate, probe = it.get("gate") or {}, it.get("probe") or {}
            reasons = sorted((gate.get("reasons") or {}).items(), key=lambda kv: -kv[1])[:3]
            served = "**yes**" if it["iteration"] == metrics.get("selected_iteration") else ""
            lines.append(f"| {seed} | {it['iteration']} | {it.get('pairs', '–')} | {gate.get('pass_rate', '–')} | "
                         f"{', '.join(f'{k} {v}' for k, v in reasons) or '–'} | {probe.get('distinct_top1_share', '–')} | "
                         f"{probe.get('top_string', '–')} ({probe.get('top_string_share', '–')}) | "
                         f"{probe.get('beams_passing', '–')} | {probe.get('kl_to_qsa', '–')} | {probe.get('proxy', '–')} | "
                         f"{served} |")
    return lines + [""]


def registry_lines(entries: list[dict], frozen: dict) -> list[str]:
    """Every evaluated run (this one last), and the settings the first evaluation froze."""
    lines = ["## Every evaluated run", ""]
    if frozen:
        lines += [f"Fixed at the first oracle-space evaluation ({frozen.get('frozen_at')}): "
                  f"`{json.dumps(frozen.get('settings'), ensure_ascii=False)}`.", ""]
    lines += ["| run | when | settings | differs from the fixed settings | CMAQ ΔCTR (proxy arm) | checks |",
              "| --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        f = e.get("figures", {})
        checks = ", ".join(f"{k}: {v}" for k, v in (f.get("checks") or {}).items())
        lines.append(f"| {e['run']} | {e['when']} | `{json.dumps(e['settings'], ensure_ascii=False)}` | "
                     f"{'; '.join(e['differs_from_fixed']) or 'none'} | {f.get('cmaq_delta_ctr', '–')} | {checks} |")
    return lines + [""]


def write_report(path: Path, tables: dict[str, pd.DataFrame], verdicts: list[Verdict], checks: list[Verdict],
                 provenance: dict, figures: list[str], figure_dir: str, reward_models: dict | None = None,
                 training: dict | None = None, registry: tuple[list[dict], dict] = ([], {}),
                 headline_alpha: float = 0.4) -> None:
    """``reports/reproduction.md``: provenance, the acceptance checks, the paper's claims, the tables
    (means over seeds, then per seed), the training runs' guards, reward hacking, the RMs, every run."""
    arms, by_seed = tables["summary"], tables["summary_by_seed"]
    lines = ["# CMAQ on the synthetic world: reproduction report", ""]
    lines += ["Generated by `make reproduce` (`cmaq reproduce`); every verdict below is computed by",
              "`training/evaluate/headline.py` and `claims.py` from the tables in this directory, never written by hand.",
              ""]
    lines += ["## Provenance", ""] + [f"- **{k}**: {v}" for k, v in provenance.items()] + [""]
    lines += _verdict_lines("Acceptance checks (issue 18)", checks)
    lines += _verdict_lines("The paper's claims", verdicts)
    lines += ["## Policies: means over training seeds (beam top-1 on the held-out contents)", "",
              "r_* are the reward models' means, true_* the oracle's; `combined` is r_exp^α·r_ctr^(1−α) at the "
              "policy's α, `combined_gain` its mean paired difference from QSA's at that α (with its bootstrap "
              "standard error); `exposed_ctr` / `exposed_exp` are the oracle's CTR and expansion of what the simulated "
              "A/B shows (the first beam candidate passing the nightly's serving chain, 0 when none does); ΔCTR is "
              "relative to QSA with a 95% interval that resamples seeds and contents together, `delta_ctr_seed_sd` the "
              "spread of the seeds' own ΔCTR and `delta_ctr_seed_t_lo/hi` a t-interval over them (with three seeds a "
              "resample of seeds has only ten distinct draws, so the bootstrap's interval understates their spread). "
              f"`{proxy_arm(headline_alpha)}` is each seed's proxy-chosen iteration.", ""]
    lines.append(_md_table(arms, ["policy", "seeds", "r_ctr", "r_exp", "combined", "combined_gain", "true_ctr",
                                  "true_exp", "exposed_ctr", "exposed_exp", "exposure_rate", "delta_ctr",
                                  "delta_ctr_lo", "delta_ctr_hi", "delta_ctr_seed_sd", "delta_ctr_seed_t_lo",
                                  "delta_ctr_seed_t_hi"]))
    lines += ["", "Collapse and style on the held-out notes (means over seeds): `distinct_top1_share`, the most "
              "frequent top-1 string's `top_string_share`, and `own_kind_share`, the share of top beams that are the "
              "note's own kind of query (one of its grammar queries other than the shop-name, title and near copies, "
              "or within normalised edit similarity 0.8 of one).", ""]
    lines.append(_md_table(arms, ["policy", "distinct_top1_share", "top_string_share", "own_kind_share"]))
    blind = tables.get("note_blindness")
    if blind is not None and not blind.empty:
        lines += ["", "Note-blindness of each policy's top-1 queries (pooled over seeds): the share of each score's "
                  "variance explained by the query string alone, over strings shown under ≥ 5 notes (– where fewer "
                  "than 2 such strings); an RM far above the oracle scores the string, not the note.", ""]
        lines.append(_md_table(blind, ["policy", "strings", "rows", "eta2_r_ctr", "eta2_true_ctr", "eta2_r_exp",
                                       "eta2_true_exp"]))
    lines += ["", "### Per seed", ""]
    lines.append(_md_table(by_seed, ["policy", "r_ctr", "r_exp", "true_ctr", "true_exp", "exposed_ctr",
                                     "exposure_rate", "delta_ctr", "delta_ctr_lo", "delta_ctr_hi"]))
    lines += [""] + training_lines(training or {})
    points = tables.get("proxy_points")
    if points is not None and not points.empty:
        lines += ["## The proxy's choices in hindsight", "",
                  "Each (seed, iteration) of the headline CMAQ: the proxy it recorded during training and the "
                  "oracle's exposed CTR on the held-out notes.", ""]
        lines.append(_md_table(points, ["seed", "iteration", "proxy", "exposed_ctr", "chosen"]))
        lines.append("")
    hv = tables["hypervolume"]
    lines += [f"## Hypervolume (reference point {REFERENCE}, both spaces; means over the seeds every point has)", ""]
    lines.append(_md_table(hv, ["method", "points", "hv_rm", "front_rm", "hv_oracle", "front_oracle"], 5))
    hacking = tables["reward_hacking"]
    lines += ["", "## Reward-hacking check (means over seeds)", ""]
    if hacking.empty:
        lines.append("No policy raised a reward model's score over QSA while the oracle's score of the same "
                     "objective fell.")
    else:
        lines.append("These policies raised a reward model's score over QSA while the oracle's score of the "
                     "same objective **fell** — the reward model was fooled:")
        lines += ["", _md_table(hacking, ["policy", "objective", "rm_change", "oracle_change"], 4)]
    lines += reward_model_lines(reward_models or {})
    lines += [""] + registry_lines(*registry)
    lines += ["## Figures", ""] + [f"![{f}]({figure_dir}/{f})" for f in figures] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def arm_tables(rows: pd.DataFrame, rounds: int, seed: int, world, top1: pd.DataFrame) -> pd.DataFrame:
    """The means over seeds with each arm's collapse figures (means of its seeds') and style (pooled)."""
    arms = summarise_arms(rows, rounds, seed)
    collapse = top1.groupby("arm", sort=False)[["distinct_top1_share", "top_string_share"]].mean()
    arms = arms.merge(collapse, left_on="policy", right_index=True, how="left")
    if world is not None:
        style = style_summary(rows.assign(policy=rows["arm"]), world)[["policy", "own_kind_share"]]
        arms = arms.merge(style, on="policy", how="left")
    return arms


def write_evaluation(rows, report_dir: Path, provenance: dict, rounds: int, seed: int,
                     reward_models: dict | None = None, world: str | Path | None = None,
                     training: dict | None = None, headline_alpha: float = 0.4, iterations: int | None = None,
                     protocol: str = "headline", full_seeds: list[int] = (), registry: RunRegistry | None = None,
                     differences: list[str] = (), settings: dict | None = None) -> dict:
    """Tables, figures, verdicts and the Markdown report from the per-content rows of every policy.

    ``reward_models``: each RM's metrics (the reward-model section); ``world``: its answer key (the share of
    top beams that are the note's own kind of query); ``training``: per seed, the headline CMAQ run's
    metrics.json (its proxy's choice, gate failures and probe figures); ``registry``: where this run is
    recorded beside every earlier one (``differences``: its departures from the fixed settings). With the
    full protocol the fronts, hypervolumes and the paper's claims compare policies on the seeds every one of
    them has (``full_seeds``), so a 3-seed point never meets a 1-seed one."""
    training = training or {}
    if "arm" not in rows:  # rows of one seed written before seeds existed (`cmaq eval policies`)
        rows = rows.assign(arm=rows["policy"], seed=-1)
    chosen = {int(s): int(m["selected_iteration"]) for s, m in training.items() if m.get("selected_iteration")}
    rows = with_chosen_iterations(rows, chosen, headline_alpha)
    iterations = iterations or int(rows["iteration"].max())
    by_seed = summarise(rows, rounds, seed)
    top1 = top1_figures(rows)
    arms = arm_tables(rows, rounds, seed, world, top1)
    alike = arms
    if protocol == "full" and full_seeds:
        shared = rows[rows["seed"].isin([-1, *full_seeds])]
        alike = arm_tables(shared, rounds, seed, world, top1[top1["seed"].isin([-1, *full_seeds])])
    hv = hypervolumes(alike)
    hacking = reward_hacking(arms)
    verdicts = judge(alike, hv)
    checks, points = judge_headline(arms, rows, hv, training, headline_alpha, iterations, protocol, top1)
    tables = {"summary": arms, "summary_by_seed": by_seed, "hypervolume": hv, "reward_hacking": hacking,
              "top1": top1, "proxy_points": points, "note_blindness": note_blindness_by_arm(rows)}
    folder = report_dir / "reproduction"
    write_tables(folder, {k: v.drop(columns=[c for c in ("delta_ctr_by_seed",) if c in v]) for k, v in tables.items()},
                 [*checks, *verdicts])
    rows.to_parquet(folder / "rows.parquet", index=False)
    figures = plot_fronts(folder, alike) + plot_figure7(folder, alike)
    entries, frozen = [], {}
    if registry is not None:
        cmaq = arms[arms["policy"] == proxy_arm(headline_alpha)]
        registry.record(settings or {}, list(differences),
                        {"cmaq_delta_ctr": None if cmaq.empty else round(float(cmaq["delta_ctr"].iloc[0]), 4),
                         "checks": {v.claim: v.verdict for v in checks}})
        entries, frozen = registry.entries(), registry.frozen()
    write_report(report_dir / "reproduction.md", tables, verdicts, checks, provenance, figures, "reproduction",
                 reward_models, training, (entries, frozen), headline_alpha)
    evaluated = by_seed[by_seed["iteration"] != PROXY_ITERATION]
    return {"report": str(report_dir / "reproduction.md"), "claims": {v.claim: v.verdict for v in verdicts},
            "checks": {v.claim: v.verdict for v in checks}, "policies": len(evaluated)}
