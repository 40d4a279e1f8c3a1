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

from cmaq.config import AlignConfig

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


def sampler_engine(cfg: AlignConfig, model_dir: str):
    """The engine that samples the policy's queries, its prompt budget the one the loss trains with —
    so a pair's prompt is the prompt its queries were sampled from."""
    from cmaq.config import EngineConfig
    from cmaq.engines import make_engine

    new_tokens = EngineConfig().max_new_tokens
    return make_engine(EngineConfig(backend=cfg.sampler, model_dir=model_dir, hf_batch_size=cfg.sampler_batch,
                                    max_model_len=cfg.max_prompt_tokens + new_tokens + 1))


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


def scored_samples(engine, scorer, items: list[dict], cfg: AlignConfig, adapter: str, seed: int):
    """k queries per content from the policy and both rewards of each: (candidates, r_exp, r_ctr), the
    rewards flat in candidate order."""
    candidates = sample_queries(engine, items, cfg, adapter, seed)
    flat_items = [it for it, qs in zip(items, candidates) for _ in qs]
    scores = scorer.score(flat_items, [q for qs in candidates for q in qs])
    return candidates, np.asarray(scores.r_exp), np.asarray(scores.r_ctr)


def first_samples_key(cfg: AlignConfig) -> dict:
    """What makes two runs' first-iteration samples the same (α, the mean, β and τ do not)."""
    from cmaq.engines.base import adapter_version

    return {"qsa": adapter_version(cfg.qsa), "seed": cfg.seed, "contents": cfg.contents, "k": cfg.k,
            "temperature": cfg.temperature, "max_prompt_tokens": cfg.max_prompt_tokens, "sampler": cfg.sampler,
            "rm_exp": str(Path(cfg.rm_exp).resolve()), "rm_ctr": str(Path(cfg.rm_ctr).resolve())}


def first_iteration_samples(cfg: AlignConfig, rows: list[dict], engine_of, scorer_of, path: Path | None):
    """Iteration 1's contents, the QSA policy's candidates and their rewards, read from ``path`` when
    it holds samples of the same key, else drawn, scored and (with a path) written there.

    ``engine_of()`` / ``scorer_of()`` build the sampler and the scorer only when they are needed.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    seed = iteration_seed(cfg, 1)
    items = sample_contents(rows, cfg.contents, seed)
    key = json.dumps(first_samples_key(cfg), sort_keys=True)
    if path is not None and path.exists():
        table = pq.read_table(path)
        if (table.schema.metadata or {}).get(b"cmaq_key", b"").decode() == key:
            frame = table.to_pandas()
            groups = {cid: g for cid, g in frame.groupby("content_id", sort=False)}
            candidates = [groups[it["content_id"]]["query"].tolist() if it["content_id"] in groups else []
                          for it in items]
            order = [groups[it["content_id"]] for it in items if it["content_id"] in groups]
            r_exp = np.concatenate([g["r_exp"].to_numpy() for g in order]) if order else np.zeros(0)
            r_ctr = np.concatenate([g["r_ctr"].to_numpy() for g in order]) if order else np.zeros(0)
            log.info("iteration 1: %d shared samples from %s", len(frame), path)
            return items, candidates, r_exp, r_ctr
        log.warning("%s: samples of another QSA, seed or size; drawing new ones", path)
    candidates, r_exp, r_ctr = scored_samples(engine_of(), scorer_of(), items, cfg, cfg.qsa, seed)
    if path is not None:
        frame = pd.DataFrame({"content_id": [it["content_id"] for it, qs in zip(items, candidates) for _ in qs],
                              "query": [q for qs in candidates for q in qs], "r_exp": r_exp, "r_ctr": r_ctr})
        table = pa.Table.from_pandas(frame, preserve_index=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), b"cmaq_key": key.encode()}),
                       tmp)
        tmp.replace(path)  # several runs may share the file: never leave a half-written one
    return items, candidates, r_exp, r_ctr


def encode_pairs(tokenizer, pairs: list[dict], max_prompt_tokens: int) -> list[tuple]:
    """Each pair's (chosen, rejected) token ids, each a (prompt ids, answer ids); encoded once and used
    for the reference log-probabilities and every training step."""
    from training.policy import encode

    return [(encode(tokenizer, p["item"], p["chosen"], max_prompt_tokens),
             encode(tokenizer, p["item"], p["rejected"], max_prompt_tokens)) for p in pairs]


def reference_logps(model, tokenizer, pairs: list[dict], encoded: list[tuple], batch: int = 16) -> None:
    """log π_{t−1}(y|x) of every chosen and rejected query, with the adapter as the previous iteration
    left it (before any update of this iteration); stored on the pairs."""
    import torch

    from training.policy import sequence_logps

    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch):
            chunk = encoded[start:start + batch]
            logps, _ = sequence_logps(model, [c for c, _ in chunk] + [r for _, r in chunk], tokenizer.pad_token_id)
            for i, p in enumerate(pairs[start:start + batch]):
                p["ref_chosen"], p["ref_rejected"] = float(logps[i]), float(logps[len(chunk) + i])


def pair_loss_fn(model, tokenizer, pairs: list[dict], encoded: list[tuple], beta, nll_weight: float = 0.0,
                 weights: list[float] | None = None):
    """``step_loss(indices)`` for the training loop: the mean (per-pair weighted) consistent DPO loss of
    those pairs against their stored reference log-probabilities. ``beta``: a float or one per pair."""
    import torch

    from cmaq.losses import consistent_dpo_loss
    from training.policy import sequence_logps

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


def with_adaptive_beta(pairs: list[dict], cfg: AlignConfig) -> None:
    import torch

    from cmaq.losses import adaptive_beta

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
    import torch

    from training.loop import train

    beta = cfg.beta0 * torch.tensor([p["beta_tilde"] for p in pairs])
    step_loss = pair_loss_fn(model, tokenizer, pairs, encoded, beta, cfg.nll_weight)
    return train(model, len(pairs), step_loss, cfg, iter_dir, lambda: {}, f"cmaq iter {t}")


def _save_pairs(pairs: list[dict], path: Path) -> None:
    import pandas as pd

    rows = [{"content_id": p["item"]["content_id"], **{k: v for k, v in p.items() if k != "item"}} for p in pairs]
    pd.DataFrame(rows).to_parquet(path, index=False)


def _load_pairs(path: Path, items_by_id: dict) -> list[dict]:
    import pandas as pd

    return [{**r, "item": items_by_id[r["content_id"]]} for r in pd.read_parquet(path).to_dict("records")]


def run_align(cfg: AlignConfig, data: str) -> dict:
    """Run (or resume) T iterations; returns the run's metrics (also in ``<out>/metrics.json``)."""
    import pyarrow.parquet as pq
    import torch

    from cmaq.rewards import RewardScorer, combine
    from training.policy import load_policy
    from training.reward_models.models import tokenizer_of
    from training.sft import base_dir, save_policy

    for path, what in ((data, "D_SFT (`cmaq data sft`)"), (cfg.qsa, "the QSA adapter (`cmaq train sft`)"),
                       (cfg.rm_exp, "the expansion RM"), (cfg.rm_ctr, "the CTR RM")):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: missing {what}")
    out = Path(cfg.out or "runs/cmaq")
    out.mkdir(parents=True, exist_ok=True)
    model_dir = base_dir(cfg)
    tokenizer = tokenizer_of(model_dir)
    rows = pq.read_table(data).to_pylist()
    items_by_id = {r["content_id"]: r for r in rows}
    scorer = RewardScorer(cfg.rm_exp, cfg.rm_ctr)
    engines: list = []

    def engine_of():
        if not engines:  # built on first use: a resumed run past its sampling needs none
            engines.append(sampler_engine(cfg, model_dir))
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
                    cfg, rows, engine_of, lambda: scorer, Path(cfg.first_samples) if cfg.first_samples else None)
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
        save_policy(model, iter_dir, cfg)
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
