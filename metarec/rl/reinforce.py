"""REINFORCE's math as small pure functions: returns, the top-K correction, the losses.

The off-policy estimator is the one of Chen et al., "Top-K Off-Policy Correction for a
REINFORCE Recommender System" (WSDM 2019): for a logged event (s, a) with return R,

    ∇J ≈ min(π(a|s) / β(a|s), cap) · λ_K(s, a) · (R − V(s)) · ∇ log π(a|s),
    λ_K(s, a) = K · (1 − π(a|s))^(K − 1),

where β is an estimated behaviour policy, π the softmax policy for the first slot and K the
slate size: λ_K is the derivative of the probability that a K-item slate sampled from π
holds a, so the update pushes that probability rather than the first slot's.
"""

from __future__ import annotations

import numpy as np
import torch


def discounted_returns(rewards: torch.Tensor, alive: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) return from each step on, G_t = Σ_{j ≥ t} γ^(j−t) r_j over steps still alive.

    ``rewards`` (B, T); ``alive`` (B, T) 1 where the step happened, 0 after the episode ended.
    """
    masked = rewards * alive
    returns = torch.zeros_like(masked)
    running = torch.zeros(masked.shape[0], dtype=masked.dtype)
    for step in range(masked.shape[1] - 1, -1, -1):
        running = masked[:, step] + gamma * running
        returns[:, step] = running
    return returns * alive


def topk_correction(probabilities: torch.Tensor, slate_size: int) -> torch.Tensor:
    """λ_K = K (1 − π)^(K − 1) for first-slot probabilities π (any shape)."""
    return slate_size * (1.0 - probabilities) ** (slate_size - 1)


def off_policy_loss(
    log_probabilities: torch.Tensor,
    behaviour_log_probabilities: torch.Tensor,
    advantages: torch.Tensor,
    slate_size: int,
    weight_cap: float,
) -> torch.Tensor:
    """Scalar surrogate whose gradient is Chen et al.'s corrected REINFORCE, averaged.

    ``log_probabilities`` (n,) log π(a|s) with gradient; ``behaviour_log_probabilities`` (n,)
    log β(a|s) (the ratio is taken in log space: tiny propensities do not underflow);
    ``advantages`` (n,) R − V(s) (no gradient). With K = 1 and no cap this is plain
    importance-weighted REINFORCE.
    """
    log_ratio = log_probabilities.detach().double() - behaviour_log_probabilities.double()
    weights = torch.clamp(log_ratio, max=float(np.log(weight_cap))).exp()
    probabilities = log_probabilities.detach().exp()
    scale = weights.to(probabilities.dtype) * topk_correction(probabilities, slate_size)
    return -(scale * advantages.detach() * log_probabilities).mean()


def on_policy_loss(
    log_probabilities: torch.Tensor, advantages: torch.Tensor, alive: torch.Tensor
) -> torch.Tensor:
    """Scalar REINFORCE surrogate over (B, T) slate log-probabilities and advantages,
    averaged over the steps that happened (``alive`` (B, T) 0/1)."""
    return -(log_probabilities * advantages.detach() * alive).sum() / alive.sum().clamp(min=1)
