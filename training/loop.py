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
#: Seconds between progress lines in the log (the progress bar, on a terminal, is the live view).
PROGRESS_LOG_S = 30.0


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


def _trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _trainable_state_on_cpu(model) -> dict:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


class _EarlyStopping:
    """Validation loss at fixed steps; remembers the best weights and says when to stop (after
    ``patience`` validations in a row without a lower loss; 0: never)."""

    def __init__(self, patience: int, saved: dict | None = None):
        self.patience = patience
        saved = saved or {}
        self.curve: list[tuple[int, float]] = [tuple(x) for x in saved.get("curve", [])]
        self.best = saved.get("best", math.inf)
        self.best_step = saved.get("best_step")
        self.bad = saved.get("bad", 0)
        self.best_state: dict | None = saved.get("best_state")

    def record(self, step: int, loss: float, model) -> bool:
        """True when training should stop."""
        self.curve.append((step, round(loss, 6)))
        if loss < self.best - 1e-9:
            self.best, self.best_step, self.bad = loss, step, 0
            self.best_state = _trainable_state_on_cpu(model)
        else:
            self.bad += 1
        return self.patience > 0 and self.bad >= self.patience

    def state(self) -> dict:
        return {"curve": self.curve, "best": self.best, "best_step": self.best_step, "bad": self.bad,
                "best_state": self.best_state}


def train(model, n_examples: int, step_loss: Callable[[list[int]], "object"], cfg, out_dir: Path,
          evaluate: Callable[[], dict], describe: str,
          validate: Callable[[], float] | None = None) -> dict:
    """Run (or resume) training; returns the metrics also written to ``out_dir/metrics.json``.

    step_loss(indices) -> scalar loss tensor for those training examples.
    evaluate() -> held-out metrics, called at the end.
    validate() -> the mean loss on the validation split (no gradients), called every
    ``cfg.validate_every`` steps (0: once per epoch) when given. With ``cfg.patience`` > 0 training
    stops after that many validations without improvement; either way the weights of the lowest
    validation loss are the ones kept.
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
    every = getattr(cfg, "validate_every", 0) or max(1, math.ceil(n_examples / cfg.batch_size))
    ckpt = out_dir / CHECKPOINT
    start, curve, early = 0, [], _EarlyStopping(getattr(cfg, "patience", 0))
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, curve = state["step"], state["curve"]
        early = _EarlyStopping(early.patience, state.get("early"))
        log.info("%s: resuming at step %d/%d", describe, start, len(plan))
    t0 = last_log = time.perf_counter()
    model.train()
    stopped_at = None
    # disable=None: no bar where stderr is no terminal (a log file); the progress log lines stand in
    bar = tqdm(range(start, len(plan)), initial=start, total=len(plan), desc=describe, mininterval=2.0,
               disable=None)
    for step in bar:
        with precision:
            loss = step_loss(plan[step])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        curve.append(round(float(loss.detach()), 5))
        bar.set_postfix(loss=f"{sum(curve[-20:]) / len(curve[-20:]):.4f}")
        done = step + 1
        if time.perf_counter() - last_log >= PROGRESS_LOG_S:
            last_log = time.perf_counter()
            rate = (done - start) / (last_log - t0)
            log.info("%s: step %d/%d, loss %.4f, %.1f steps/s, ETA %.0f s", describe, done, len(plan),
                     sum(curve[-20:]) / len(curve[-20:]), rate, (len(plan) - done) / rate)
        if validate is not None and (done % every == 0 or done == len(plan)):
            model.eval()
            with precision:
                stop = early.record(done, float(validate()), model)
            model.train()
            log.info("%s: step %d validation loss %.5f (best %.5f at step %s)", describe, done,
                     early.curve[-1][1], early.best, early.best_step)
            if stop:
                stopped_at = done
                break
        if done % cfg.checkpoint_every == 0 and done < len(plan):
            ckpt.mkdir(parents=True, exist_ok=True)
            tmp = ckpt / "state.pt.tmp"
            torch.save({"trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": done, "curve": curve,
                        "early": early.state()}, tmp)
            tmp.replace(ckpt / "state.pt")
    bar.close()
    if early.best_state is not None:
        model.load_state_dict({n: t.to(device) for n, t in early.best_state.items()}, strict=False)
    model.eval()
    metrics = {"steps": len(plan), "steps_run": stopped_at or len(plan), "resumed_at": start,
               "train_seconds": round(time.perf_counter() - t0, 1),
               "examples": n_examples, "loss_first": curve[0] if curve else None,
               "loss_last20": round(sum(curve[-20:]) / max(1, len(curve[-20:])), 5), "loss_curve": curve}
    if validate is not None:
        metrics.update(validation_curve=early.curve, best_validation_loss=round(early.best, 6),
                       best_step=early.best_step, stopped_early_at=stopped_at)
    metrics.update(evaluate())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(ckpt, ignore_errors=True)
    return metrics


def subset(rows: Sequence, limit: int) -> Sequence:
    return rows[:limit] if limit else rows
