"""The CMAQ loop (the method's Algorithm 1) and its ablations.

    cmaq train align --data DATA/sft [--set align.alpha=0.4 ...]

For t = 1..T, starting from the QSA adapter:

1. sample N contents of D_SFT; the previous policy π_{t−1} samples k queries for each;
2. both reward models score them; r = r_exp^α · r_ctr^(1−α) (arithmetic mean for w/o CDS);
   the reward gate (``align.reward_gate``, :mod:`training.gate`) runs the serving filters on them;
3. positives r > τ1, negatives r < τ2 (τ over the candidates that pass the gate; one that fails is
   never a positive and always a negative); each content with both gives one random pair (y_c, y_l);
4. β̃ = 1 + γ (r_c (1 − r_l) − M), M the mean of r_c (1 − r_l) over the iteration's pairs (β̃ ≡ 1 for
   w/o CT); β = β0 · β̃;
5. one epoch of loss −log σ(β (Δ(y_c) − Δ(y_l))) − λ log π_θ(y_c|x) / |y_c|,
   Δ(y) = log π_θ(y|x) − log π_{t−1}(y|x) (`cmaq.losses.consistent_dpo_loss`).

The paper prints the ratio π_θ/π_{t−1} inside σ; the log-ratio is meant (it is DPO's implicit
reward), and is what this computes.

Adapter lineage: one LoRA adapter on a fixed base throughout. Iteration t loads the adapter as
iteration t−1 left it, computes the reference log-probabilities of every pair with it *before* any
update (stored in ``iter-t/pairs.parquet``), then trains the same adapter further. The reference is
therefore π_{t−1}, not the bare base model (TRL's default with PEFT). With ``align.reference = "qsa"``
the reference is the QSA policy at every iteration instead: the policy may move from where it started
only as far as the pairs' β allows, however many iterations run.

Rewards: ``align.reward = "lcb"`` trains on each objective's ensemble lower bound, mean − κ·std,
instead of the mean: candidates the reward models' members disagree on count for less.

Thresholds: with ``tau_mode = "quantile"`` (default), τ1 and τ2 are the 0.7 and 0.3 quantiles of the
iteration's rewards (of the candidates that pass the reward gate). The reward models' scales depend on the backbone and on the CTR normalisation,
and the policy's rewards rise from one iteration to the next; fixed values would give few pairs at
first and then nothing to reject. Quantiles keep the share of candidates that qualify stable. The
absolute mode takes τ1/τ2 as rewards.

Iteration 1 samples from QSA, which every run of a study shares: with ``align.first_samples`` its
queries and both rewards are drawn once into that file and read by every later run with the same
QSA, seed, N, k and temperature (α, the mean and β do not enter until the pairs are mined).

Collapse guards (:mod:`training.guards`): QSA and each iteration's policy on a fixed probe set of
training notes — distinct top-1 share, the top string's share, beams passing the serving chain, KL to
QSA — in ``<out>/probe-qsa.json`` and each iteration's ``summary.json`` (``probe``).

Serving choice: ``align.select = "last"`` (default) or ``"proxy"``: ``<out>/adapter`` is a copy of the
iteration with the highest probe proxy (:mod:`training.guards`), recorded as ``selected_iteration``.

Layout: ``<out>/iter-<t>/{pairs.parquet, adapter/, metrics.json, DONE}``, ``<out>/adapter`` (the served
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

from cmaq.config import AlignConfig, EngineConfig, FiltersConfig, ModelConfig
from cmaq.engines import base_model_dir
from cmaq.losses import adaptive_beta
from cmaq.rewards import combine
from training.distributed import runtime
from training.gate import RewardGate, judge_sharded
from training.guards import probe_notes, probe_policy
from training.loop import train
from training.policy import load_policy, save_policy
from training.preference import (encode_pairs, first_iteration_samples, first_samples_key, iteration_seed,
                                 pair_loss_fn, reference_logps, sample_contents, sampler_engine, scored_samples)
from training.reward_models.models import tokenizer_of
from training.reward_models.scorer import RewardScorer

log = logging.getLogger(__name__)


def thresholds(rewards: np.ndarray, cfg: AlignConfig) -> tuple[float, float]:
    """τ1, τ2: the values themselves, or quantiles of ``rewards`` (the candidates that passed the gate)."""
    if cfg.tau_mode == "absolute":
        return cfg.tau1, cfg.tau2
    if len(rewards) == 0:
        raise RuntimeError("no sampled candidate passed the serving filters (align.reward_gate); the policy "
                           "writes nothing servable: check the adapter, or set align.reward_gate=none to see why")
    return float(np.quantile(rewards, cfg.tau1)), float(np.quantile(rewards, cfg.tau2))


def mine_pairs(items, candidates, rewards, tau1: float, tau2: float, seed: int,
               passed: np.ndarray | None = None) -> list[dict]:
    """One random positive (r > τ1) and one random negative (r < τ2) per content that has both.
    ``passed`` (flat like ``rewards``) is the reward gate's verdict: a candidate that failed is never a
    positive and always a negative, whatever its reward."""
    rng = random.Random(seed)
    passed = np.ones(len(rewards), bool) if passed is None else passed
    pairs, pos = [], 0
    for item, queries in zip(items, candidates):
        r, ok = rewards[pos:pos + len(queries)], passed[pos:pos + len(queries)]
        pos += len(queries)
        good = [i for i, x in enumerate(r) if ok[i] and x > tau1]
        bad = [i for i, x in enumerate(r) if not ok[i] or x < tau2]
        if good and bad:
            c, l = rng.choice(good), rng.choice(bad)
            pairs.append({"item": item, "chosen": queries[c], "rejected": queries[l],
                          "r_chosen": float(r[c]), "r_rejected": float(r[l]), "rejected_gated": not ok[l]})
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
                    t: int, model_dir: str) -> dict:
    """One epoch on the iteration's pairs; the adapter is written to ``iter_dir/adapter``."""
    beta = cfg.beta0 * torch.tensor([p["beta_tilde"] for p in pairs])
    step_loss = pair_loss_fn(model, tokenizer, pairs, encoded, beta, cfg.nll_weight)
    return train(model, len(pairs), step_loss, cfg, iter_dir, lambda: {}, f"cmaq iter {t}",
                 save=lambda state: save_policy(model, iter_dir, cfg, model_dir, state))


def select_iteration(summary: list[dict], how: str) -> int:
    """The iteration ``<out>/adapter`` serves: the last, or the one with the highest probe proxy
    (the earliest of equals: it moved least from QSA)."""
    if how == "last":
        return len(summary)
    unprobed = [s.get("iteration", i + 1) for i, s in enumerate(summary) if (s.get("probe") or {}).get("proxy") is None]
    if unprobed:
        raise ValueError(f"align.select = proxy: iteration(s) {unprobed} have no probe figures (trained with "
                         "align.probe_contents = 0 or before the guards existed); use align.select = last")
    proxies = [s["probe"]["proxy"] for s in summary]
    return 1 + int(np.argmax(proxies))


def _cached_json(path: Path, key: dict, compute):
    """``compute()``'s JSON result, kept in ``path`` with ``key`` so that a resumed run does not redo it;
    recomputed when the key (what the result depends on) differs from the kept one. Every process
    computes it (the probe is seeded: the same figures everywhere; a main-only computation would keep
    the others waiting past the process group's timeout); the main process writes it."""
    rt = runtime()
    kept = rt.from_main(lambda: _kept_value(path, key))  # one answer for all: the main process may write it soon
    if kept is not None:
        return kept["value"]
    value = compute()
    # a run killed while writing leaves no half file to resume from
    rt.write_text(path, json.dumps({"key": key, "value": value}, default=str))
    return value


def _kept_value(path: Path, key: dict) -> dict | None:
    if not path.exists():
        return None
    kept = json.loads(path.read_text())
    if isinstance(kept, dict) and kept.get("key") == key:
        return {"value": kept["value"]}
    log.warning("%s: computed for other settings; computing again", path)
    return None


def probe_key(cfg: AlignConfig, engine_cfg: EngineConfig) -> dict:
    """What QSA's probe figures depend on: the sampling key (QSA, RMs, engine), the probe set's size and
    samples, and the proxy's α, mean and κ."""
    key = first_samples_key(cfg, engine_cfg)
    key.pop("contents"), key.pop("seed")
    return {**key, "probe_contents": cfg.probe_contents, "probe_k": cfg.probe_k, "alpha": cfg.alpha,
            "mean": cfg.mean, "lcb_kappa": cfg.lcb_kappa, "probe_seed": iteration_seed(cfg, 0)}


def _save_pairs(pairs: list[dict], path: Path) -> None:
    rows = [{"content_id": p["item"]["content_id"], **{k: v for k, v in p.items() if k != "item"}} for p in pairs]
    runtime().write(path, lambda tmp: pd.DataFrame(rows).to_parquet(tmp, index=False))


def _load_pairs(path: Path, items_by_id: dict) -> list[dict]:
    return [{**r, "item": items_by_id[r["content_id"]]} for r in pd.read_parquet(path).to_dict("records")]


def run_align(cfg: AlignConfig, data: str, model_cfg: ModelConfig | None = None,
              engine_cfg: EngineConfig | None = None, filters_cfg: FiltersConfig | None = None) -> dict:
    """Run (or resume) T iterations; returns the run's metrics (also in ``<out>/metrics.json``).
    The base model is ``cfg.model_dir``, else ``model_cfg.base_dir``, else the tiny model; the sampler
    runs with ``engine_cfg``'s settings (the ``[engine]`` section); the reward gate with ``filters_cfg``'s
    serving chain."""
    engine_cfg = engine_cfg or EngineConfig()
    rt = runtime()
    gate = RewardGate(cfg.reward_gate, filters_cfg)
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

    probe_items = probe_notes(rows, cfg.probe_contents) if cfg.probe_contents else []
    serving = gate if gate.mode == "serving" else RewardGate("serving", filters_cfg)

    def probe(adapter: str, seed: int) -> dict | None:
        if not probe_items:
            return None
        return probe_policy(engine_of(), serving, scorer, probe_items, adapter, str(cfg.qsa), model_dir, tokenizer,
                            cfg, seed)

    qsa_probe = _cached_json(out / "probe-qsa.json", probe_key(cfg, engine_cfg),
                             lambda: probe(str(cfg.qsa), iteration_seed(cfg, 0)))
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
        reference = previous if cfg.reference == "previous" else str(cfg.qsa)
        stats: dict = {"iteration": t, "reference": reference}
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
            verdict = judge_sharded(gate, items, candidates)
            tau1, tau2 = thresholds(rewards[verdict.passed], cfg)
            pairs = mine_pairs(items, candidates, rewards, tau1, tau2, seed, verdict.passed)
            stats.update(contents=len(items), candidates=int(len(rewards)), gate=verdict.summary(), tau1=tau1,
                         tau2=tau2, mean_reward=float(rewards.mean()), mean_r_exp=float(np.nanmean(r_exp)),
                         mean_r_ctr=float(np.nanmean(r_ctr)))
        if not pairs:
            raise RuntimeError(f"iteration {t}: no content had both a positive and a negative; "
                               f"raise align.k or align.contents, or loosen τ1/τ2")
        encoded = encode_pairs(tokenizer, pairs, cfg.max_prompt_tokens)
        # π_{t−1}: scores the references before any update (unless the reference is QSA), then is
        # trained further as π_t.
        model = load_policy(model_dir, previous, trainable=True)
        if not resumed:
            if reference == previous:
                reference_logps(model, tokenizer, pairs, encoded)
            else:
                reference_logps(load_policy(model_dir, reference, trainable=False), tokenizer, pairs, encoded)
            with_adaptive_beta(pairs, cfg)
            rt.write_text(iter_dir / "mining.json", json.dumps(stats, default=str))
            _save_pairs(pairs, pairs_path)  # last: its presence says the iteration's pairs are final
        torch.manual_seed(seed)
        metrics = train_iteration(model, tokenizer, pairs, encoded, cfg, iter_dir, t, model_dir)
        stats.update(pairs=len(pairs), mean_beta_tilde=float(np.mean([p["beta_tilde"] for p in pairs])),
                     mean_r_chosen=float(np.mean([p["r_chosen"] for p in pairs])),
                     mean_r_rejected=float(np.mean([p["r_rejected"] for p in pairs])),
                     loss_first=metrics["loss_first"], loss_last20=metrics["loss_last20"],
                     loss_curve=metrics["loss_curve"],
                     probe=probe(str(iter_dir / "adapter"), seed))
        rt.write_text(iter_dir / "summary.json", json.dumps(stats, default=str))
        rt.write_text(iter_dir / "DONE", "ok\n")
        summary.append(stats)
        previous = str(iter_dir / "adapter")
        log.info("iteration %d: %d pairs, mean beta~ %.3f, loss %.4f", t, len(pairs), stats["mean_beta_tilde"],
                 stats["loss_last20"])
    chosen = select_iteration(summary, cfg.select)
    served = previous if chosen == len(summary) else str(out / f"iter-{chosen}" / "adapter")
    rt.write(out / "adapter", lambda tmp: shutil.copytree(served, tmp))
    result = {"out": str(out), "adapter": str(out / "adapter"), "select": cfg.select, "selected_iteration": chosen,
              "selected_from": served, "probe_qsa": qsa_probe, "iterations": summary,
              "processes": rt.world}
    rt.write_text(out / "metrics.json", json.dumps(result, indent=2, default=str))
    return result
