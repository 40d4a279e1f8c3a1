"""Losses as pure functions of per-sequence scores or log-probabilities; trainers only gather the
inputs and call them. Shapes: B = pairs (or examples) in the batch.

torch is imported inside each function: the core imports (and installs) without the ``train`` extra.
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


def adaptive_beta(r_chosen, r_rejected, gamma: float, floor: float = 0.05):
    """Per-pair β̃ = 1 + γ (r_c (1 − r_l) − M), M the mean of r_c (1 − r_l) over the pairs given
    (one iteration's pairs), floored at ``floor`` so a pair never gets a zero or negative β.

    r_chosen, r_rejected: FloatTensor [B], combined rewards in [0, 1]. Returns FloatTensor [B] whose
    mean is 1 whenever the floor does not bind.
    """
    margin = r_chosen * (1.0 - r_rejected)
    return (1.0 + gamma * (margin - margin.mean())).clamp_min(floor)


def consistent_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        beta, nll_weight: float = 0.0, chosen_lengths=None):
    """The CMAQ pair loss: −log σ(β (Δ(y_c) − Δ(y_l))) − λ · log π_θ(y_c|x) / |y_c|, per pair.

    *_logps: FloatTensor [B], summed log-probabilities of each query's tokens under the policy being
    trained (π_θ) and the reference (the previous iteration's policy); Δ(y) = policy − reference.
    beta: float or FloatTensor [B] (β0 · β̃ per pair). nll_weight: λ. chosen_lengths: LongTensor [B],
    tokens in each chosen query (needed when λ > 0). Returns FloatTensor [B]; the trainer averages it.
    With β̃ ≡ 1 and λ = 0 this is standard sigmoid DPO.
    """
    import torch.nn.functional as F

    logits = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(beta * logits)
    if nll_weight:
        if chosen_lengths is None:
            raise ValueError("chosen_lengths is needed for the NLL term")
        loss = loss - nll_weight * policy_chosen_logps / chosen_lengths.clamp_min(1)
    return loss


def query_nll(answer_logps, answer_lengths):
    """QSA's SFT loss: the mean negative log-likelihood per query token over the batch (prompt tokens
    carry no loss). answer_logps: FloatTensor [B] summed over each query's tokens; answer_lengths:
    LongTensor [B]. Returns a scalar tensor."""
    return -answer_logps.sum() / answer_lengths.sum().clamp_min(1)
