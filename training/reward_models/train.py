"""Train the expansion RM (next-token "1"/"0") and the CTR RM (scalar head, BPR on CTR pairs).

    cmaq train rm-exp --data DATA/expansion [--world WORLD] [--set rm_exp.out=runs/rm-exp]
    cmaq train rm-ctr --data DATA/ctr_pairs [--world WORLD]

Each run writes ``<out>/``: the adapter (with the CTR head), the tokenizer, ``cmaq_rm.json`` (kind,
base model, max_len) and ``metrics.json`` (held-out accuracy, the loss curve and — with ``--world`` —
agreement with the world's oracle). A killed run resumes from ``<out>/checkpoint``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from peft import get_peft_model

from cmaq.config import ModelConfig, RewardModelConfig
from cmaq.engines import base_model_dir
from cmaq.losses import answer_nll, bpr_loss
from training.loop import subset, train
from training.reward_models.models import CtrRM, ExpansionRM, base_model, lora_config, save_rm, tokenizer_of

log = logging.getLogger(__name__)
PROMPT_FIELDS = ("content_id", "lang", "category", "title", "body", "shop_name", "shop_info")


def _read(path: str, required: tuple[str, ...]) -> list[dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such data; build it with `cmaq data expansion` / `cmaq data ctr-pairs`")
    table = pq.read_table(path)
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return table.to_pylist()


def _split(rows: list[dict], what: str) -> tuple[list[dict], list[dict]]:
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    if not train_rows or not test_rows:
        raise ValueError(f"{what}: need both train and test rows, got {len(train_rows)} and {len(test_rows)}")
    return train_rows, test_rows


def _encode_rows(rm, rows: list[dict], *query_fields: str) -> tuple[list[dict], list[list[list[int]]], int]:
    """Token ids of each row's input per query field, keeping only rows whose inputs fit rm.max_len
    (title, shop info and query alone can be too long). Returns (rows kept, ids per field, skipped)."""
    kept, encoded = [], [[] for _ in query_fields]
    for r in rows:
        try:
            ids = [rm.encode(r, r[f]) for f in query_fields]
        except ValueError:
            continue
        kept.append(r)
        for acc, x in zip(encoded, ids):
            acc.append(x)
    return kept, encoded, len(rows) - len(kept)


def _prepare(kind: str, cfg: RewardModelConfig, model_cfg: ModelConfig | None):
    model_dir = base_model_dir(model_cfg, cfg.model_dir)
    torch.manual_seed(cfg.seed)
    tokenizer = tokenizer_of(model_dir)
    model = base_model(kind, model_dir)
    if finetune_mode(cfg, model_cfg) == "lora":
        model = get_peft_model(model, lora_config(kind, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
    return model_dir, tokenizer, model


def finetune_mode(cfg: RewardModelConfig, model_cfg: ModelConfig | None = None) -> str:
    """``auto``: every weight of the project's tiny model (no base configured), LoRA on any other base."""
    if cfg.finetune != "auto":
        return cfg.finetune
    return "full" if not (cfg.model_dir or (model_cfg and model_cfg.base_dir)) else "lora"


def _out(cfg: RewardModelConfig, kind: str) -> Path:
    return Path(cfg.out or f"runs/rm-{kind}")


def train_expansion(cfg: RewardModelConfig, data: str, world: str | None = None,
                    model_cfg: ModelConfig | None = None) -> dict:
    train_rows, test_rows = _split(_read(data, (*PROMPT_FIELDS, "query", "label", "split")), data)
    train_rows = subset(train_rows, cfg.max_train_examples)
    model_dir, tokenizer, model = _prepare("expansion", cfg, model_cfg)
    rm = ExpansionRM(model, tokenizer, cfg.max_len)
    train_rows, (seqs,), skipped = _encode_rows(rm, train_rows, "query")
    test_rows, _, skipped_test = _encode_rows(rm, test_rows, "query")
    targets = torch.tensor([rm.id1 if r["label"] else rm.id0 for r in train_rows])

    def step_loss(idx: list[int]):
        logits = rm.answer_logits([seqs[i] for i in idx])
        return answer_nll(logits, targets[idx].to(logits.device))

    def evaluate() -> dict:
        p = rm.score(test_rows, [r["query"] for r in test_rows], cfg.eval_batch_size)
        labels = np.array([r["label"] for r in test_rows])
        out = {"test_examples": len(test_rows), "test_accuracy": round(float(((p > 0.5) == labels).mean()), 4),
               "test_positive_rate": round(float(labels.mean()), 4), "skipped_too_long": [skipped, skipped_test]}
        if world:
            out["oracle"] = oracle_agreement(rm, world, {r["content_id"] for r in test_rows}, "true_exp",
                                             cfg.eval_batch_size)
        return out

    out_dir = _out(cfg, "exp")
    metrics = train(model, len(train_rows), step_loss, cfg, out_dir, evaluate, "rm-exp")
    save_rm(model, tokenizer, out_dir, {"kind": "expansion", "base_model": str(Path(model_dir).resolve()),
                                        "max_len": cfg.max_len, "data": str(data), "answer_ids": [rm.id0, rm.id1],
                                        "finetune": finetune_mode(cfg, model_cfg)})
    log.info("expansion RM: test accuracy %.3f -> %s", metrics["test_accuracy"], out_dir)
    return metrics


def train_ctr(cfg: RewardModelConfig, data: str, world: str | None = None,
              model_cfg: ModelConfig | None = None) -> dict:
    train_rows, test_rows = _split(_read(data, (*PROMPT_FIELDS, "y_plus", "y_minus", "split")), data)
    train_rows = subset(train_rows, cfg.max_train_examples)
    model_dir, tokenizer, model = _prepare("ctr", cfg, model_cfg)
    rm = CtrRM(model, tokenizer, cfg.max_len)
    train_rows, (plus, minus), skipped = _encode_rows(rm, train_rows, "y_plus", "y_minus")
    test_rows, _, skipped_test = _encode_rows(rm, test_rows, "y_plus", "y_minus")

    def step_loss(idx: list[int]):
        # One forward for both sides; a pair's two texts share the content before the query.
        r = rm.rewards([plus[i] for i in idx] + [minus[i] for i in idx], groups=list(idx) * 2)
        return bpr_loss(r[:len(idx)], r[len(idx):])

    def evaluate() -> dict:
        items = test_rows + test_rows
        r = rm.score(items, [x["y_plus"] for x in test_rows] + [x["y_minus"] for x in test_rows], cfg.eval_batch_size)
        n = len(test_rows)
        out = {"test_pairs": n, "test_pair_accuracy": round(float((r[:n] > r[n:]).mean()), 4),
               "skipped_too_long": [skipped, skipped_test]}
        if world:
            out["oracle"] = oracle_agreement(rm, world, {x["content_id"] for x in test_rows}, "true_ctr",
                                             cfg.eval_batch_size)
        return out

    out_dir = _out(cfg, "ctr")
    metrics = train(model, len(train_rows), step_loss, cfg, out_dir, evaluate, "rm-ctr")
    save_rm(model, tokenizer, out_dir, {"kind": "ctr", "base_model": str(Path(model_dir).resolve()),
                                        "max_len": cfg.max_len, "data": str(data),
                                        "normalisation": cfg.normalisation, "finetune": finetune_mode(cfg, model_cfg)})
    log.info("CTR RM: test pair accuracy %.3f -> %s", metrics["test_pair_accuracy"], out_dir)
    return metrics


# --------------------------------------------------------------------------- agreement with the oracle


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def oracle_agreement(rm, world: str, content_ids: set[str], truth_column: str, batch_size: int,
                     max_items: int = 300) -> dict:
    """Mean per-item Spearman correlation between the RM's scores and the oracle's true values over
    each held-out item's grammar queries. Within an item, because the CTR RM's offset per item is
    arbitrary (and the question is whether the RM orders one note's candidates right)."""
    root = Path(world)
    content = {r["content_id"]: r for r in pq.read_table(root / "content").to_pylist() if r["content_id"] in content_ids}
    ids = sorted(content)[:max_items]
    keep = set(ids)
    truth = [r for r in pq.read_table(root / "truth" / "grammar").to_pylist() if r["content_id"] in keep]
    scores = rm.score([content[r["content_id"]] for r in truth], [r["query"] for r in truth], batch_size)
    per_item: dict[str, tuple[list, list]] = {}
    for r, s in zip(truth, scores):
        per_item.setdefault(r["content_id"], ([], []))
        per_item[r["content_id"]][0].append(s)
        per_item[r["content_id"]][1].append(r[truth_column])
    rhos = [spearman(s, t) for s, t in per_item.values() if len(s) >= 3]
    rhos = [x for x in rhos if x == x]
    return {"items": len(rhos), "queries": len(truth), "truth": truth_column,
            "mean_spearman": round(float(np.mean(rhos)), 4) if rhos else None}
