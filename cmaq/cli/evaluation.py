"""`cmaq eval` (evaluate given policies) and `cmaq reproduce` (the whole chain, then the report)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
import pandas as pd

from cmaq.cli.reproduce import PROFILES, Reproduction
from cmaq.cli.settings import OPTION_VALUES, BadInput, Settings, config_option, echo_json, pass_config
from cmaq.config import CmaqConfig
from cmaq.engines import base_model_dir, make_engine
from cmaq.world.oracle import Oracle
from training import distributed
from training.evaluate.gsb import export_sheet, gsb_summary, read_judgements, read_key, simulated_judgements
from training.evaluate.offline import Evaluator, Policy, ab_provenance, load_test_items
from training.evaluate.report import write_evaluation
from training.evaluate.rm_checks import check_reward_models


def parse_policy(spec: str) -> Policy:
    """``METHOD[@ALPHA[@ITERATION]]=ADAPTER``; an empty ADAPTER is the bare base model."""
    name, sep, adapter = spec.partition("=")
    parts = name.split("@")
    if not sep or not parts[0] or len(parts) > 3:
        raise BadInput(f"--policy {spec!r}: expected METHOD[@ALPHA[@ITERATION]]=ADAPTER")
    try:
        alpha = float(parts[1]) if len(parts) > 1 else None
        iteration = int(parts[2]) if len(parts) > 2 else None
    except ValueError:
        raise BadInput(f"--policy {spec!r}: α must be a number and the iteration an integer") from None
    if adapter and not Path(adapter).is_dir():
        raise BadInput(f"--policy {spec!r}: adapter directory {adapter} does not exist")
    return Policy(parts[0], adapter or None, alpha, iteration)


def _held_out_and_reward_models(command):
    """The options every evaluation command shares: the world, its held-out contents, both RMs."""
    for option in reversed((
            click.option("--world", required=True, type=click.Path(exists=True, file_okay=False),
                         help="World directory (content and the oracle's ground truth)."),
            click.option("--test-contents", required=True, type=click.Path(exists=True),
                         help="Held-out content ids (test_contents from `cmaq data sft`)."),
            click.option("--rm-exp", required=True, type=click.Path(exists=True, file_okay=False)),
            click.option("--rm-ctr", required=True, type=click.Path(exists=True, file_okay=False)))):
        command = option(command)
    return command


@click.group("eval")
def eval_group() -> None:
    """Evaluate policies: RM and oracle scores, Pareto fronts, the simulated A/B, the report."""


@eval_group.command("policies")
@_held_out_and_reward_models
@click.option("--policy", "policies", multiple=True, required=True, metavar="METHOD[@ALPHA[@IT]]=ADAPTER",
              help="A policy to evaluate; repeatable. Include qsa (the A/B control). Empty ADAPTER: base model.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Evaluate the first N test contents only.")
@click.option("--out", required=True, help="Directory for the per-content rows (one Parquet per policy).")
@click.option("--report", required=True, help="Directory for reproduction.md, tables and figures.")
@pass_config
def policies(cfg: CmaqConfig, world: str, test_contents: str, rm_exp: str, rm_ctr: str,
             policies: tuple[str, ...], limit: int | None, out: str, report: str) -> None:
    """Beam-search every policy on the held-out contents, score, and write the tables and report."""
    parsed = [parse_policy(p) for p in policies]
    if len({p.name for p in parsed}) != len(parsed):
        raise BadInput("two --policy options have the same METHOD@ALPHA@ITERATION")
    try:
        items = load_test_items(world, test_contents, limit)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    evaluator = Evaluator(base_model_dir(cfg.model, cfg.sft.model_dir), rm_exp, rm_ctr, items, out,
                          engine_cfg=cfg.engine, filters_cfg=cfg.filters)
    rows = pd.concat([evaluator.rows(p) for p in parsed], ignore_index=True)
    echo_json(write_evaluation(rows, Path(report), {"world": world, "test contents": len(items),
                                                    **ab_provenance(evaluator)},
                               cfg.reproduce.bootstrap, cfg.world.seed, world=world))


@eval_group.command("rms")
@_held_out_and_reward_models
@click.option("--policy", "adapter", default=None, type=click.Path(exists=True, file_okay=False),
              help="Adapter whose samples test note-blindness (QSA, or the final CMAQ policy).")
@click.option("--no-samples", is_flag=True, help="Swapped-note accuracy only (no generation).")
@click.option("--k", default=8, show_default=True, type=click.IntRange(2, 64), help="Samples per held-out note.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Use the first N test contents only.")
@pass_config
def rms(cfg: CmaqConfig, world: str, test_contents: str, rm_exp: str, rm_ctr: str, adapter: str | None,
        no_samples: bool, k: int, limit: int | None) -> None:
    """Do the reward models read the note? Swapped-note accuracy and note-blindness on a policy's samples
    for held-out notes; recorded in each RM's metrics.json and printed."""
    try:
        items = load_test_items(world, test_contents, limit)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    engine = None if no_samples else make_engine(
        replace(cfg.engine, backend="hf", model_dir=base_model_dir(cfg.model, cfg.sft.model_dir)))
    echo_json(check_reward_models(world, items, rm_exp, rm_ctr, engine, adapter, k=k,
                                  temperature=cfg.align.temperature, seed=cfg.align.seed))


@eval_group.group("gsb")
def gsb_group() -> None:
    """Figure 6's GSB kit: a blinded side-by-side sheet for judges, a simulated judge, the G/S/B report."""


def _gsb_notes(world: str, test_contents: str) -> pd.DataFrame:
    try:
        return pd.DataFrame(load_test_items(world, test_contents))
    except ValueError as exc:
        raise BadInput(str(exc)) from None


@gsb_group.command("export")
@click.option("--rows", required=True, type=click.Path(exists=True),
              help="Evaluation rows: the --out directory of `cmaq eval policies` (one Parquet per policy).")
@click.option("--world", required=True, type=click.Path(exists=True, file_okay=False), help="World directory.")
@click.option("--test-contents", required=True, type=click.Path(exists=True), help="Held-out content ids.")
@click.option("--a", "policy_a", required=True, help="Policy A (a name in the rows, e.g. cmaq-a0.4).")
@click.option("--b", "policy_b", required=True, help="Policy B, the comparison (e.g. qsa).")
@click.option("--notes", default=200, show_default=True, type=click.IntRange(1), help="Notes on the sheet.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sample and of the side shuffle.")
@click.option("--out", required=True, help="Directory for gsb_sheet.csv (for judges) and gsb_key.csv (not for them).")
def gsb_export(rows: str, world: str, test_contents: str, policy_a: str, policy_b: str, notes: int, seed: int,
               out: str) -> None:
    """A category-stratified sample of held-out notes with both policies' served queries, blinded and
    side-shuffled, as a CSV sheet for judges, and the key that unblinds it."""
    if policy_a == policy_b:
        raise BadInput("--a and --b name the same policy")
    try:
        sheet, key = export_sheet(pd.read_parquet(rows), _gsb_notes(world, test_contents), policy_a, policy_b,
                                  notes, seed)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    # utf-8 with a byte-order mark: spreadsheet programs judges open the sheet in read it as UTF-8 then
    sheet.to_csv(target / "gsb_sheet.csv", index=False, encoding="utf-8-sig")
    key.to_csv(target / "gsb_key.csv", index=False, encoding="utf-8-sig")
    echo_json({"notes": len(sheet), "categories": sheet["category"].value_counts().sort_index().to_dict(),
               "sheet": str(target / "gsb_sheet.csv"), "key": str(target / "gsb_key.csv")}, ensure_ascii=False)


@gsb_group.command("judge")
@click.option("--world", required=True, type=click.Path(exists=True, file_okay=False), help="World directory.")
@click.option("--test-contents", required=True, type=click.Path(exists=True), help="Held-out content ids.")
@click.option("--sheet", required=True, type=click.Path(exists=True, dir_okay=False), help="gsb_sheet.csv.")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="gsb_key.csv.")
@click.option("--margin", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="Relative difference of the two true scores below which the judgement is 'same'.")
@click.option("--out", required=True, help="The filled sheet (CSV).")
@pass_config
def gsb_judge(cfg: CmaqConfig, world: str, test_contents: str, sheet: str, key: str, margin: float, out: str) -> None:
    """A simulated judge from the world's oracle (true_exp^α · true_ctr^(1−α), α = align.alpha): fills the
    sheet's judgement column so the kit can be tried end to end."""
    judged = simulated_judgements(pd.read_csv(sheet, keep_default_na=False, encoding="utf-8-sig"), read_key(key),
                                  _gsb_notes(world, test_contents), Oracle(), cfg.align.alpha, margin)
    judged.to_csv(out, index=False, encoding="utf-8-sig")
    echo_json({"judged": len(judged), "out": out, **judged["judgement"].value_counts().to_dict()})


@gsb_group.command("import")
@click.argument("judgements", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="gsb_key.csv.")
@click.option("--a", "policy_a", required=True, help="The policy whose preferred answers count as Good.")
@pass_config
def gsb_import(cfg: CmaqConfig, judgements: tuple[str, ...], key: str, policy_a: str) -> None:
    """Judgement CSVs (the sheet with `judgement` = left / right / same) → Good/Same/Bad rates of A and
    GSB = (G − B)/(G + S + B) with a bootstrap interval. Malformed rows are listed with their file and
    line; any makes the exit status 2."""
    key_frame = read_key(key)
    try:
        found = read_judgements(judgements, key_frame, policy_a)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    others = sorted({p for col in ("left", "right") for p in key_frame[col]} - {policy_a})
    echo_json(gsb_summary(found, policy_a, ",".join(others), cfg.reproduce.bootstrap, cfg.world.seed))
    if found.malformed:
        for line in found.malformed:
            click.echo(line, err=True)
        raise BadInput(f"{len(found.malformed)} malformed judgement row(s), listed above; fix them and import again")


@click.command("reproduce")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="cpu", show_default=True,
              help="Sizes: cpu (make reproduce: the headline protocol, 3 seeds, 2 cores), cpu-full (make "
                   "reproduce-full: and the α grids, DPO-LW, DPO-Soup, ablations, Figure 7), gpu (one H100), smoke "
                   "(tests).")
@config_option("reproduce.out", "--out")
@config_option("reproduce.report", "--report")
@click.option("--stop-after", default="eval", show_default=True,
              type=click.Choice(["world", "data", "backbone", "rms", "qsa", "rm-checks", "headline", "full",
                                 "eval"]),
              help="Last step to run (e.g. data: prepare a world and its training data for another machine).")
@click.pass_context
def reproduce(ctx: click.Context, profile: str, stop_after: str) -> None:
    """The whole chain on a world: data, reward models, QSA, then per training seed DPO, MORL and CMAQ (and
    with the full protocol the α grids, DPO-LW, DPO-Soup, the ablations and Figure 7), the evaluation and
    reports/reproduction.md. Finished steps are skipped, so a killed run resumes."""
    # The profile's sizes sit between the configuration file and the --set overrides: a user's --set wins.
    cfg = ctx.find_object(Settings).with_preset(PROFILES[profile], ctx.meta.get(OPTION_VALUES, {}))
    # one process (the chain includes Spark steps and the evaluation); [distributed] still sets its precision
    # and accumulation
    distributed.setup(cfg.distributed)
    echo_json(Reproduction(cfg, progress=lambda m: click.echo(m, err=True)).run(stop_after))
