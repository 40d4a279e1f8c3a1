"""The training loop shared by the reward models, SFT, the alignment loop and the baselines, on Hugging
Face Accelerate: AdamW on the trainable (LoRA + head) parameters, linear warm-up then cosine decay,
gradient clipping, gradient accumulation, mixed precision, a progress bar, checkpoints and resume, on
one process or several (:mod:`training.distributed`).

Accelerate directly, not TRL's or Transformers' trainers: the losses are pure functions of per-sequence
log-probabilities computed with shared-prefix forward passes (a preference pair's prompt runs once),
each CMAQ pair carries its own β and reference log-probabilities, and QSA's loss is a token mean over
the global batch; a Trainer would own the forward pass and the batching these depend on.

The data order is a seeded permutation per epoch, split into global batches of ``batch_size``; every
process takes its piece of each, so a run on N processes takes the same steps as a run on one, and
a resumed run sees exactly the batches the killed run had not yet seen.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm.auto import tqdm

from training.distributed import Runtime, runtime

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
    """Where this process's models train: its GPU when there is one (the GPU profile; each rank of a
    multi-GPU run its own), else the CPU."""
    return str(runtime().device)


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


class _StepLoss(torch.nn.Module):
    """What Accelerate prepares: the model, with one micro-batch's loss as its forward. DDP and FSDP act
    when the module they wrap is called (DDP readies its gradient all-reduce, FSDP gathers the root's
    parameters); the trainers' losses reach into the model's submodules (shared-prefix forward passes),
    so the call has to go through this wrapper."""

    def __init__(self, model, step_loss: Callable[[list[int]], "torch.Tensor"]):
        super().__init__()
        self.model = model
        self._step_loss = step_loss

    def forward(self, indices: list[int]):
        return self._step_loss(indices)


class _Pieces(torch.utils.data.Dataset):
    """The run's micro-batches, each cut into one piece per process: item ``m * world + r`` is process r's
    piece of micro-batch m. A loader with batch size ``world`` prepared with ``split_batches`` hands
    process r its piece of each micro-batch; pieces may be empty (a micro-batch smaller than the world)."""

    def __init__(self, micro: list[list[int]], world: int):
        self.micro, self.world = micro, world

    def __len__(self) -> int:
        return len(self.micro) * self.world

    def __getitem__(self, i: int) -> list[int]:
        m, r = divmod(i, self.world)
        return _cut(self.micro[m], self.world)[r]


def _cut(indices: list[int], parts: int) -> list[list[int]]:
    """``indices`` in ``parts`` contiguous pieces, the first ones one longer when uneven."""
    n = len(indices)
    return [indices[i * n // parts:(i + 1) * n // parts] for i in range(parts)]


class _Progress:
    """The loop's own state in a checkpoint (Accelerate saves model, optimizer, scheduler and random
    states): steps done, the loss curve and early stopping."""

    def __init__(self, patience: int):
        self.step, self.curve, self.early = 0, [], _EarlyStopping(patience)

    def state_dict(self) -> dict:
        return {"step": self.step, "curve": self.curve, "early": self.early.state()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.curve = state["step"], state["curve"]
        self.early = _EarlyStopping(self.early.patience, state["early"])


def _latest_checkpoint(ckpt: Path) -> Path | None:
    """The newest complete checkpoint (``step-N``; one being written is still ``.step-N.tmp-*``)."""
    steps = [p for p in ckpt.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return max(steps, key=lambda p: int(p.name[5:])) if steps else None


def train(model, n_examples: int, step_loss: Callable[[list[int]], "object"], cfg, out_dir: Path,
          evaluate: Callable[[], dict], describe: str,
          validate: Callable[[], float] | None = None, example_weights: Sequence[float] | None = None,
          save: Callable[[dict | None], None] | None = None) -> dict:
    """Run (or resume) training on every process of the run; returns the metrics the main process
    also writes to ``out_dir/metrics.json``.

    step_loss(indices) -> the mean loss of those training examples (a scalar tensor), weighted as
    ``example_weights`` says (default: an example mean; QSA's token mean passes each query's token
    count). Each process gets its piece of every step's global batch of ``cfg.batch_size`` examples and
    scales its mean by its share of the step's weight, so the gradient is the global batch's whatever
    the number of processes and accumulation micro-batches.
    evaluate() -> held-out metrics, called at the end.
    validate() -> the mean loss on the validation split (no gradients), called every
    ``cfg.validate_every`` steps (0: once per epoch) when given. With ``cfg.patience`` > 0 training
    stops after that many validations without improvement; either way the weights of the lowest
    validation loss are the ones kept.
    save(state_dict) -> writes the trained weights (the main process writes); called on every process at
    the end with None, or under FSDP (whose parameters are shards) with the trainable weights gathered
    whole on the main process ({} on the others).
    """
    rt = runtime()
    if validate is not None and rt.fsdp:
        raise ValueError(f"{describe}: validation and early stopping read the unsharded model; run it with "
                         "distributed.strategy = 'ddp' or without a validation split")
    acc = rt.accelerator()
    accumulation = acc.gradient_accumulation_steps
    plan = batches_of(n_examples, cfg.batch_size, cfg.epochs, cfg.seed)
    weights = [1.0] * n_examples if example_weights is None else [float(w) for w in example_weights]
    step_weight = [sum(weights[i] for i in batch) for batch in plan]
    micro = [chunk for batch in plan for chunk in _cut(batch, accumulation)]
    warmup = min(cfg.warmup_steps, max(1, len(plan) // 10))
    wrapped = _StepLoss(model, step_loss)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    scheduler = cosine_with_warmup(optimizer, warmup, len(plan))
    loader = torch.utils.data.DataLoader(_Pieces(micro, rt.world), batch_size=rt.world, shuffle=False,
                                         collate_fn=lambda pieces: pieces)
    wrapped, optimizer, scheduler, loader = acc.prepare(wrapped, optimizer, scheduler, loader)
    # the names Accelerate saves and loads by: the unwrapped module's (DDP's state dict drops "module.")
    trainable = {n for n, p in acc.unwrap_model(wrapped).named_parameters() if p.requires_grad}
    if not rt.fsdp:
        acc.register_save_state_pre_hook(_only_trainable(trainable))
    progress = _Progress(getattr(cfg, "patience", 0))
    acc.register_for_checkpointing(progress)
    every = getattr(cfg, "validate_every", 0) or max(1, math.ceil(n_examples / cfg.batch_size))
    ckpt = out_dir / CHECKPOINT
    latest = _latest_checkpoint(ckpt)
    if latest is not None:
        if not rt.fsdp:
            _check_covers(latest, trainable)
        acc.load_state(str(latest), strict=False)  # not strict: the frozen base is not in it
        log.info("%s: resuming at step %d/%d", describe, progress.step, len(plan))
    elif (ckpt / "state.pt").exists():
        log.warning("%s: %s is a checkpoint of the loop before Accelerate; starting over", describe, ckpt)
    start = progress.step
    t0 = last_log = time.perf_counter()
    wrapped.train()
    stopped_at = None
    # disable: no bar where stderr is no terminal (a log file; the progress log lines stand in) or
    # off the main process
    bar = tqdm(total=len(plan), initial=start, desc=describe, mininterval=2.0,
               disable=None if acc.is_main_process else True)
    # The data order is the plan's: a resumed run skips the micro-batches of the steps it had done.
    batches = iter(acc.skip_first_batches(loader, start * accumulation) if start else loader)
    for step in range(start, len(plan)):
        rt.step_reached(step)
        share = torch.zeros((), device=acc.device)
        # the gradient all-reduce inside backward is a collective too: a dead or hung rank is named here
        with rt.collective(f"training step {step + 1}"):
            for _ in range(accumulation):
                piece = next(batches)[0]
                with acc.accumulate(wrapped):
                    # An empty piece still runs (scaled to nothing): every rank joins every all-reduce.
                    loss = wrapped(piece or plan[step][:1])
                    scale = sum(weights[i] for i in piece) / step_weight[step] * rt.world * accumulation
                    acc.backward(loss * scale)
                    share += loss.detach().float() * scale / (rt.world * accumulation)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(wrapped.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            step_loss_value = float(rt.reduce_sum(share))
        progress.curve.append(round(step_loss_value, 5))
        curve = progress.curve
        bar.update(1)
        bar.set_postfix(loss=f"{sum(curve[-20:]) / len(curve[-20:]):.4f}")
        done = step + 1
        progress.step = done
        if time.perf_counter() - last_log >= PROGRESS_LOG_S and acc.is_main_process:
            last_log = time.perf_counter()
            rate = (done - start) / (last_log - t0)
            log.info("%s: step %d/%d, loss %.4f, %.1f steps/s, ETA %.0f s", describe, done, len(plan),
                     sum(curve[-20:]) / len(curve[-20:]), rate, (len(plan) - done) / rate)
        if validate is not None and (done % every == 0 or done == len(plan)):
            wrapped.eval()
            with acc.autocast():
                # the main process's loss decides for all: ranks that disagreed by a rounding error
                # would stop at different steps and wait on each other
                loss_value = rt.from_main_value(float(validate()))
            stop = progress.early.record(done, loss_value, model)
            wrapped.train()
            if acc.is_main_process:
                log.info("%s: step %d validation loss %.5f (best %.5f at step %s)", describe, done,
                         progress.early.curve[-1][1], progress.early.best, progress.early.best_step)
            if stop:
                stopped_at = done
                break
        if done % cfg.checkpoint_every == 0 and done < len(plan):
            _checkpoint(acc, rt, ckpt, done)
    bar.close()
    if progress.early.best_state is not None:
        model.load_state_dict({n: t.to(acc.device) for n, t in progress.early.best_state.items()}, strict=False)
    wrapped.eval()
    curve = progress.curve
    metrics = {"steps": len(plan), "steps_run": stopped_at or len(plan), "resumed_at": start,
               "train_seconds": round(time.perf_counter() - t0, 1), "processes": rt.world,
               "distributed": str(acc.distributed_type.value),
               "examples": n_examples, "loss_first": curve[0] if curve else None,
               "loss_last20": round(sum(curve[-20:]) / max(1, len(curve[-20:])), 5), "loss_curve": curve}
    if validate is not None:
        early = progress.early
        metrics.update(validation_curve=early.curve, best_validation_loss=round(early.best, 6),
                       best_step=early.best_step, stopped_early_at=stopped_at)
    if save is not None:
        # FSDP: the full weights, gathered by every rank (a collective); DDP and one process: the model's own
        full = _trainable_full_state(wrapped) if rt.fsdp else None
        save(None if full is None else {k.removeprefix("model."): v for k, v in full.items()})
    metrics.update(evaluate())
    rt.write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    rt.remove(ckpt)
    acc.free_memory()
    return metrics


def _only_trainable(names: set[str]):
    """A save-state hook: a LoRA checkpoint holds the adapter (and head), not the frozen base."""
    def hook(_models, states: list[dict], _output_dir) -> None:
        for i, state in enumerate(states):
            states[i] = {k: v for k, v in state.items() if k in names}

    return hook


def _trainable_full_state(wrapped) -> dict:
    """The trainable weights of an FSDP model, whole, on the main process's CPU (a collective; the frozen
    base is neither gathered nor copied)."""
    return get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                   ignore_frozen_params=True))


def _check_covers(checkpoint: Path, trainable: set[str]) -> None:
    """A checkpoint this model can resume from holds every trainable weight (loading is not strict, as
    the frozen base is left out, so a checkpoint of another model would otherwise load nothing, silently)."""
    if not (checkpoint / "model.safetensors").exists():  # a DeepSpeed checkpoint (untested): its own format
        return
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        missing = trainable - set(f.keys())
    if missing:
        raise ValueError(f"{checkpoint}: not a checkpoint of this model ({len(missing)} trainable weights missing, "
                         f"e.g. {sorted(missing)[0]}); remove it to start over")


def _checkpoint(acc, rt: Runtime, ckpt: Path, step: int) -> None:
    """Accelerate's state after ``step`` steps, in ``ckpt/step-<step>``: written by every process (random
    states, FSDP shards) under a temporary name, renamed into place by the main process once all have
    written, then the older ones removed. A run killed while writing resumes from the previous one."""
    tmp = ckpt / f".step-{step}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    rt.barrier("checkpoint")
    acc.save_state(str(tmp))
    rt.barrier("checkpoint saved")
    if acc.is_main_process:
        tmp.rename(ckpt / f"step-{step}")
        for old in ckpt.glob("step-*"):
            if old.name != f"step-{step}":
                shutil.rmtree(old, ignore_errors=True)
    rt.barrier("checkpoint renamed")


def subset(rows: Sequence, limit: int) -> Sequence:
    return rows[:limit] if limit else rows
