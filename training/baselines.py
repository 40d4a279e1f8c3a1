"""The baselines users compare CMAQ with. All start from the same QSA adapter, train 3 epochs
(`align.baseline_epochs`) against the QSA policy as a fixed reference, and write a PEFT adapter.

- ``dpo``: DPO on the CTR pairs mined from the logs (`cmaq data ctr-pairs`).
- From one preference set built once (k queries per content sampled from QSA, scored by both RMs,
  ``<out>/preferences.parquet`` or ``align.first_samples``: CMAQ's first-iteration samples):
  - ``dpo-lw``: α·DPO on expansion pairs + (1−α)·DPO on CTR pairs, each objective's pair its best
    vs worst candidate;
  - ``dpo-soup``: one adapter per objective, merged with weight α on the exact weight deltas
    (concatenating the LoRA factors: α·B1A1 + (1−α)·B2A2 = [αB1 | (1−α)B2]·[A1; A2]);
  - ``morl``: reward α·r_exp + (1−α)·r_ctr, highest vs lowest candidate.
- Zero-shot is the bare base model (no adapter); it needs no training.

The sample-based baselines take CMAQ's ``align.reward_gate``: a candidate the serving filters drop has
r_exp = r_ctr = 0, so it is never a best and is the worst when it is the lowest (:mod:`training.gate`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from cmaq.config import AlignConfig, EngineConfig, FiltersConfig, ModelConfig
from cmaq.engines import base_model_dir
from training.distributed import runtime
from training.gate import RewardGate, judge_sharded
from training.loop import train
from training.policy import load_policy, save_policy
from training.preference import encode_pairs, first_iteration_samples, pair_loss_fn, reference_logps, sampler_engine
from training.reward_models.models import tokenizer_of
from training.reward_models.scorer import RewardScorer

log = logging.getLogger(__name__)
METHODS = ("dpo", "dpo-lw", "dpo-soup", "morl")


def build_preference_set(cfg: AlignConfig, rows: list[dict], path: Path, model_dir: str,
                         engine_cfg: EngineConfig, filters_cfg: FiltersConfig | None = None) -> list[dict]:
    """k QSA queries per content with both rewards, built once and reused by every baseline. They are
    CMAQ's first-iteration samples (same contents, same draws), so the baselines and CMAQ start from
    the same data; with ``align.first_samples`` set the file is shared with the CMAQ runs. A candidate
    the reward gate drops gets r_exp = r_ctr = 0 (``passed`` False)."""
    items, candidates, r_exp, r_ctr = first_iteration_samples(
        cfg, rows, lambda: sampler_engine(cfg, engine_cfg, model_dir), lambda: RewardScorer(cfg.rm_exp, cfg.rm_ctr),
        Path(cfg.first_samples) if cfg.first_samples else path, engine_cfg)
    passed = judge_sharded(RewardGate(cfg.reward_gate, filters_cfg), items, candidates).passed
    flat = [(it, q) for it, qs in zip(items, candidates) for q in qs]
    return [{"content_id": it["content_id"], "query": q, "r_exp": float(e) if ok else 0.0,
             "r_ctr": float(c) if ok else 0.0, "passed": bool(ok), "item": it}
            for (it, q), e, c, ok in zip(flat, r_exp, r_ctr, passed)]


def best_vs_worst(prefs: list[dict], key) -> list[dict]:
    """Per content, the candidate with the highest ``key`` against the one with the lowest (skipped
    when they tie)."""
    groups: dict[str, list[dict]] = {}
    for p in prefs:
        groups.setdefault(p["content_id"], []).append(p)
    pairs = []
    for cands in groups.values():
        hi, lo = max(cands, key=key), min(cands, key=key)
        if key(hi) > key(lo):
            pairs.append({"item": hi["item"], "chosen": hi["query"], "rejected": lo["query"]})
    return pairs


def ctr_log_pairs(path: str, limit: int, seed: int) -> list[dict]:
    rows = [r for r in pq.read_table(path).to_pylist() if r["split"] == "train"]
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in rng.permutation(len(rows))[:limit]]
    return [{"item": r, "chosen": r["y_plus"], "rejected": r["y_minus"]} for r in rows]


def train_dpo(cfg: AlignConfig, pairs: list[dict], out: Path, model_dir: str,
              weights: list[float] | None = None) -> dict:
    """DPO (β = β0, no NLL term) from the QSA adapter with QSA as the fixed reference."""
    if not pairs:
        raise RuntimeError(f"{out.name}: no preference pairs")
    tokenizer = tokenizer_of(model_dir)
    torch.manual_seed(cfg.seed)
    model = load_policy(model_dir, cfg.qsa, trainable=True)
    encoded = encode_pairs(tokenizer, pairs, cfg.max_prompt_tokens)
    reference_logps(model, tokenizer, pairs, encoded)
    step_loss = pair_loss_fn(model, tokenizer, pairs, encoded, cfg.beta0, weights=weights)
    metrics = train(model, len(pairs), step_loss, replace(cfg, epochs=cfg.baseline_epochs), out, lambda: {}, out.name,
                    save=lambda state: save_policy(model, out, cfg, model_dir, state))
    return {"pairs": len(pairs), **{k: metrics[k] for k in ("steps", "loss_first", "loss_last20")}}


def merge_lora_soup(a: Path, b: Path, alpha: float, out: Path) -> Path:
    """α·(adapter a's weight delta) + (1−α)·(adapter b's), exactly, as one LoRA adapter of twice the rank."""
    cfg_a = json.loads((a / "adapter_config.json").read_text())
    cfg_b = json.loads((b / "adapter_config.json").read_text())
    if (cfg_a["r"], cfg_a["lora_alpha"]) != (cfg_b["r"], cfg_b["lora_alpha"]):
        raise ValueError("the two adapters must share r and lora_alpha")
    wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    if set(wa) != set(wb):
        raise ValueError("the two adapters must adapt the same modules")
    merged = {}
    for key, value in wa.items():
        if "lora_A" in key:
            merged[key] = torch.cat([value, wb[key]], 0)
        elif "lora_B" in key:
            merged[key] = torch.cat([alpha * value, (1 - alpha) * wb[key]], 1)
        else:
            raise ValueError(f"cannot merge {key}: only LoRA factors are supported")

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file(merged, str(tmp / "adapter_model.safetensors"))
        # Twice the rank with twice the alpha keeps the scale alpha/r, so the merge is exact.
        (tmp / "adapter_config.json").write_text(json.dumps({**cfg_a, "r": 2 * cfg_a["r"],
                                                             "lora_alpha": 2 * cfg_a["lora_alpha"]}, indent=2))

    return runtime().write(out, write)


def run_baseline(cfg: AlignConfig, method: str, data: str, ctr_pairs: str | None = None,
                 model_cfg: ModelConfig | None = None, engine_cfg: EngineConfig | None = None,
                 filters_cfg: FiltersConfig | None = None) -> dict:
    """Train one baseline from the QSA adapter into ``<align.out>/<method>/adapter``; the base model, the
    sampler's settings and the reward gate as for :func:`training.align.run_align`."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}: use one of {METHODS}")
    for path in (data, cfg.qsa, cfg.rm_exp, cfg.rm_ctr):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: missing")
    if method == "dpo" and not ctr_pairs:
        raise ValueError("dpo trains on the mined CTR pairs: give --ctr-pairs")
    out = Path(cfg.out or "runs/baselines")
    target = out / method
    model_dir = base_model_dir(model_cfg, cfg.model_dir)
    if method == "dpo":
        result = train_dpo(cfg, ctr_log_pairs(ctr_pairs, cfg.contents, cfg.seed), target, model_dir)
    else:
        prefs = build_preference_set(cfg, pq.read_table(data).to_pylist(), out / "preferences.parquet", model_dir,
                                     engine_cfg or EngineConfig(), filters_cfg)
        exp_pairs = best_vs_worst(prefs, lambda p: p["r_exp"])
        ctr_pairs_ = best_vs_worst(prefs, lambda p: p["r_ctr"])
        a = cfg.alpha
        if method == "morl":
            result = train_dpo(cfg, best_vs_worst(prefs, lambda p: a * p["r_exp"] + (1 - a) * p["r_ctr"]), target,
                               model_dir)
        elif method == "dpo-lw":
            # Weights 2α and 2(1−α) over the two pair sets: with equal counts, α·L_exp + (1−α)·L_ctr.
            weights = [2 * a] * len(exp_pairs) + [2 * (1 - a)] * len(ctr_pairs_)
            result = train_dpo(cfg, exp_pairs + ctr_pairs_, target, model_dir, weights)
        else:
            r_exp = train_dpo(cfg, exp_pairs, out / "soup-exp", model_dir)
            r_ctr = train_dpo(cfg, ctr_pairs_, out / "soup-ctr", model_dir)
            merge_lora_soup(out / "soup-exp" / "adapter", out / "soup-ctr" / "adapter", a, target / "adapter")
            result = {"exp": r_exp, "ctr": r_ctr}
    result = {"method": method, "alpha": cfg.alpha, "adapter": str(target / "adapter"), **result}
    runtime().write_text(target / "summary.json", json.dumps(result, indent=2))
    return result
