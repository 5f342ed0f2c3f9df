"""Per-user losses of the user model: next-item inside the support, and query ranking.

Each returns one loss per user, (U,), so that summing them gives every user's own
gradient in the batched inner loop.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def next_item_losses(scores: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor):
    """Mean cross-entropy of predicting item t+1 from the state after item t.

    scores: (U, T, N) from each position's state; items: (U, T) right-padded ids;
    lengths: (U,) real lengths (>= 2). Returns (U,).
    """
    targets = items[:, 1:]
    logits = scores[:, :-1]
    per_position = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    return mean_over_support_positions(per_position, lengths)


def mean_over_support_positions(per_position: torch.Tensor, lengths: torch.Tensor):
    """(U,) mean of (U, T−1) per-position losses over each user's real positions (< length−1)."""
    positions = torch.arange(per_position.shape[1], device=per_position.device)
    real = positions[None, :] < (lengths - 1)[:, None]
    # padding targets repeat item 0, whose logit may be masked to -inf (an infinite loss)
    per_position = torch.where(real, per_position, torch.zeros_like(per_position))
    return per_position.sum(dim=1) / real.sum(dim=1).clamp(min=1)


def sampled_next_item_losses(
    positive: torch.Tensor,
    negative: torch.Tensor,
    negatives: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor,
    pool_size: int,
):
    """`next_item_losses` with the softmax's denominator estimated from sampled items.

    positive: (U, T−1) score of item t+1 from the state after item t, targets: (U, T−1)
    those items; negative: (U, T−1, M) scores of ``negatives``, (M,) distinct items drawn
    uniformly from the pool of ``pool_size`` items the softmax ranks; lengths: (U,).

    The sum over the pool's other P−1 items is m drawn items' sum times (P−1)/m, where m
    counts the drawn items other than the target (a drawn target is counted once, as the
    positive): log Z ≈ log(exp(positive) + (P−1)/m · Σ exp(negative)), so the loss
    estimates the full softmax's, whose scale the inner learning rate was chosen for.
    Needs M ≥ 2 (at least one item besides a drawn target). Returns (U,).
    """
    hits = negatives[None, None, :] == targets[..., None]
    negative = negative.masked_fill(hits, float("-inf"))
    others = (len(negatives) - hits.sum(dim=-1)).to(positive.dtype)
    log_weight = math.log(pool_size - 1) - torch.log(others)
    log_partition = torch.logaddexp(positive, torch.logsumexp(negative, dim=-1) + log_weight)
    return mean_over_support_positions(log_partition - positive, lengths)


def query_losses(scores: torch.Tensor, query: torch.Tensor, excluded: torch.Tensor):
    """Mean over each user's query items of −log softmax(scores)[item], history excluded.

    scores: (U, N); query: (U, Q) item ids, -1 = padding; excluded: (U, N) bool (the
    support, which the protocol never ranks). Returns (U,).
    """
    log_probabilities = torch.log_softmax(scores.masked_fill(excluded, float("-inf")), dim=-1)
    real = query >= 0
    picked = log_probabilities.gather(1, query.clamp(min=0))
    picked = torch.where(real, picked, torch.zeros_like(picked))  # padding may hit -inf
    return -picked.sum(dim=1) / real.sum(dim=1).clamp(min=1)
