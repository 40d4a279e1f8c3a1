"""A small training loop shared by the reward models, SFT and the alignment loop: AdamW on the trainable (LoRA + head)
parameters, linear warm-up then cosine decay, gradient clipping, a progress bar, checkpoints and
resume. The data order is a seeded permutation per epoch, so a resumed run sees exactly the batches
the killed run had not yet seen.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"


def cosine_with_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batches_of(n: int, batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Every step's example indices: whole epochs of seeded permutations, then a fraction of one."""
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, round(steps_per_epoch * epochs))
    out: list[list[int]] = []
    epoch = 0
    while len(out) < total:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1009 + epoch)).tolist()
        out.extend(perm[i:i + batch_size] for i in range(0, n, batch_size))
        epoch += 1
    return out[:total]


def default_device() -> str:
    """Where models train: the GPU when there is one (the GPU profile), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(model, n_examples: int, step_loss: Callable[[list[int]], "object"], cfg, out_dir: Path,
          evaluate: Callable[[], dict], describe: str) -> dict:
    """Run (or resume) training; returns the metrics also written to ``out_dir/metrics.json``.

    step_loss(indices) -> scalar loss tensor for those training examples.
    evaluate() -> held-out metrics, called at the end.
    """
    device = default_device()
    model.to(device)
    if device == "cuda":
        # bf16 autocast (the loss functions upcast their log-softmaxes) and TF32 for what stays fp32:
        # in plain fp32 an H100 spends ~0.3 s per step of a 37M model on matmuls.
        torch.backends.cuda.matmul.allow_tf32 = True
        precision = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        precision = contextlib.nullcontext()
    plan = batches_of(n_examples, cfg.batch_size, cfg.epochs, cfg.seed)
    warmup = min(cfg.warmup_steps, max(1, len(plan) // 10))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    scheduler = cosine_with_warmup(optimizer, warmup, len(plan))
    ckpt = out_dir / CHECKPOINT
    start, curve = 0, []
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, curve = state["step"], state["curve"]
        log.info("%s: resuming at step %d/%d", describe, start, len(plan))
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(start, len(plan)), initial=start, total=len(plan), desc=describe, mininterval=2.0)
    for step in bar:
        with precision:
            loss = step_loss(plan[step])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        curve.append(round(float(loss), 5))
        bar.set_postfix(loss=f"{sum(curve[-20:]) / len(curve[-20:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < len(plan):
            ckpt.mkdir(parents=True, exist_ok=True)
            tmp = ckpt / "state.pt.tmp"
            trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            torch.save({"trainable": trainable, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step + 1, "curve": curve}, tmp)
            tmp.replace(ckpt / "state.pt")
    model.eval()
    metrics = {"steps": len(plan), "resumed_at": start, "train_seconds": round(time.perf_counter() - t0, 1),
               "examples": n_examples, "loss_first": curve[0] if curve else None,
               "loss_last20": round(sum(curve[-20:]) / max(1, len(curve[-20:])), 5), "loss_curve": curve,
               **evaluate()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(ckpt, ignore_errors=True)
    return metrics


def subset(rows: Sequence, limit: int) -> Sequence:
    return rows[:limit] if limit else rows
