"""Collapse guards: what the policy would serve on a fixed probe set of training notes, after every
iteration of the alignment loop (and for QSA, where it starts).

The probe set is ``align.probe_contents`` notes of D_SFT (the training split, so never a test
content), drawn with a seed of its own: every iteration and every training seed sees the same notes.
For each policy it reports

- ``distinct_top1_share``: distinct top-beam strings over probe notes (a collapsed policy writes the
  same few strings under every note);
- ``top_string`` and ``top_string_share``: the most frequent top-beam string and its share of notes;
- ``beams_passing``: the share of all beams (5 per note) that pass the serving chain;
- ``kl_to_qsa``: a Monte Carlo estimate of KL(π ‖ π_QSA) per query, in nats: the mean over k samples
  y ~ π(·|x) of log π(y|x) − log π_QSA(y|x). The samples' text is re-tokenised as the loss tokenises
  answers, so the estimate can be slightly off where a sample's tokens were not the canonical ones.

and the **proxy** that chooses which iteration to serve (``align.select = "proxy"``) from what a
platform has, fixed before any oracle-space evaluation:

    proxy = beams_passing × lcb_combined + distinct_top1_share

where ``lcb_combined`` is the mean over probe notes of the combined reward r_exp^α·r_ctr^(1−α) of the
note's exposed query (its first beam that passes the serving chain; 0 when none does), each objective
taken at its ensemble lower bound mean − κ·std (``align.lcb_kappa``; the mean with one member).

Nothing here reads the oracle: a platform has all of it.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch

from cmaq.rewards import combine
from training.gate import RewardGate
from training.policy import encode, load_policy, sequence_logps
from training.preference import beam_candidates, sample_contents

PROBE_SEED = 7919


def probe_notes(rows: list[dict], n: int) -> list[dict]:
    """The probe set: ``n`` distinct contents of D_SFT, the same for every run on the same data."""
    return sample_contents(rows, n, PROBE_SEED)


def beam_summary(beams: Sequence[Sequence[str]], passed: np.ndarray) -> dict:
    """Collapse figures of one policy's beams on the probe notes (``passed``: the gate's verdict on the
    beams, flat)."""
    top1 = [b[0] for b in beams if b]
    counts = Counter(top1)
    top, top_n = counts.most_common(1)[0] if counts else (None, 0)
    n = len(beams)
    return {"notes": n, "distinct_top1_share": round(len(counts) / n, 4) if n else None,
            "top_string": top, "top_string_share": round(top_n / n, 4) if n else None,
            "beams_passing": round(float(np.mean(passed)), 4) if len(passed) else None}


@torch.no_grad()
def kl_estimate(policy, reference, tokenizer, items: Sequence[dict], samples: Sequence[Sequence[str]],
                max_prompt_tokens: int, batch: int = 32) -> float | None:
    """Mean of log π(y|x) − log π_ref(y|x) over the samples (each ``samples[i]`` drawn from π for
    ``items[i]``); ``None`` without samples."""
    seqs = [encode(tokenizer, it, q, max_prompt_tokens) for it, qs in zip(items, samples) for q in qs]
    if not seqs:
        return None
    diffs = []
    for start in range(0, len(seqs), batch):
        chunk = seqs[start:start + batch]
        lp, _ = sequence_logps(policy, chunk, tokenizer.pad_token_id)
        lq, _ = sequence_logps(reference, chunk, tokenizer.pad_token_id)
        diffs.append((lp - lq).float().cpu().numpy())
    return round(float(np.concatenate(diffs).mean()), 4)


def exposed_reward(scorer, items: Sequence[dict], beams: Sequence[Sequence[str]], passed: np.ndarray,
                   alpha: float, mean: str, kappa: float) -> tuple[float, float]:
    """(share of notes with an exposed query, mean lower-bound combined reward of the exposed queries
    over all notes, 0 where none is exposed)."""
    exposed, pos = [], 0
    for i, qs in enumerate(beams):
        ok = passed[pos:pos + len(qs)]
        pos += len(qs)
        first = next((q for q, good in zip(qs, ok) if good), None)
        if first is not None:
            exposed.append((i, first))
    if not items:
        return 0.0, 0.0
    total = np.zeros(len(items))
    if exposed:
        scores = scorer.score([items[i] for i, _ in exposed], [q for _, q in exposed])
        total[[i for i, _ in exposed]] = combine(*scores.lower_bounds(kappa), alpha, mean)
    return len(exposed) / len(items), float(total.mean())


def proxy_value(report: dict) -> float:
    """The iteration-choice proxy of one probe report (see the module's docstring)."""
    return round(report["beams_passing"] * report["lcb_combined"] + report["distinct_top1_share"], 4)


def probe_policy(engine, gate: RewardGate, scorer, items: Sequence[dict], adapter: str, qsa: str, model_dir: str,
                 tokenizer, cfg, seed: int) -> dict:
    """The collapse figures and the proxy of ``adapter`` on the probe ``items`` (``cfg``: the
    ``[align]`` settings: k and temperature of the KL samples, α, the mean, κ); the KL term is 0 for
    QSA itself."""
    beams = beam_candidates(engine, items, adapter)
    passed = gate(items, beams).passed
    report = beam_summary(beams, passed)
    report["exposure_rate"], report["lcb_combined"] = (
        round(x, 4) for x in exposed_reward(scorer, items, beams, passed, cfg.alpha, cfg.mean, cfg.lcb_kappa))
    report["proxy"] = proxy_value(report)
    k, temperature, max_prompt_tokens = cfg.probe_k, cfg.temperature, cfg.max_prompt_tokens
    if str(adapter) == str(qsa):
        return {**report, "kl_to_qsa": 0.0}
    results = engine.sample(list(items), k=k, temperature=temperature, seed=seed, adapter=adapter)
    samples = [[c.text.strip() for c in r.candidates if c.text.strip()] for r in results]
    policy = load_policy(model_dir, adapter, trainable=False).eval()
    reference = load_policy(model_dir, qsa, trainable=False).eval()
    return {**report, "kl_to_qsa": kl_estimate(policy, reference, tokenizer, items, samples, max_prompt_tokens)}
