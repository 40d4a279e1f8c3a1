"""`cmaq data`: the training-data builders on Spark (local mode here, unchanged on a cluster)."""
from __future__ import annotations

import click

from cmaq.cli.settings import BadInput, config_option, echo_json, pass_config
from cmaq.config import CmaqConfig
from jobs.contract import BadInput as ContractBroken
from jobs.data.builders import run
from jobs.spark import get_spark

BUILDERS = {"sft": "Build D_SFT (query-style SFT set) and the held-out test contents.",
            "ctr-pairs": "Mine significant CTR pairs (two-proportion z-test) for the CTR reward model.",
            "expansion": "Expansion labels for the expansion reward model, split by content."}


@click.group("data")
def data_group() -> None:
    """Training-data builders on Spark (local mode here, unchanged on a cluster)."""


def _builder_command(kind: str, help_text: str) -> click.Command:
    @click.option("--world", type=click.Path(exists=True, file_okay=False), default=None,
                  help="World directory with content/, logs/, annotations/.")
    @click.option("--content", default=None, help="Content Parquet path or table (overrides --world).")
    @click.option("--logs", default=None, help="Logs Parquet path or table (overrides --world).")
    @click.option("--annotations", default=None, help="Annotations Parquet path or table (overrides --world).")
    @click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
    @config_option("data.seed", "--seed")
    @pass_config
    def command(cfg: CmaqConfig, world, content, logs, annotations, out):
        if not world and not content:
            raise BadInput("give --world or --content")
        try:
            summary = run(kind, cfg, world, out, get_spark(f"cmaq-data-{kind}"), content, logs, annotations)
        except ContractBroken as exc:
            raise BadInput(str(exc)) from None
        echo_json({k: v for k, v in summary.items() if k != "config"})

    return click.command(kind, help=help_text)(command)


for _kind, _help in BUILDERS.items():
    data_group.add_command(_builder_command(_kind, _help))
