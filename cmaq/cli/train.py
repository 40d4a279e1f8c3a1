"""`cmaq train`: the reward models, QSA (sft), the CMAQ loop (align) and the baselines.

Each command hands its trainer the section it configures plus the one base-model setting (``[model]``);
the alignment commands also hand over ``[engine]``, which their sampler runs with.
"""
from __future__ import annotations

import click

from cmaq.cli.settings import BadInput, config_option, echo_json, pass_config
from cmaq.config import CmaqConfig
from training import distributed
from training.align import run_align
from training.baselines import METHODS, run_baseline
from training.reward_models.train import train_ctr, train_expansion
from training.sft import train_qsa


@click.group("train")
def train_group() -> None:
    """Train the reward models, QSA (sft) and the CMAQ policy (align).

    One process needs no launcher. On several (settings in [distributed]):

        torchrun --nproc_per_node 2 -m cmaq.cli train sft --data DATA/sft

    (gloo on CPU, NCCL on GPUs), or accelerate launch --config_file configs/accelerate/ddp-8gpu.yaml -m
    cmaq.cli train ...; the global batch, and so the trained adapter, is the same on any number of processes."""


def _echo_training(cfg: CmaqConfig, fn, *args, user_errors: tuple = (FileNotFoundError, ValueError),
                   **kwargs) -> None:
    """Run a training function on this process's rank (``[distributed]``; one process without a launcher);
    ``user_errors`` become one ``Error:`` line, the metrics (without the loss curves, which are in the
    run's metrics.json) are printed as JSON by the main process."""
    rt = distributed.setup(cfg.distributed)
    try:
        metrics = fn(*args, **kwargs)
    except user_errors as exc:
        raise BadInput(str(exc)) from None
    except distributed.RankFailure as exc:  # another rank died or hung: one line naming it, exit 1
        raise SystemExit(f"Error: {exc}") from None
    metrics.pop("loss_curve", None)
    for iteration in metrics.get("iterations", ()):
        iteration.pop("loss_curve", None)
    if rt.is_main:
        echo_json(metrics)


def _reward_model_command(name: str, section: str, trainer, data_help: str, doc: str) -> click.Command:
    @click.option("--data", required=True, help=data_help)
    @click.option("--world", default=None, type=click.Path(exists=True, file_okay=False),
                  help="World directory: also measure agreement with its oracle on held-out items.")
    @config_option(f"{section}.out", "--out")
    @pass_config
    def command(cfg: CmaqConfig, data: str, world: str | None) -> None:
        _echo_training(cfg, trainer, getattr(cfg, section), data, world, model_cfg=cfg.model)

    return click.command(name, help=doc)(command)


train_group.add_command(_reward_model_command(
    "rm-exp", "rm_exp", train_expansion, "Expansion labels (Parquet from `cmaq data expansion`).",
    "Expansion reward model: LoRA on the base LM, trained to answer 1 or 0 after the expansion prompt."))
train_group.add_command(_reward_model_command(
    "rm-ctr", "rm_ctr", train_ctr, "CTR pairs (Parquet from `cmaq data ctr-pairs`).",
    "CTR reward model: LoRA plus a scalar head, trained with the pairwise BPR loss on CTR pairs."))


@train_group.command("sft")
@click.option("--data", required=True, help="D_SFT (Parquet from `cmaq data sft`).")
@config_option("sft.out", "--out")
@pass_config
def sft(cfg: CmaqConfig, data: str) -> None:
    """QSA: LoRA SFT of the base model on D_SFT (loss on the query tokens only)."""
    _echo_training(cfg, train_qsa, cfg.sft, data, model_cfg=cfg.model)


@train_group.command("align")
@click.option("--data", required=True, help="D_SFT (Parquet from `cmaq data sft`): the contents to sample.")
@config_option("align.out", "--out")
@pass_config
def align(cfg: CmaqConfig, data: str) -> None:
    """The CMAQ loop from the QSA adapter (align.qsa) with both reward models (align.rm_exp, align.rm_ctr).
    Ablations: --set align.mean=arithmetic (w/o CDS), align.static_beta=true (w/o CT),
    align.reuse_first=true (w/o OT). Candidates the serving filters drop are negatives by rule
    (align.reward_gate=serving, the default)."""
    _echo_training(cfg, run_align, cfg.align, data, model_cfg=cfg.model, engine_cfg=cfg.engine, filters_cfg=cfg.filters,
                   user_errors=(FileNotFoundError,))


@train_group.command("baseline")
@click.option("--method", required=True, type=click.Choice(METHODS))
@click.option("--data", required=True, help="D_SFT (Parquet from `cmaq data sft`): the contents to sample.")
@click.option("--ctr-pairs", default=None, help="CTR pairs (`cmaq data ctr-pairs`); needed by dpo.")
@config_option("align.out", "--out")
@pass_config
def baseline(cfg: CmaqConfig, method: str, data: str, ctr_pairs: str | None) -> None:
    """A baseline from the QSA adapter (settings in [align]: qsa, rm_exp, rm_ctr, k, contents, alpha, beta0,
    baseline_epochs). Writes <out>/<method>/adapter."""
    _echo_training(cfg, run_baseline, cfg.align, method, data, ctr_pairs, model_cfg=cfg.model, engine_cfg=cfg.engine,
                   filters_cfg=cfg.filters)
