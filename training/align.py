"""The CMAQ loop (the method's Algorithm 1) and its ablations.

    cmaq train align --data DATA/sft [--set align.alpha=0.4 ...]

For t = 1..T, starting from the QSA adapter:

1. sample N contents of D_SFT; the previous policy π_{t−1} samples k queries for each;
2. both reward models score them; r = r_exp^α · r_ctr^(1−α) (arithmetic mean for w/o CDS);
3. positives r > τ1, negatives r < τ2; each content with both gives one random pair (y_c, y_l);
4. β̃ = 1 + γ (r_c (1 − r_l) − M), M the mean of r_c (1 − r_l) over the iteration's pairs (β̃ ≡ 1 for
   w/o CT); β = β0 · β̃;
5. one epoch of loss −log σ(β (Δ(y_c) − Δ(y_l))) − λ log π_θ(y_c|x) / |y_c|,
   Δ(y) = log π_θ(y|x) − log π_{t−1}(y|x) (`cmaq.losses.consistent_dpo_loss`).

The paper prints the ratio π_θ/π_{t−1} inside σ; the log-ratio is meant (it is DPO's implicit
reward), and is what this computes.

Adapter lineage: one LoRA adapter on a fixed base throughout. Iteration t loads the adapter as
iteration t−1 left it, computes the reference log-probabilities of every pair with it *before* any
update (stored in ``iter-t/pairs.parquet``), then trains the same adapter further. The reference is
therefore π_{t−1}, not the bare base model (TRL's default with PEFT).

Thresholds: with ``tau_mode = "quantile"`` (default), τ1 and τ2 are the 0.7 and 0.3 quantiles of the
iteration's rewards. The reward models' scales depend on the backbone and on the CTR normalisation,
and the policy's rewards rise from one iteration to the next; fixed values would give few pairs at
first and then nothing to reject. Quantiles keep the share of candidates that qualify stable. The
absolute mode takes τ1/τ2 as rewards.

Iteration 1 samples from QSA, which every run of a study shares: with ``align.first_samples`` its
queries and both rewards are drawn once into that file and read by every later run with the same
QSA, seed, N, k and temperature (α, the mean and β do not enter until the pairs are mined).

Layout: ``<out>/iter-<t>/{pairs.parquet, adapter/, metrics.json, DONE}``, ``<out>/adapter`` (the final
policy) and ``<out>/metrics.json``. A killed run resumes at the first unfinished iteration (inside it,
from the training loop's checkpoint, with the same pairs).
"""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from cmaq.config import AlignConfig, EngineConfig, ModelConfig
from cmaq.engines import base_model_dir
from cmaq.losses import adaptive_beta
from cmaq.rewards import combine
from training.loop import train
from training.policy import load_policy, save_policy
from training.preference import (encode_pairs, first_iteration_samples, iteration_seed, pair_loss_fn, reference_logps,
                                 sample_contents, sampler_engine, scored_samples)
from training.reward_models.models import tokenizer_of
from training.reward_models.scorer import RewardScorer

log = logging.getLogger(__name__)


def thresholds(rewards: np.ndarray, cfg: AlignConfig) -> tuple[float, float]:
    if cfg.tau_mode == "absolute":
        return cfg.tau1, cfg.tau2
    return float(np.quantile(rewards, cfg.tau1)), float(np.quantile(rewards, cfg.tau2))


def mine_pairs(items, candidates, rewards, tau1: float, tau2: float, seed: int) -> list[dict]:
    """One random positive (r > τ1) and one random negative (r < τ2) per content that has both."""
    rng = random.Random(seed)
    pairs, pos = [], 0
    for item, queries in zip(items, candidates):
        r = rewards[pos:pos + len(queries)]
        pos += len(queries)
        good = [i for i, x in enumerate(r) if x > tau1]
        bad = [i for i, x in enumerate(r) if x < tau2]
        if good and bad:
            c, l = rng.choice(good), rng.choice(bad)
            pairs.append({"item": item, "chosen": queries[c], "rejected": queries[l],
                          "r_chosen": float(r[c]), "r_rejected": float(r[l])})
    return pairs


def with_adaptive_beta(pairs: list[dict], cfg: AlignConfig) -> None:
    if not pairs:
        return
    if cfg.static_beta:
        beta = torch.ones(len(pairs))
    else:
        beta = adaptive_beta(torch.tensor([p["r_chosen"] for p in pairs]),
                             torch.tensor([p["r_rejected"] for p in pairs]), cfg.gamma, cfg.beta_floor)
    for p, b in zip(pairs, beta.tolist()):
        p["beta_tilde"] = b


def train_iteration(model, tokenizer, pairs: list[dict], encoded: list[tuple], cfg: AlignConfig, iter_dir: Path,
                    t: int) -> dict:
    beta = cfg.beta0 * torch.tensor([p["beta_tilde"] for p in pairs])
    step_loss = pair_loss_fn(model, tokenizer, pairs, encoded, beta, cfg.nll_weight)
    return train(model, len(pairs), step_loss, cfg, iter_dir, lambda: {}, f"cmaq iter {t}")


def _save_pairs(pairs: list[dict], path: Path) -> None:
    rows = [{"content_id": p["item"]["content_id"], **{k: v for k, v in p.items() if k != "item"}} for p in pairs]
    pd.DataFrame(rows).to_parquet(path, index=False)


def _load_pairs(path: Path, items_by_id: dict) -> list[dict]:
    return [{**r, "item": items_by_id[r["content_id"]]} for r in pd.read_parquet(path).to_dict("records")]


def run_align(cfg: AlignConfig, data: str, model_cfg: ModelConfig | None = None,
              engine_cfg: EngineConfig | None = None) -> dict:
    """Run (or resume) T iterations; returns the run's metrics (also in ``<out>/metrics.json``).
    The base model is ``cfg.model_dir``, else ``model_cfg.base_dir``, else the tiny model; the sampler
    runs with ``engine_cfg``'s settings (the ``[engine]`` section)."""
    engine_cfg = engine_cfg or EngineConfig()
    for path, what in ((data, "D_SFT (`cmaq data sft`)"), (cfg.qsa, "the QSA adapter (`cmaq train sft`)"),
                       (cfg.rm_exp, "the expansion RM"), (cfg.rm_ctr, "the CTR RM")):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: missing {what}")
    out = Path(cfg.out or "runs/cmaq")
    out.mkdir(parents=True, exist_ok=True)
    model_dir = base_model_dir(model_cfg, cfg.model_dir)
    tokenizer = tokenizer_of(model_dir)
    rows = pq.read_table(data).to_pylist()
    items_by_id = {r["content_id"]: r for r in rows}
    scorer = RewardScorer(cfg.rm_exp, cfg.rm_ctr)
    engines: list = []

    def engine_of():
        if not engines:  # built on first use: a resumed run past its sampling needs none
            engines.append(sampler_engine(cfg, engine_cfg, model_dir))
        return engines[0]

    summary = []
    previous = str(cfg.qsa)
    for t in range(1, cfg.iterations + 1):
        iter_dir = out / f"iter-{t}"
        if (iter_dir / "DONE").exists():
            summary.append(json.loads((iter_dir / "summary.json").read_text()))
            previous = str(iter_dir / "adapter")
            continue
        iter_dir.mkdir(exist_ok=True)
        pairs_path = iter_dir / "pairs.parquet"
        seed = iteration_seed(cfg, t)
        stats: dict = {"iteration": t, "reference": previous}
        resumed = pairs_path.exists()  # a killed iteration: same pairs, training resumes from its checkpoint
        if resumed:
            pairs = _load_pairs(pairs_path, items_by_id)
            stats.update(json.loads((iter_dir / "mining.json").read_text()))
        elif cfg.reuse_first and t > 1:
            pairs = _load_pairs(out / "iter-1" / "pairs.parquet", items_by_id)
            stats.update(reused_from=1, tau1=summary[0]["tau1"], tau2=summary[0]["tau2"])
        else:
            if t == 1:
                items, candidates, r_exp, r_ctr = first_iteration_samples(
                    cfg, rows, engine_of, lambda: scorer, Path(cfg.first_samples) if cfg.first_samples else None,
                    engine_cfg)
            else:
                items = sample_contents(rows, cfg.contents, seed)
                candidates, r_exp, r_ctr = scored_samples(engine_of(), scorer, items, cfg, previous, seed)
            rewards = combine(r_exp, r_ctr, cfg.alpha, cfg.mean)
            tau1, tau2 = thresholds(rewards, cfg)
            pairs = mine_pairs(items, candidates, rewards, tau1, tau2, seed)
            stats.update(contents=len(items), candidates=int(len(rewards)), tau1=tau1, tau2=tau2,
                         mean_reward=float(rewards.mean()), mean_r_exp=float(np.nanmean(r_exp)),
                         mean_r_ctr=float(np.nanmean(r_ctr)))
        if not pairs:
            raise RuntimeError(f"iteration {t}: no content had both a positive and a negative; "
                               f"raise align.k or align.contents, or loosen τ1/τ2")
        encoded = encode_pairs(tokenizer, pairs, cfg.max_prompt_tokens)
        # π_{t−1}: scores the references before any update, then is trained further as π_t.
        model = load_policy(model_dir, previous, trainable=True)
        if not resumed:
            reference_logps(model, tokenizer, pairs, encoded)
            with_adaptive_beta(pairs, cfg)
            _save_pairs(pairs, pairs_path)
            (iter_dir / "mining.json").write_text(json.dumps(stats, default=str))
        torch.manual_seed(seed)
        metrics = train_iteration(model, tokenizer, pairs, encoded, cfg, iter_dir, t)
        save_policy(model, iter_dir, cfg, model_dir)
        stats.update(pairs=len(pairs), mean_beta_tilde=float(np.mean([p["beta_tilde"] for p in pairs])),
                     mean_r_chosen=float(np.mean([p["r_chosen"] for p in pairs])),
                     mean_r_rejected=float(np.mean([p["r_rejected"] for p in pairs])),
                     loss_first=metrics["loss_first"], loss_last20=metrics["loss_last20"],
                     loss_curve=metrics["loss_curve"])
        (iter_dir / "summary.json").write_text(json.dumps(stats, default=str))
        (iter_dir / "DONE").write_text("ok\n")
        summary.append(stats)
        previous = str(iter_dir / "adapter")
        log.info("iteration %d: %d pairs, mean beta~ %.3f, loss %.4f", t, len(pairs), stats["mean_beta_tilde"],
                 stats["loss_last20"])
    if (out / "adapter").exists():
        shutil.rmtree(out / "adapter")
    shutil.copytree(previous, out / "adapter")
    result = {"out": str(out), "adapter": str(out / "adapter"), "iterations": summary}
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result
