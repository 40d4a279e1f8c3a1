"""QSA — query style alignment: LoRA SFT of the base model on D_SFT, the logged queries that did well.

    cmaq train sft --data DATA/sft [--out runs/qsa]

Loss: the mean negative log-likelihood per query token (`cmaq.losses.query_nll`); the prompt is the
generation prompt the engines serve, and carries no loss. Writes ``<out>/adapter`` (PEFT, loadable by
both engines and the Spark job), ``<out>/config.toml`` and ``<out>/metrics.json``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
import torch

from cmaq.config import ModelConfig, PolicyTrainConfig
from cmaq.engines import base_model_dir
from cmaq.losses import query_nll
from training.loop import train
from training.policy import encode, new_policy, save_policy, sequence_logps
from training.reward_models.models import tokenizer_of

log = logging.getLogger(__name__)
SFT_FIELDS = ("content_id", "lang", "category", "title", "body", "shop_name", "shop_info", "query")


def train_qsa(cfg: PolicyTrainConfig, data: str, model_cfg: ModelConfig | None = None) -> dict:
    """LoRA SFT from the base model (``cfg.model_dir``, else ``model_cfg.base_dir``, else the tiny model)."""
    if not Path(data).exists():
        raise FileNotFoundError(f"{data}: no such data; build it with `cmaq data sft`")
    rows = pq.read_table(data).to_pylist()
    missing = [c for c in SFT_FIELDS if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{data}: {'no rows' if not rows else f'missing columns {missing}'}")
    model_dir = base_model_dir(model_cfg, cfg.model_dir)
    torch.manual_seed(cfg.seed)
    tokenizer = tokenizer_of(model_dir)
    model = new_policy(model_dir, cfg.lora_r, cfg.lora_alpha)
    examples, too_long = [], 0
    for r in rows:
        try:
            examples.append(encode(tokenizer, r, r["query"], cfg.max_prompt_tokens))
        except ValueError:  # title and shop alone exceed the prompt budget: nothing to train on
            too_long += 1
    if not examples:
        raise ValueError(f"{data}: no row fits max_prompt_tokens={cfg.max_prompt_tokens}")
    if too_long:
        log.warning("QSA: %d of %d rows skipped (prompt over %d tokens even without the body)", too_long,
                    len(rows), cfg.max_prompt_tokens)

    def step_loss(idx: list[int]):
        logps, lengths = sequence_logps(model, [examples[i] for i in idx], tokenizer.pad_token_id)
        return query_nll(logps, lengths)

    out = Path(cfg.out or "runs/qsa")
    # The loss is a token mean over the global batch: each example weighs its query's tokens.
    metrics = train(model, len(examples), step_loss, cfg, out, lambda: {}, "qsa",
                    example_weights=[len(answer) for _, answer in examples],
                    save=lambda state: save_policy(model, out, cfg, model_dir, state))
    log.info("QSA adapter -> %s", out / "adapter")
    return metrics
