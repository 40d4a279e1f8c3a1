"""Train the expansion RM (next-token "1"/"0") and the CTR RM (scalar head, BPR on CTR pairs).

    cmaq train rm-exp --data DATA/expansion [--world WORLD] [--set rm_exp.out=runs/rm-exp]
    cmaq train rm-ctr --data DATA/ctr_pairs [--world WORLD]

The data's three splits are by content: ``train`` rows train, ``validation`` rows choose (early
stopping, the CTR calibration), ``test`` rows are where every reported metric comes from.

Each run writes ``<out>/``: the adapter (with the CTR head), the tokenizer, ``cmaq_rm.json`` (kind,
base model, max_len) and ``metrics.json`` (held-out accuracy, the loss and validation curves and —
with ``--world`` — agreement with the world's answer key). With ``members = K > 1`` the members go to
``<out>/member-i/`` (each trained from seed + i on a bootstrap resample of the training rows; the
rows are tokenised once for all of them) and ``<out>/cmaq_rm.json`` lists them. The CTR RM also
writes ``calibration.json``: raw score -> click probability, fitted on the validation split's logged
CTR. A killed run resumes from ``<out>/checkpoint`` (``<out>/member-i/checkpoint``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from peft import get_peft_model

from cmaq.artifacts import dir_hash
from cmaq.config import ModelConfig, RewardModelConfig
from cmaq.engines import base_model_dir
from cmaq.losses import answer_nll, bpr_loss
from cmaq.rewards import expected_calibration_error, fit_isotonic, normalise_ctr
from training.distributed import runtime
from training.loop import subset, train
from training.reward_models.models import (META, CtrRM, Ensemble, ExpansionRM, base_model, load_parts, lora_config,
                                           save_rm, tokenizer_of)
from training.reward_models.scorer import CALIBRATION

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


@dataclass
class _Splits:
    train: list[dict]
    validation: list[dict]
    test: list[dict]


def _split(rows: list[dict], what: str, cfg: RewardModelConfig, needs_validation: bool) -> _Splits:
    parts = _Splits(*([r for r in rows if r["split"] == name] for name in ("train", "validation", "test")))
    if not parts.train or not parts.test:
        raise ValueError(f"{what}: need both train and test rows, got {len(parts.train)} and {len(parts.test)}")
    if needs_validation and not parts.validation:
        raise ValueError(f"{what}: no validation rows, which early stopping (patience > 0) and the calibrated "
                         f"CTR normalisation need; rebuild the data with data.validation_fraction > 0")
    parts.train = subset(parts.train, cfg.max_train_examples)
    return parts


@dataclass
class _Encoded:
    """Rows whose inputs fit the RM's max_len, with their token ids per query field."""

    rows: list[dict]
    ids: list[list[list[int]]]
    skipped: int

    def __len__(self) -> int:
        return len(self.rows)


def _encode_rows(rm, rows: list[dict], *query_fields: str) -> _Encoded:
    """Token ids of each row's input per query field, keeping only rows whose inputs fit rm.max_len
    (title, shop info and query alone can be too long)."""
    kept, encoded = [], [[] for _ in query_fields]
    for r in rows:
        try:
            ids = [rm.encode(r, r[f]) for f in query_fields]
        except ValueError:
            continue
        kept.append(r)
        for acc, x in zip(encoded, ids):
            acc.append(x)
    return _Encoded(kept, encoded, len(rows) - len(kept))


def finetune_mode(cfg: RewardModelConfig, model_cfg: ModelConfig | None = None) -> str:
    """``auto``: every weight of the project's tiny model (no base configured), LoRA on any other base."""
    if cfg.finetune != "auto":
        return cfg.finetune
    return "full" if not (cfg.model_dir or (model_cfg and model_cfg.base_dir)) else "lora"


def _out(cfg: RewardModelConfig, kind: str) -> Path:
    return Path(cfg.out or f"runs/rm-{kind}")


def member_samples(n: int, cfg: RewardModelConfig) -> list[tuple[int, np.ndarray]]:
    """(seed, training-row indices) per ensemble member: one member trains on every row in order;
    with more, member i draws a bootstrap resample of the rows from seed + i."""
    if cfg.members == 1:
        return [(cfg.seed, np.arange(n))]
    return [(cfg.seed + i, np.random.default_rng(cfg.seed + i).integers(0, n, n)) for i in range(cfg.members)]


def _mean_loss(n: int, size: int, batch_loss: Callable[[list[int]], torch.Tensor]) -> float:
    """The example-weighted mean of ``batch_loss`` over batches of ``size`` of ``n`` examples, without
    gradients (a validation loss)."""
    total = 0.0
    with torch.inference_mode():
        for start in range(0, n, size):
            idx = list(range(start, min(n, start + size)))
            total += float(batch_loss(idx)) * len(idx)
    return total / max(1, n)


# One member's training: the RM wrapper -> (loss of a batch of its sample, validation loss).
LossesOf = Callable[[object, np.ndarray], tuple[Callable[[list[int]], torch.Tensor], Callable[[], float]]]


def _train_members(kind: str, rm_class, cfg: RewardModelConfig, model_cfg: ModelConfig | None, n_train: int,
                   losses_of: LossesOf, has_validation: bool, data: str) -> tuple[Ensemble, list[dict], str]:
    """Train ``cfg.members`` models on the (already tokenised) training rows; returns the ensemble,
    each member's training metrics and the base model's directory."""
    if runtime().fsdp:
        raise ValueError(f"{kind} RM: its evaluation and calibration score with the unsharded model; train reward "
                         "models with distributed.strategy = 'ddp' (the backbone fits where the policy does)")
    model_dir = base_model_dir(model_cfg, cfg.model_dir)
    tokenizer = tokenizer_of(model_dir)
    out_dir = _out(cfg, kind[:3])
    mode = finetune_mode(cfg, model_cfg)
    members, metrics = [], []
    fingerprint = member_fingerprint(cfg, model_dir, data)
    for i, (seed, sample) in enumerate(member_samples(n_train, cfg)):
        member_dir = out_dir if cfg.members == 1 else out_dir / f"member-{i}"
        if cfg.members > 1 and _finished_member(member_dir, fingerprint, seed):
            # a killed ensemble run resumes: members that finished with these settings are kept
            log.info("%s: member %d/%d finished earlier, reused", kind, i + 1, cfg.members)
            members.append(rm_class(*load_parts(member_dir, kind, "cpu", None)))
            metrics.append(json.loads((member_dir / "metrics.json").read_text()))
            continue
        torch.manual_seed(seed)
        model = base_model(kind, model_dir)
        if mode == "lora":
            model = get_peft_model(model, lora_config(kind, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
        rm = rm_class(model, tokenizer, cfg.max_len)
        step_loss, validate = losses_of(rm, sample)
        name = f"rm-{kind[:3]}" + (f" {i + 1}/{cfg.members}" if cfg.members > 1 else "")
        m = train(model, len(sample), step_loss, replace(cfg, seed=seed), member_dir, lambda: {}, name,
                  validate if has_validation else None)
        meta = {"kind": kind, "base_model": str(Path(model_dir).resolve()), "max_len": cfg.max_len, "data": str(data),
                "finetune": mode, "seed": seed, "train_fingerprint": fingerprint}
        if cfg.members == 1:  # an ensemble's normalisation (and calibration) belong to the ensemble
            meta["normalisation"] = cfg.normalisation
        if kind == "expansion":
            meta["answer_ids"] = [rm.id0, rm.id1]
        save_rm(model, tokenizer, member_dir, meta)
        members.append(rm)
        metrics.append(m)
    return Ensemble(members), metrics, model_dir


def member_fingerprint(cfg: RewardModelConfig, model_dir: str, data: str) -> str:
    """What a member's weights depend on: the settings (but where they go), the base and the data."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    return json.dumps({"settings": settings, "base": dir_hash(model_dir), "data": dir_hash(data)}, sort_keys=True)


def _finished_member(member_dir: Path, fingerprint: str, seed: int) -> bool:
    try:
        meta = json.loads((member_dir / META).read_text())
    except (OSError, ValueError):
        return False
    return (member_dir / "metrics.json").exists() and meta.get("train_fingerprint") == fingerprint \
        and meta.get("seed") == seed


def _finish(cfg: RewardModelConfig, kind: str, model_dir: str, data: str, member_metrics: list[dict],
            results: dict) -> dict:
    """metrics.json (and, for an ensemble, the top-level cmaq_rm.json) of a finished RM."""
    out_dir = _out(cfg, kind[:3])
    if cfg.members == 1:
        metrics = {**member_metrics[0], **results}
    else:
        metrics = {"members": [{k: v for k, v in m.items() if k != "loss_curve"} for m in member_metrics],
                   "train_seconds": round(sum(m["train_seconds"] for m in member_metrics), 1), **results}
        runtime().write_text(out_dir / META, json.dumps({
            "kind": kind, "members": [f"member-{i}" for i in range(cfg.members)], "max_len": cfg.max_len,
            "base_model": str(Path(model_dir).resolve()), "data": str(data), "normalisation": cfg.normalisation,
        }, indent=2))
    metrics["members_count"] = cfg.members
    runtime().write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=float))
    return metrics


# --------------------------------------------------------------------------- expansion


def train_expansion(cfg: RewardModelConfig, data: str, world: str | None = None,
                    model_cfg: ModelConfig | None = None) -> dict:
    splits = _split(_read(data, (*PROMPT_FIELDS, "query", "label", "split")), data, cfg, cfg.patience > 0)
    encoder = ExpansionRM(None, tokenizer_of(base_model_dir(model_cfg, cfg.model_dir)), cfg.max_len)
    train_set = _encode_rows(encoder, splits.train, "query")
    val_set = _encode_rows(encoder, splits.validation, "query")
    test_rows = _encode_rows(encoder, splits.test, "query").rows
    answer = lambda rows: torch.tensor([encoder.id1 if r["label"] else encoder.id0 for r in rows])  # noqa: E731
    targets, val_targets = answer(train_set.rows), answer(val_set.rows)
    (seqs,), (val_seqs,) = train_set.ids, val_set.ids
    val_groups = [r["content_id"] for r in val_set.rows]

    def losses_of(rm, sample: np.ndarray):
        def step_loss(idx: list[int]):
            rows = sample[idx]
            logits = rm.answer_logits([seqs[i] for i in rows])
            return answer_nll(logits, targets[torch.as_tensor(rows)].to(logits.device))

        def validation_loss(idx: list[int]):
            logits = rm.answer_logits([val_seqs[i] for i in idx], [val_groups[i] for i in idx])
            return answer_nll(logits, val_targets[idx].to(logits.device))

        return step_loss, lambda: _mean_loss(len(val_seqs), cfg.eval_batch_size, validation_loss)

    ensemble, member_metrics, model_dir = _train_members("expansion", ExpansionRM, cfg, model_cfg, len(train_set),
                                                            losses_of, bool(len(val_set)), data)
    per_member = ensemble.member_scores(test_rows, [r["query"] for r in test_rows], cfg.eval_batch_size)
    p = per_member.mean(axis=0)
    labels = np.array([r["label"] for r in test_rows])
    results = {"test_examples": len(test_rows), "validation_examples": len(val_set),
               "test_accuracy": round(float(((p > 0.5) == labels).mean()), 4),
               "test_positive_rate": round(float(labels.mean()), 4), "test_auc": _auc(p, labels),
               "skipped_too_long": [train_set.skipped, len(splits.test) - len(test_rows)]}
    if cfg.members > 1:
        results["member_test_accuracy"] = [round(float(((s > 0.5) == labels).mean()), 4) for s in per_member]
    if world:
        results["oracle"] = oracle_agreement(ensemble, world, {r["content_id"] for r in test_rows}, "true_exp",
                                             cfg.eval_batch_size)
    metrics = _finish(cfg, "expansion", model_dir, data, member_metrics, results)
    log.info("expansion RM: test accuracy %.3f -> %s", metrics["test_accuracy"], _out(cfg, "exp"))
    return metrics


# --------------------------------------------------------------------------- CTR


def logged_points(pairs: list[dict]) -> pd.DataFrame:
    """The pointwise logged CTR inside CTR pairs: one row per (content, query) with its impressions
    and clicks (a query appears in several pairs of its content with the same counts)."""
    sides = [{"content_id": r["content_id"], "query": r[f"y_{s}"], "impressions": r[f"impressions_{s}"],
              "clicks": r[f"clicks_{s}"], "row": r} for r in pairs for s in ("plus", "minus")]
    frame = pd.DataFrame(sides, columns=["content_id", "query", "impressions", "clicks", "row"])
    return frame.drop_duplicates(["content_id", "query"]).reset_index(drop=True)


def calibration_report(ensemble: Ensemble, validation: list[dict], test: list[dict], batch_size: int,
                       out_dir: Path) -> dict:
    """Fit raw score -> click probability on the validation split's logged CTR (isotonic, weighted by
    impressions), save it, and report each normalisation's expected calibration error on the test split."""
    val, tst = logged_points(validation), logged_points(test)
    if val.empty or tst.empty:
        return {"validation_points": len(val), "test_points": len(tst), "ece": None}
    raw_val = ensemble.score(list(val["row"]), list(val["query"]), batch_size)
    calibration = fit_isotonic(raw_val, val["clicks"] / val["impressions"], val["impressions"])
    runtime().write_text(out_dir / CALIBRATION, json.dumps(calibration.to_dict()))
    raw = ensemble.score(list(tst["row"]), list(tst["query"]), batch_size)
    groups = list(tst["content_id"])
    ece = {method: round(expected_calibration_error(normalise_ctr(raw, method, groups, calibration),
                                                    tst["clicks"], tst["impressions"]), 5)
           for method in ("sigmoid", "minmax", "calibrated")}
    return {"validation_points": len(val), "test_points": len(tst), "knots": len(calibration.knots_x),
            "ece": ece, "test_logged_ctr": round(float(tst["clicks"].sum() / tst["impressions"].sum()), 5)}


def train_ctr(cfg: RewardModelConfig, data: str, world: str | None = None,
              model_cfg: ModelConfig | None = None) -> dict:
    needs_validation = cfg.patience > 0 or cfg.normalisation == "calibrated"
    splits = _split(_read(data, (*PROMPT_FIELDS, "y_plus", "y_minus", "split")), data, cfg, needs_validation)
    encoder = CtrRM(None, tokenizer_of(base_model_dir(model_cfg, cfg.model_dir)), cfg.max_len)
    train_set = _encode_rows(encoder, splits.train, "y_plus", "y_minus")
    val_set = _encode_rows(encoder, splits.validation, "y_plus", "y_minus")
    test_rows = _encode_rows(encoder, splits.test, "y_plus", "y_minus").rows
    plus, minus = train_set.ids
    val_plus, val_minus = val_set.ids

    def losses_of(rm, sample: np.ndarray):
        def step_loss(idx: list[int]):
            rows = sample[idx]
            # One forward for both sides; a pair's two texts share the content before the query.
            r = rm.rewards([plus[i] for i in rows] + [minus[i] for i in rows], groups=list(idx) * 2)
            return bpr_loss(r[:len(idx)], r[len(idx):])

        def validation_loss(idx: list[int]):
            r = rm.rewards([val_plus[i] for i in idx] + [val_minus[i] for i in idx], groups=list(idx) * 2)
            return bpr_loss(r[:len(idx)], r[len(idx):])

        return step_loss, lambda: _mean_loss(len(val_plus), cfg.eval_batch_size, validation_loss)

    ensemble, member_metrics, model_dir = _train_members("ctr", CtrRM, cfg, model_cfg, len(train_set), losses_of,
                                                            bool(len(val_set)), data)
    n = len(test_rows)
    queries = [x["y_plus"] for x in test_rows] + [x["y_minus"] for x in test_rows]
    per_member = ensemble.member_scores(test_rows + test_rows, queries, cfg.eval_batch_size)
    r = per_member.mean(axis=0)
    results = {"test_pairs": n, "validation_pairs": len(val_set),
               "test_pair_accuracy": round(float((r[:n] > r[n:]).mean()), 4),
               "skipped_too_long": [train_set.skipped, len(splits.test) - n]}
    if cfg.members > 1:
        results["member_test_pair_accuracy"] = [round(float((s[:n] > s[n:]).mean()), 4) for s in per_member]
    if len(val_set):
        results["calibration"] = calibration_report(ensemble, val_set.rows, test_rows, cfg.eval_batch_size,
                                                    _out(cfg, "ctr"))
    if world:
        results["oracle"] = oracle_agreement(ensemble, world, {x["content_id"] for x in test_rows}, "true_ctr",
                                             cfg.eval_batch_size)
    metrics = _finish(cfg, "ctr", model_dir, data, member_metrics, results)
    log.info("CTR RM: test pair accuracy %.3f -> %s", metrics["test_pair_accuracy"], _out(cfg, "ctr"))
    return metrics


# --------------------------------------------------------------------------- agreement with the answer key


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC (Mann–Whitney, ties counted half): the chance a positive outscores a negative."""
    pos, neg = int(labels.sum()), int(len(labels) - labels.sum())
    if not pos or not neg:
        return None
    ranks = pd.Series(scores).rank().to_numpy()
    return round(float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)), 4)


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
