"""Losses as pure functions of per-sequence scores or log-probabilities; trainers only gather the
inputs and call them. Shapes: B = pairs (or examples) in the batch.
"""
from __future__ import annotations


def bpr_loss(r_plus, r_minus, margin=None):
    """Pairwise (Bradley-Terry / BPR) loss of a reward model: mean of −log σ(r(x, y+) − r(x, y−) − m).

    r_plus, r_minus: FloatTensor [B], rewards of the preferred and the other query of each pair.
    margin: optional FloatTensor [B] (0 when None).
    Returns a scalar tensor. This is what TRL's RewardTrainer computes for (chosen, rejected) pairs
    (tests/test_reward_models.py checks it against TRL on the same model and batch).
    """
    import torch.nn.functional as F

    diff = r_plus - r_minus
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def answer_nll(answer_logits, targets):
    """Next-token loss of the expansion RM's one-token answer.

    answer_logits: FloatTensor [B, V], logits at each prompt's last position.
    targets: LongTensor [B], the token id of the labelled answer ("1" or "0").
    Returns the mean cross-entropy over the full vocabulary (a scalar tensor).
    """
    import torch.nn.functional as F

    return F.cross_entropy(answer_logits, targets)
