"""What every preference method shares (the CMAQ loop and the DPO baselines): sampling the policy's
queries and scoring them, encoding (chosen, rejected) pairs once, the reference log-probabilities, and the
pair loss the training loop steps on.

    contents ─► sample k queries (engine.sample) ─► both RMs score them ─► [method: mine pairs]
        ─► encode_pairs ─► reference_logps (π_ref, before any update) ─► pair_loss_fn(indices) ─► loop

Iteration 1 of every run of a study samples the same queries from QSA, so
:func:`first_iteration_samples` draws and scores them once and keeps them in a file the later runs read.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cmaq.config import AlignConfig, EngineConfig
from cmaq.engines import make_engine
from cmaq.engines.base import adapter_version
from cmaq.losses import consistent_dpo_loss
from training.distributed import runtime
from training.policy import encode, sequence_logps

log = logging.getLogger(__name__)


def iteration_seed(cfg: AlignConfig, t: int) -> int:
    """Seed of iteration t's contents, samples and pairs."""
    return cfg.seed * 1000 + t


def sample_contents(rows: list[dict], n: int, seed: int) -> list[dict]:
    """N distinct contents of D_SFT (every row carries its content's prompt fields)."""
    by_id = {}
    for r in rows:
        by_id.setdefault(r["content_id"], r)
    ids = sorted(by_id)
    random.Random(seed).shuffle(ids)
    return [by_id[i] for i in ids[:n]]


def sampler_engine(cfg: AlignConfig, engine_cfg: EngineConfig, model_dir: str):
    """The engine that samples the policy's queries: the ``[engine]`` settings with the sampler's backend
    and batch, and the prompt budget the loss trains with — so a pair's prompt is the prompt its queries
    were sampled from. Built once per run and kept: the vLLM sampler holds ``align.sampler_memory_share``
    of the device beside the trainer, serves each iteration's adapter as a LoRARequest on the same base
    (``max_lora_rank`` 0 follows the adapter's rank), and on several processes runs inside each rank."""
    overrides = {}
    if cfg.sampler == "vllm":
        if cfg.sampler_memory_share:
            overrides["gpu_memory_utilization"] = cfg.sampler_memory_share
        if runtime().world > 1:
            overrides["distributed_executor_backend"] = "external_launcher"
    return make_engine(replace(engine_cfg, backend=cfg.sampler, model_dir=model_dir, hf_batch_size=cfg.sampler_batch,
                               max_model_len=cfg.max_prompt_tokens + engine_cfg.max_new_tokens + 1, **overrides))


def sample_queries(engine, items: list[dict], cfg: AlignConfig, adapter: str, seed: int) -> list[list[str]]:
    """k queries per content from the policy (distinct, non-empty)."""
    results = engine.sample(items, k=cfg.k, temperature=cfg.temperature, seed=seed, adapter=adapter)
    out = []
    for res in results:
        seen = []
        for c in res.candidates:
            q = c.text.strip()
            if q and q not in seen:
                seen.append(q)
        out.append(seen)
    return out


#: Queries the serving beam search writes per content (the nightly's width).
BEAM_WIDTH = 5


def beam_candidates(engine, items: Sequence[dict], adapter: str | None, batch: int = 32) -> list[list[str]]:
    """The beam's candidates per item, best first ([] where the engine reported an error)."""
    out: list[list[str]] = []
    for start in range(0, len(items), batch):
        for res in engine.beam(items[start:start + batch], width=BEAM_WIDTH, adapter=adapter):
            out.append([c.text.strip() for c in res.candidates] if res.ok else [])
    if len(out) != len(items):
        raise AssertionError(f"engine returned {len(out)} results for {len(items)} items")
    return out


def scored_samples(engine, scorer, items: list[dict], cfg: AlignConfig, adapter: str, seed: int):
    """k queries per content from the policy and both rewards of each: (candidates, r_exp, r_ctr), the
    rewards flat in candidate order. With ``align.reward = "lcb"`` each reward is the ensemble's lower
    bound, mean − κ·std (:meth:`Scores.lower_bounds`). On several processes each samples and scores its
    share of the contents (the draws are seeded per content, so the result is the same) and every
    process gets the whole."""
    def sample_and_score(part: list[dict]) -> list[tuple]:
        candidates = sample_queries(engine, part, cfg, adapter, seed)
        flat_items = [it for it, qs in zip(part, candidates) for _ in qs]
        scores = scorer.score(flat_items, [q for qs in candidates for q in qs])
        if cfg.reward == "lcb":
            r_exp, r_ctr = scores.lower_bounds(cfg.lcb_kappa)
        else:
            r_exp, r_ctr = np.asarray(scores.r_exp), np.asarray(scores.r_ctr)
        out, pos = [], 0
        for qs in candidates:
            out.append((qs, r_exp[pos:pos + len(qs)].tolist(), r_ctr[pos:pos + len(qs)].tolist()))
            pos += len(qs)
        return out

    per_item = runtime().map_sharded(items, sample_and_score)
    candidates = [qs for qs, _, _ in per_item]
    r_exp = np.array([x for _, e, _ in per_item for x in e], dtype=np.float64)
    r_ctr = np.array([x for _, _, c in per_item for x in c], dtype=np.float64)
    return candidates, r_exp, r_ctr


#: The ``[engine]`` settings that change what the sampler draws (the rest place or batch the work).
SAMPLING_ENGINE_FIELDS = ("dtype", "max_new_tokens", "seed")


def first_samples_key(cfg: AlignConfig, engine_cfg: EngineConfig | None = None) -> dict:
    """What makes two runs' first-iteration samples the same (α, the mean, β and τ do not)."""
    engine_cfg = engine_cfg or EngineConfig()
    key = {"qsa": adapter_version(cfg.qsa), "seed": cfg.seed, "contents": cfg.contents, "k": cfg.k,
           "temperature": cfg.temperature, "max_prompt_tokens": cfg.max_prompt_tokens, "sampler": cfg.sampler,
           "rm_exp": str(Path(cfg.rm_exp).resolve()), "rm_ctr": str(Path(cfg.rm_ctr).resolve()),
           "engine": {k: getattr(engine_cfg, k) for k in SAMPLING_ENGINE_FIELDS}}
    if cfg.reward == "lcb":  # the file holds the rewards the runs train on
        key["reward"] = {"lcb_kappa": cfg.lcb_kappa}
    return key


def first_iteration_samples(cfg: AlignConfig, rows: list[dict], engine_of, scorer_of, path: Path | None,
                            engine_cfg: EngineConfig | None = None):
    """Iteration 1's contents, the QSA policy's candidates and their rewards, read from ``path`` when
    it holds samples of the same key (``engine_cfg``: the sampler's engine settings), else drawn,
    scored and (with a path) written there.

    ``engine_of()`` / ``scorer_of()`` build the sampler and the scorer only when they are needed.
    """
    seed = iteration_seed(cfg, 1)
    items = sample_contents(rows, cfg.contents, seed)
    key = json.dumps(first_samples_key(cfg, engine_cfg), sort_keys=True)
    # One process reads and decides for all: another run may write the shared file meanwhile, and the
    # ranks must agree whether to sample (a collective) or not.
    kept = runtime().from_main(lambda: _read_first_samples(path, key, items))
    if kept is not None:
        return (items, *kept)
    candidates, r_exp, r_ctr = scored_samples(engine_of(), scorer_of(), items, cfg, cfg.qsa, seed)
    if path is not None:
        frame = pd.DataFrame({"content_id": [it["content_id"] for it, qs in zip(items, candidates) for _ in qs],
                              "query": [q for qs in candidates for q in qs], "r_exp": r_exp, "r_ctr": r_ctr})
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"cmaq_key": key.encode()})
        # several runs may share the file: written under another name, then renamed into place
        runtime().write(path, lambda tmp: pq.write_table(table, tmp))
    return items, candidates, r_exp, r_ctr


def _read_first_samples(path: Path | None, key: str, items: list[dict]):
    """(candidates, r_exp, r_ctr) of ``items`` from the shared file when it holds samples of ``key``, else None."""
    if path is None or not path.exists():
        return None
    table = pq.read_table(path)
    if (table.schema.metadata or {}).get(b"cmaq_key", b"").decode() != key:
        log.warning("%s: samples of another QSA, seed or size; drawing new ones", path)
        return None
    frame = table.to_pandas()
    groups = {cid: g for cid, g in frame.groupby("content_id", sort=False)}
    candidates = [groups[it["content_id"]]["query"].tolist() if it["content_id"] in groups else [] for it in items]
    order = [groups[it["content_id"]] for it in items if it["content_id"] in groups]
    r_exp = np.concatenate([g["r_exp"].to_numpy() for g in order]) if order else np.zeros(0)
    r_ctr = np.concatenate([g["r_ctr"].to_numpy() for g in order]) if order else np.zeros(0)
    log.info("iteration 1: %d shared samples from %s", len(frame), path)
    return candidates, r_exp, r_ctr


def encode_pairs(tokenizer, pairs: list[dict], max_prompt_tokens: int) -> list[tuple]:
    """Each pair's (chosen, rejected) token ids, each a (prompt ids, answer ids); encoded once and used
    for the reference log-probabilities and every training step."""
    return [(encode(tokenizer, p["item"], p["chosen"], max_prompt_tokens),
             encode(tokenizer, p["item"], p["rejected"], max_prompt_tokens)) for p in pairs]


def reference_logps(model, tokenizer, pairs: list[dict], encoded: list[tuple], batch: int = 16) -> None:
    """log π_{t−1}(y|x) of every chosen and rejected query, with the adapter as the previous iteration
    left it (before any update of this iteration); stored on the pairs. Each process scores its share
    of the pairs; every process gets them all."""
    def score(part: list[tuple]) -> list[tuple[float, float]]:
        out = []
        for start in range(0, len(part), batch):
            chunk = part[start:start + batch]
            logps, _ = sequence_logps(model, [c for c, _ in chunk] + [r for _, r in chunk], tokenizer.pad_token_id)
            out.extend((float(logps[i]), float(logps[len(chunk) + i])) for i in range(len(chunk)))
        return out

    model.eval()
    with torch.no_grad():
        scored = runtime().map_sharded(encoded, score)
    for p, (chosen, rejected) in zip(pairs, scored):
        p["ref_chosen"], p["ref_rejected"] = chosen, rejected


def pair_loss_fn(model, tokenizer, pairs: list[dict], encoded: list[tuple], beta, nll_weight: float = 0.0,
                 weights: list[float] | None = None):
    """``step_loss(indices)`` for the training loop: the mean (per-pair weighted) consistent DPO loss of
    those pairs against their stored reference log-probabilities. ``beta``: a float or one per pair."""
    ref_c = torch.tensor([p["ref_chosen"] for p in pairs])
    ref_l = torch.tensor([p["ref_rejected"] for p in pairs])
    beta = torch.as_tensor(beta, dtype=torch.float32).expand(len(pairs))
    w = torch.tensor(weights if weights is not None else [1.0] * len(pairs))

    def step_loss(idx: list[int]):
        seqs = [encoded[i][0] for i in idx] + [encoded[i][1] for i in idx]
        logps, lengths = sequence_logps(model, seqs, tokenizer.pad_token_id)
        n, dev = len(idx), logps.device
        loss = consistent_dpo_loss(logps[:n], logps[n:], ref_c[idx].to(dev), ref_l[idx].to(dev), beta[idx].to(dev),
                                   nll_weight, lengths[:n])
        return (w[idx].to(dev) * loss).mean()

    return step_loss
