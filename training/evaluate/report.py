"""Writes the evaluation's tables (CSV and JSON), figures (PNG) and the reproduction report (Markdown)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from training.evaluate.claims import Verdict, judge
from training.evaluate.stats import pareto_front
from training.evaluate.style import style_summary
from training.evaluate.tables import REFERENCE, SPACES, final_rows, hypervolumes, reward_hacking, summarise

LABELS = {"rm": ("mean r_ctr (CTR RM)", "mean r_exp (expansion RM)"),
          "oracle": ("oracle true CTR", "oracle true expansion")}


def write_tables(out: Path, summary: pd.DataFrame, hv: pd.DataFrame, hacking: pd.DataFrame,
                 verdicts: list[Verdict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("summary", summary), ("hypervolume", hv), ("reward_hacking", hacking)):
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
        (out / f"{name}.json").write_text(frame.to_json(orient="records", indent=1, double_precision=6))
    (out / "claims.json").write_text(json.dumps([v.to_dict() for v in verdicts], indent=1, default=float))


def plot_fronts(out: Path, summary: pd.DataFrame) -> list[str]:
    """One PNG per space: every method's final policies and front; one PNG of CMAQ's iterations."""
    # matplotlib only where figures are drawn: importing it costs seconds, and scoring never needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    final = final_rows(summary)
    for space, (x, y) in SPACES.items():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for i, (method, g) in enumerate(final.groupby("method", sort=False)):
            color, marker = f"C{i % 10}", "o" if method.startswith("cmaq") else "s"
            ax.scatter(g[x], g[y], label=method, s=26, color=color, marker=marker)
            front = pareto_front(g[[x, y]].to_numpy())
            if len(front) > 1:
                ax.plot(front[:, 0], front[:, 1], lw=1, color=color)
        ax.set_xlabel(LABELS[space][0])
        ax.set_ylabel(LABELS[space][1])
        ax.set_title(f"Pareto fronts over α ({space} space)")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        name = f"fronts_{space}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
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


def write_report(path: Path, summary: pd.DataFrame, hv: pd.DataFrame, hacking: pd.DataFrame,
                 verdicts: list[Verdict], provenance: dict, figures: list[str], figure_dir: str,
                 reward_models: dict | None = None) -> None:
    """``reports/reproduction.md``: provenance, the verdict per claim, tables, figures, reward hacking."""
    lines = ["# CMAQ on the synthetic world: reproduction report", ""]
    lines += ["Generated by `make reproduce` (`cmaq reproduce`); every verdict below is computed by",
              "`training/evaluate/claims.py` from the tables in this directory, never written by hand.", ""]
    lines += ["## Provenance", ""] + [f"- **{k}**: {v}" for k, v in provenance.items()] + [""]
    lines += ["## The paper's claims", "", "| claim | statement | verdict |", "| --- | --- | --- |"]
    lines += [f"| ({v.claim}) | {v.statement} | **{v.verdict}** |" for v in verdicts]
    lines += [""]
    for v in verdicts:
        lines += [f"<details><summary>({v.claim}) evidence</summary>", "", "```json",
                  json.dumps(v.evidence, indent=1, default=float), "```", "</details>", ""]
    lines += ["## Policies (beam top-1 on the held-out contents)", "",
              "r_* are the reward models' means, true_* the oracle's; `combined` is r_exp^α·r_ctr^(1−α) at the "
              "policy's α, `combined_gain` its mean paired difference from QSA's at that α (with its bootstrap "
              "standard error); `exposed_ctr` is the oracle's CTR of what the simulated A/B shows (first beam "
              "candidate passing the nightly's serving chain, 0 when none does); ΔCTR is relative to QSA with a paired "
              "95% bootstrap interval.", ""]
    lines.append(_md_table(summary, ["policy", "r_ctr", "r_exp", "combined", "combined_gain", "combined_gain_se",
                                     "true_ctr", "true_exp", "exposed_ctr", "exposure_rate", "delta_ctr",
                                     "delta_ctr_lo", "delta_ctr_hi"]))
    if "own_kind_share" in summary:
        lines += ["", "Query style: `own_kind_share` is the share of top beams that are the note's own kind of "
                  "query (one of its grammar queries other than the shop-name, title and near copies, or within "
                  "normalised edit similarity 0.8 of one); `distinct_top1` counts distinct top beams.", ""]
        lines.append(_md_table(summary, ["policy", "contents", "own_kind_share", "distinct_top1"]))
    lines += ["", f"## Hypervolume (reference point {REFERENCE}, both spaces)", ""]
    lines.append(_md_table(hv, ["method", "points", "hv_rm", "front_rm", "hv_oracle", "front_oracle"], 5))
    lines += ["", "## Reward-hacking check", ""]
    if hacking.empty:
        lines.append("No policy raised a reward model's score over QSA while the oracle's score of the same "
                     "objective fell.")
    else:
        lines.append("These policies raised a reward model's score over QSA while the oracle's score of the "
                     "same objective **fell** — the reward model was fooled:")
        lines += ["", _md_table(hacking, ["policy", "objective", "rm_change", "oracle_change"], 4)]
    lines += reward_model_lines(reward_models or {})
    lines += ["", "## Figures", ""] + [f"![{f}]({figure_dir}/{f})" for f in figures] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def write_evaluation(rows, report_dir: Path, provenance: dict, rounds: int, seed: int,
                     reward_models: dict | None = None, world: str | Path | None = None) -> dict:
    """Tables, figures, verdicts and the Markdown report from the per-content rows of every policy
    (``reward_models``: each RM's metrics, for the reward-model section; ``world``: its answer key, for
    the share of top beams that are the note's own kind of query)."""
    summary = summarise(rows, rounds, seed)
    if world is not None:
        summary = summary.merge(style_summary(rows, world)[["policy", "own_kind_share", "distinct_top1"]],
                                on="policy", how="left")
    hv = hypervolumes(summary)
    hacking = reward_hacking(summary)
    verdicts = judge(summary, hv)
    tables = report_dir / "reproduction"
    write_tables(tables, summary, hv, hacking, verdicts)
    rows.to_parquet(tables / "rows.parquet", index=False)
    figures = plot_fronts(tables, summary)
    write_report(report_dir / "reproduction.md", summary, hv, hacking, verdicts, provenance, figures, "reproduction",
                 reward_models)
    return {"report": str(report_dir / "reproduction.md"), "claims": {v.claim: v.verdict for v in verdicts},
            "policies": len(summary)}
