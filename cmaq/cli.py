"""The ``cmaq`` command line. Commands stay thin: parse, build the config, call a library function.

Global options come before the command::

    cmaq --config cmaq.toml --set world.seed=11 world generate --items 5000 --out data/world

Exit codes: 0 success, 1 unexpected error, 2 bad option, file or configuration (one-line reason).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from cmaq.config import CmaqConfig, ConfigError, load_config, to_toml


class BadInput(click.ClickException):
    """A user error: printed as one line ``Error: ...`` and exit status 2."""

    exit_code = 2


def _config(ctx: click.Context, extra: list[str] | tuple[str, ...] = ()) -> CmaqConfig:
    """The effective config: file, then --set overrides, then command-specific options."""
    obj = ctx.find_root().obj or {}
    try:
        return load_config(obj.get("config"), [*obj.get("overrides", ()), *extra])
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML configuration file (sections as in `cmaq config show`).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one configuration value; repeatable. Example: --set world.seed=11")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="cmaq")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, overrides: tuple[str, ...], verbose: bool) -> None:
    """cmaq: consistent multi-objective aligned related-search query generation.

    A synthetic platform (`world`), training data (`data`), reward models (`train`, `score`),
    the recall pool and its cache (`pool`), analyst SQL (`sql`), the configuration (`config`).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = {"config": config_path, "overrides": list(overrides)}
    if ctx.invoked_subcommand is not None:
        _config(ctx)  # fail fast on a bad file or override, whatever the command


# --------------------------------------------------------------------------- config


@main.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@click.option("--help-fields", is_flag=True, help="Precede each key with its help text.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@click.pass_context
def config_show(ctx: click.Context, help_fields: bool, as_json: bool) -> None:
    """Print the effective configuration (defaults, file, then --set overrides)."""
    cfg = _config(ctx)
    if as_json:
        from cmaq.config import to_dict
        click.echo(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False))
    else:
        click.echo(to_toml(cfg, with_help=help_fields), nl=False)


# --------------------------------------------------------------------------- world


@main.group()
def world() -> None:
    """The synthetic local-lifestyle platform: notes, query logs, annotations."""


@world.command("generate")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Output directory; must be empty or absent.")
@click.option("--items", type=click.IntRange(min=1), default=None, help="Number of notes (world.items).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="World seed (world.seed).")
@click.option("--zh-fraction", type=click.FloatRange(0, 1), default=None,
              help="Fraction of Chinese notes (world.zh_fraction).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.pass_context
def world_generate(ctx: click.Context, out: str, items: int | None, seed: int | None,
                   zh_fraction: float | None, quiet: bool) -> None:
    """Generate a world: content, logs, annotations and the hidden answer key, as Parquet."""
    from cmaq.world.generate import generate_world

    extra = [f"world.{k}={v}" for k, v in (("items", items), ("seed", seed), ("zh_fraction", zh_fraction))
             if v is not None]
    cfg = _config(ctx, extra).world

    def progress(done: int, total: int, seconds: float) -> None:
        if not quiet:
            click.echo(f"world: {done:,}/{total:,} items ({done / max(seconds, 1e-9):,.0f} items/s)", err=True)

    try:
        summary = generate_world(cfg, out, progress=progress)
    except FileExistsError as exc:
        raise BadInput(str(exc)) from None
    click.echo(format_summary(summary.out, json.loads((Path(out) / "world.json").read_text("utf-8"))))


@world.command("summary")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def world_summary(directory: str) -> None:
    """Describe a generated world: sizes, languages, categories, files."""
    manifest_path = Path(directory) / "world.json"
    if not manifest_path.is_file():
        raise BadInput(f"{directory}: no world.json here; is it a directory made by `cmaq world generate`?")
    click.echo(format_summary(directory, json.loads(manifest_path.read_text("utf-8"))))


def format_summary(out: str, manifest: dict) -> str:
    c = manifest["counts"]
    lines = [
        f"world in {out} (seed {manifest['config']['seed']}, oracle {manifest['oracle_code_hash']})",
        f"  content      {c['content']:>10,} notes      {out}/content/",
        f"  logs         {c['logs']:>10,} rows       {out}/logs/",
        f"  annotations  {c['annotations']:>10,} labels     {out}/annotations/ "
        f"(positive rate {manifest['label_rate']:.2f})",
        f"  answer key   {c['grammar_truth']:>10,} queries    {out}/truth/grammar/ (evaluation only)",
        "  languages    " + ", ".join(f"{k} {v:,}" for k, v in manifest["langs"].items()),
        "  categories   " + ", ".join(f"{k} {v:,}" for k, v in manifest["categories"].items()),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- data


@main.group()
def data() -> None:
    """Training-data builders on Spark (local mode here, unchanged on a cluster)."""


def _data_command(kind: str, help_text: str):
    @data.command(kind, help=help_text)
    @click.option("--world", type=click.Path(exists=True, file_okay=False), default=None,
                  help="World directory with content/, logs/, annotations/.")
    @click.option("--content", default=None, help="Content Parquet path or table (overrides --world).")
    @click.option("--logs", default=None, help="Logs Parquet path or table (overrides --world).")
    @click.option("--annotations", default=None, help="Annotations Parquet path or table (overrides --world).")
    @click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
    @click.option("--seed", type=int, default=None, help="data.seed")
    @click.pass_context
    def command(ctx, world, content, logs, annotations, out, seed):
        if not world and not content:
            raise BadInput("give --world or --content")
        cfg = _config(ctx, [f"data.seed={seed}"] if seed is not None else [])
        from cmaq.spark import get_spark
        from training.data.builders import run

        summary = run(kind, cfg, world, out, get_spark(f"cmaq-data-{kind}"), content, logs, annotations)
        click.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2, default=str))

    return command


_data_command("sft", "Build D_SFT (query-style SFT set) and the held-out test contents.")
_data_command("ctr-pairs", "Mine significant CTR pairs (two-proportion z-test) for the CTR reward model.")
_data_command("expansion", "Expansion labels for the expansion reward model, split by content.")


# --------------------------------------------------------------------------- pool and sql


@main.group()
def pool() -> None:
    """The recall pool: build, refresh, read, size, roll back and purge."""


@pool.command("build")
@click.option("--content", required=True, help="Content Parquet path or table name.")
@click.option("--root", default=None, help="Pool root directory (pool.root).")
@click.option("--adapter", default=None, help="PEFT adapter directory to serve (pool.adapter).")
@click.pass_context
def pool_build(ctx: click.Context, content: str, root: str | None, adapter: str | None) -> None:
    """Generate, filter, gate and publish a complete pool version. Exit 0 published, 1 error,
    3 gates failed (nothing published)."""
    extra = [f"pool.{k}={json.dumps(v)}" for k, v in (("root", root), ("adapter", adapter)) if v is not None]
    cfg = _config(ctx, extra)
    from cmaq.spark import get_spark
    from jobs.pool import build_pool

    report = build_pool(get_spark("cmaq-pool-build"), cfg, content)
    click.echo(json.dumps({"run_id": report.run_id, "status": report.status, "counts": report.counts,
                           "gates": report.gates, "error": report.error}, indent=2, default=str))
    ctx.exit(report.exit_code)


@pool.command("get")
@click.argument("content_id")
@click.option("--kv-url", default=None, help="Cache URL (default: pool.kv_url, or the embedded SQLite under pool.root).")
@click.pass_context
def pool_get(ctx: click.Context, content_id: str, kv_url: str | None) -> None:
    """Print the served queries of CONTENT_ID from the cache's current version (exit 4 on a miss)."""
    cfg = _config(ctx)
    from cmaq.pool.kv import Reader, redact_url

    url = kv_url or cfg.pool.kv()
    if not url:
        raise BadInput("no cache configured (pool.kv_url is 'none')")
    try:
        hit = Reader(url, cfg.pool.kv_prefix).get(content_id)
    except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
        raise click.ClickException(f"cannot read {redact_url(url)}: {exc}") from None
    if not hit.hit:
        where = f"version {hit.version}" if hit.version else "the cache (no version loaded yet)"
        click.echo(f"miss: {content_id} is not in {where}")
        ctx.exit(4)
    click.echo(json.dumps({"content_id": content_id, "version": hit.version, "queries": hit.queries},
                          ensure_ascii=False, indent=2))


@pool.command("refresh")
@click.option("--content", required=True, help="Content Parquet path or table name (the full table; rows "
              "updated after the watermark are the candidates).")
@click.option("--root", default=None, help="Pool root directory (pool.root).")
@click.pass_context
def pool_refresh(ctx: click.Context, content: str, root: str | None) -> None:
    """Nearline: generate queries for new or changed content and add them to the current version
    (Parquet delta + cache). Exit 0 refreshed or nothing to do, 1 error."""
    cfg = _config(ctx, [f"pool.root={json.dumps(root)}"] if root else [])
    from cmaq.spark import get_spark
    from jobs.nearline import refresh

    report = refresh(get_spark("cmaq-nearline"), cfg, content)
    click.echo(json.dumps({"op_id": report.op_id, "status": report.status, "version": report.version,
                           "counts": report.counts, "watermark": report.watermark, "delta": report.delta,
                           "error": report.error}, indent=2, default=str))
    ctx.exit(report.exit_code)


@pool.command("kv-size")
@click.option("--sample", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Items of the current version to measure.")
@click.option("--kv-url", default=None, help="Cache URL (default: pool.kv_url, or the embedded SQLite under pool.root).")
@click.pass_context
def pool_kv_size(ctx: click.Context, sample: int, kv_url: str | None) -> None:
    """Estimate cache memory per item and for two versions (what a load needs at its peak)."""
    cfg = _config(ctx)
    from cmaq.pool.kv import estimate_size, open_sink, redact_url

    url = kv_url or cfg.pool.kv()
    if not url:
        raise BadInput("no cache configured (pool.kv_url is 'none')")
    try:
        figures = estimate_size(open_sink(url, cfg.pool.kv_prefix), sample)
    except LookupError as exc:
        raise BadInput(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
        raise click.ClickException(f"cannot read {redact_url(url)}: {exc}") from None
    click.echo(json.dumps(figures, indent=2))


@pool.command("rollback")
@click.option("--to", "to", default=None, help="Version to serve (default: the one the current version replaced).")
@click.option("--root", default=None, help="Pool root directory (pool.root).")
@click.pass_context
def pool_rollback(ctx: click.Context, to: str | None, root: str | None) -> None:
    """Serve an earlier version again: moves the Parquet pointer and the cache's pointer together."""
    cfg = _config(ctx, [f"pool.root={json.dumps(root)}"] if root else [])
    from cmaq.pool.kv import LeaseHeld
    from cmaq.pool.ops import rollback

    try:
        record = rollback(cfg, to)
    except (FileNotFoundError, ValueError, LeaseHeld) as exc:
        raise BadInput(str(exc)) from None
    click.echo(json.dumps(record, indent=2))


@pool.command("purge")
@click.option("--content-id", "content_ids", multiple=True, help="Remove this item entirely; repeatable.")
@click.option("--term", "terms", multiple=True, help="Remove queries containing this newly blocked term; repeatable.")
@click.option("--root", default=None, help="Pool root directory (pool.root).")
@click.pass_context
def pool_purge(ctx: click.Context, content_ids: tuple[str, ...], terms: tuple[str, ...], root: str | None) -> None:
    """Takedown without regeneration, in Parquet and the cache together; recorded under runs/."""
    cfg = _config(ctx, [f"pool.root={json.dumps(root)}"] if root else [])
    from cmaq.pool.kv import LeaseHeld
    from cmaq.pool.ops import purge
    from cmaq.spark import get_spark

    if not content_ids and not terms:
        raise BadInput("name --content-id or --term")
    try:
        record = purge(cfg, get_spark("cmaq-pool-purge"), list(content_ids), list(terms))
    except (FileNotFoundError, ValueError, LeaseHeld) as exc:
        raise BadInput(str(exc)) from None
    click.echo(json.dumps(record, indent=2, ensure_ascii=False))


@main.group()
def sql() -> None:
    """Analyst SQL over the published pool (files in sql/)."""


@sql.command("run")
@click.argument("sql_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--pool", "pool_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Pool root directory.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), default=None, help="Write CSV here instead.")
@click.option("--limit", type=int, default=100, help="Rows to print.")
def sql_run(sql_file: str, pool_root: str, csv_out: str | None, limit: int) -> None:
    """Run SQL_FILE with views pool, dropped, quarantine and pool_previous registered."""
    from cmaq.spark import get_spark
    from jobs.sql import run_sql

    try:
        df = run_sql(get_spark("cmaq-sql"), sql_file, pool_root)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    pdf = df.toPandas()
    if csv_out:
        pdf.to_csv(csv_out, index=False)
        click.echo(f"{len(pdf)} rows -> {csv_out}")
    else:
        click.echo(pdf.head(limit).to_string(index=False))


# --------------------------------------------------------------------------- training and scoring


@main.group()
def train() -> None:
    """Train the reward models, QSA (sft) and the CMAQ policy (align)."""


def _train_rm(ctx: click.Context, kind: str, data: str, world: str | None, out: str | None) -> None:
    section = "rm_exp" if kind == "exp" else "rm_ctr"
    cfg = _config(ctx, [f"{section}.out={json.dumps(out)}"] if out else [])
    from training.reward_models.train import train_ctr, train_expansion

    fn = train_expansion if kind == "exp" else train_ctr
    _echo_training(fn, getattr(cfg, section), data, world)


def _echo_training(fn, *args) -> None:
    """Run a training function; bad input becomes one ``Error:`` line, the metrics (without the loss
    curve, which is in the run's metrics.json) are printed as JSON."""
    try:
        metrics = fn(*args)
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    metrics.pop("loss_curve", None)
    click.echo(json.dumps(metrics, indent=2))


@train.command("rm-exp")
@click.option("--data", required=True, help="Expansion labels (Parquet from `cmaq data expansion`).")
@click.option("--world", default=None, type=click.Path(exists=True, file_okay=False),
              help="World directory: also measure agreement with its oracle on held-out items.")
@click.option("--out", default=None, help="Output directory (rm_exp.out).")
@click.pass_context
def train_rm_exp(ctx: click.Context, data: str, world: str | None, out: str | None) -> None:
    """Expansion reward model: LoRA on the base LM, trained to answer 1 or 0 after the expansion prompt."""
    _train_rm(ctx, "exp", data, world, out)


@train.command("rm-ctr")
@click.option("--data", required=True, help="CTR pairs (Parquet from `cmaq data ctr-pairs`).")
@click.option("--world", default=None, type=click.Path(exists=True, file_okay=False),
              help="World directory: also measure agreement with its oracle on held-out items.")
@click.option("--out", default=None, help="Output directory (rm_ctr.out).")
@click.pass_context
def train_rm_ctr(ctx: click.Context, data: str, world: str | None, out: str | None) -> None:
    """CTR reward model: LoRA plus a scalar head, trained with the pairwise BPR loss on CTR pairs."""
    _train_rm(ctx, "ctr", data, world, out)


@train.command("sft")
@click.option("--data", required=True, help="D_SFT (Parquet from `cmaq data sft`).")
@click.option("--out", default=None, help="Output directory (sft.out; default runs/qsa).")
@click.pass_context
def train_sft(ctx: click.Context, data: str, out: str | None) -> None:
    """QSA: LoRA SFT of the base model on D_SFT (loss on the query tokens only)."""
    cfg = _config(ctx, [f"sft.out={json.dumps(out)}"] if out else [])
    from training.sft import train_qsa

    _echo_training(train_qsa, cfg.sft, data)


@train.command("align")
@click.option("--data", required=True, help="D_SFT (Parquet from `cmaq data sft`): the contents to sample.")
@click.option("--out", default=None, help="Output directory (align.out; default runs/cmaq).")
@click.pass_context
def train_align(ctx: click.Context, data: str, out: str | None) -> None:
    """The CMAQ loop from the QSA adapter (align.qsa) with both reward models (align.rm_exp, align.rm_ctr).
    Ablations: --set align.mean=arithmetic (w/o CDS), align.static_beta=true (w/o CT),
    align.reuse_first=true (w/o OT)."""
    cfg = _config(ctx, [f"align.out={json.dumps(out)}"] if out else [])
    from training.align import run_align

    try:
        result = run_align(cfg.align, data)
    except FileNotFoundError as exc:
        raise BadInput(str(exc)) from None
    for it in result["iterations"]:
        it.pop("loss_curve", None)
    click.echo(json.dumps(result, indent=2, default=str))


@train.command("baseline")
@click.option("--method", required=True, type=click.Choice(["dpo", "dpo-lw", "dpo-soup", "morl"]))
@click.option("--data", required=True, help="D_SFT (Parquet from `cmaq data sft`): the contents to sample.")
@click.option("--ctr-pairs", default=None, help="CTR pairs (`cmaq data ctr-pairs`); needed by dpo.")
@click.option("--out", default=None, help="Output directory (align.out; default runs/baselines).")
@click.pass_context
def train_baseline(ctx: click.Context, method: str, data: str, ctr_pairs: str | None, out: str | None) -> None:
    """A baseline from the QSA adapter (settings in [align]: qsa, rm_exp, rm_ctr, k, contents, alpha, beta0,
    baseline_epochs). Writes <out>/<method>/adapter."""
    cfg = _config(ctx, [f"align.out={json.dumps(out)}"] if out else [])
    from training.baselines import run_baseline

    try:
        result = run_baseline(cfg.align, method, data, ctr_pairs)
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    click.echo(json.dumps(result, indent=2, default=str))


@main.command("score")
@click.option("--pool", "pool_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Pool root; its current version is scored.")
@click.option("--content", required=True, help="Content Parquet the pool was built from (prompts need the text).")
@click.option("--rm-exp", "exp_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--rm-ctr", "ctr_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="Output Parquet: the pool's rows plus r_exp, r_ctr_raw, r_ctr.")
@click.option("--normalisation", type=click.Choice(["sigmoid", "minmax"]), default="sigmoid", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
def score(pool_root: str, content: str, exp_dir: str, ctr_dir: str, out: str, normalisation: str,
          batch_size: int) -> None:
    """Add both reward models' scores to the current pool version, for analysis."""
    from cmaq.rewards import RewardScorer, score_pool

    try:
        scorer = RewardScorer(exp_dir, ctr_dir, batch_size=batch_size, normalisation=normalisation)
        summary = score_pool(scorer, pool_root, content, out)
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    click.echo(json.dumps(summary, indent=2))


# --------------------------------------------------------------------------- evaluation

def _parse_policy(spec: str):
    """``METHOD[@ALPHA[@ITERATION]]=ADAPTER``; an empty ADAPTER is the bare base model."""
    from training.evaluate.offline import Policy

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


@main.group("eval")
def eval_() -> None:
    """Evaluate policies: RM and oracle scores, Pareto fronts, the simulated A/B, the report."""


@eval_.command("policies")
@click.option("--world", required=True, type=click.Path(exists=True, file_okay=False),
              help="World directory (content and the oracle's ground truth).")
@click.option("--test-contents", required=True, type=click.Path(exists=True),
              help="Held-out content ids (test_contents from `cmaq data sft`).")
@click.option("--rm-exp", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--rm-ctr", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--policy", "policies", multiple=True, required=True, metavar="METHOD[@ALPHA[@IT]]=ADAPTER",
              help="A policy to evaluate; repeatable. Include qsa (the A/B control). Empty ADAPTER: base model.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Evaluate the first N test contents only.")
@click.option("--out", required=True, help="Directory for the per-content rows (one Parquet per policy).")
@click.option("--report", required=True, help="Directory for reproduction.md, tables and figures.")
@click.pass_context
def eval_policies(ctx: click.Context, world: str, test_contents: str, rm_exp: str, rm_ctr: str,
                  policies: tuple[str, ...], limit: int | None, out: str, report: str) -> None:
    """Beam-search every policy on the held-out contents, score, and write the tables and report."""
    import pandas as pd

    from training.evaluate.offline import Evaluator, load_test_items
    from training.evaluate.reproduce import write_evaluation
    from training.sft import base_dir

    cfg = _config(ctx)
    parsed = [_parse_policy(p) for p in policies]
    if len({p.name for p in parsed}) != len(parsed):
        raise BadInput("two --policy options have the same METHOD@ALPHA@ITERATION")
    try:
        items = load_test_items(world, test_contents, limit)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    evaluator = Evaluator(base_dir(cfg.sft), rm_exp, rm_ctr, items, out, engine_cfg=cfg.engine,
                          filters_cfg=cfg.filters)
    rows = pd.concat([evaluator.rows(p) for p in parsed], ignore_index=True)
    result = write_evaluation(rows, Path(report), {"world": world, "test contents": len(items)},
                              cfg.reproduce.bootstrap, cfg.world.seed)
    click.echo(json.dumps(result, indent=2))


@main.command("reproduce")
@click.option("--profile", type=click.Choice(["cpu", "gpu", "smoke"]), default="cpu", show_default=True,
              help="Sizes: cpu (make reproduce, 2 cores), gpu (one H100), smoke (tests).")
@click.option("--out", default=None, help="Working directory (reproduce.out).")
@click.option("--report", default=None, help="Report directory (reproduce.report).")
@click.option("--stop-after", default="eval", show_default=True,
              type=click.Choice(["world", "data", "backbone", "rms", "qsa", "cmaq", "baselines", "ablations", "eval"]),
              help="Last step to run (e.g. data: prepare a world and its training data for another machine).")
@click.pass_context
def reproduce(ctx: click.Context, profile: str, out: str | None, report: str | None, stop_after: str) -> None:
    """The whole chain on a world: data, reward models, QSA, CMAQ over the α grid, baselines, ablations,
    evaluation and reports/reproduction.md. Finished steps are skipped, so a killed run resumes."""
    from training.evaluate.reproduce import Reproduction, profile_config

    obj = ctx.find_root().obj or {}
    extra = [f"reproduce.{k}={json.dumps(v)}" for k, v in (("out", out), ("report", report)) if v]
    try:
        cfg = profile_config(profile, obj.get("config"), (*obj.get("overrides", ()), *extra))
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    result = Reproduction(cfg, progress=lambda m: click.echo(m, err=True)).run(stop_after)
    click.echo(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":  # pragma: no cover
    main()
