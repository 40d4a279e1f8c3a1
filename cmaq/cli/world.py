"""`cmaq world`: the synthetic local-lifestyle platform."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cmaq.cli.settings import BadInput, config_option, pass_config
from cmaq.config import CmaqConfig
from cmaq.world.generate import default_workers, generate_world


@click.group("world")
def world_group() -> None:
    """The synthetic local-lifestyle platform: notes, query logs, annotations."""


@world_group.command("generate")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Output directory; must be empty or absent.")
@config_option("world.items", "--items", type=click.IntRange(min=1))
@config_option("world.seed", "--seed", type=click.IntRange(min=0))
@config_option("world.zh_fraction", "--zh-fraction", type=click.FloatRange(0, 1))
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Generator processes (default: one per core, up to 4; small worlds use one). "
                   "The files are the same for any number.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@pass_config
def generate(cfg: CmaqConfig, out: str, workers: int | None, quiet: bool) -> None:
    """Generate a world: content, logs, annotations and the hidden answer key, as Parquet."""

    def progress(done: int, total: int, seconds: float) -> None:
        if not quiet:
            click.echo(f"world: {done:,}/{total:,} items ({done / max(seconds, 1e-9):,.0f} items/s)", err=True)

    try:
        summary = generate_world(cfg.world, out, progress=progress, workers=workers or default_workers(cfg.world))
    except FileExistsError as exc:
        raise BadInput(str(exc)) from None
    click.echo(format_summary(summary.out, json.loads((Path(out) / "world.json").read_text("utf-8"))))


@world_group.command("summary")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def summary(directory: str) -> None:
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
        *([f"               {c['mistake_truth']:>10,} mistaken   {out}/truth/mistakes/ (evaluation only)"]
          if "mistake_truth" in c else []),
        "  languages    " + ", ".join(f"{k} {v:,}" for k, v in manifest["langs"].items()),
        "  categories   " + ", ".join(f"{k} {v:,}" for k, v in manifest["categories"].items()),
    ]
    return "\n".join(lines)
