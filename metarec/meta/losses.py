"""Per-user losses of the user model: next-item inside the support, and query ranking.

Both return one loss per user, (U,), so that summing them gives every user's own
gradient in the batched inner loop.
"""

from __future__ import annotations

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
    positions = torch.arange(targets.shape[1], device=items.device)
    real = positions[None, :] < (lengths - 1)[:, None]
    # padding targets repeat item 0, whose logit may be masked to -inf (an infinite loss)
    per_position = torch.where(real, per_position, torch.zeros_like(per_position))
    return per_position.sum(dim=1) / real.sum(dim=1).clamp(min=1)


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
