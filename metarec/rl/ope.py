"""Off-policy evaluation: a target policy's value from events logged by another policy.

Each logged event i has the reward r_i of the action a_i the behaviour policy μ took, its
propensity μ(a_i | x_i) and the target policy's π(a_i | x_i). With importance weights
w_i = π(a_i | x_i) / μ(a_i | x_i), optionally clipped at ``clip`` (less variance, some bias):

- IPS  = mean_i w_i r_i                                (unbiased when unclipped)
- SNIPS = Σ_i w_i r_i / Σ_i w_i                        (self-normalised: bounded, slightly biased)
- DR   = mean_i [ v̂_i + w_i (r_i − q̂_i) ]             (doubly robust)

where q̂_i is a reward model's prediction for the logged action and v̂_i = Σ_a π(a | x_i) q̂(x_i, a)
its expectation under the target policy. Confidence intervals are percentile bootstraps
over events, or over groups of events (one user's session) when they are not independent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from metarec.errors import MetarecError

ESTIMATORS = ("ips", "snips", "dr")


@dataclass
class LoggedData:
    """(n,) arrays over logged events; the two reward-model arrays are needed by DR only."""

    rewards: np.ndarray
    behaviour: np.ndarray  # μ(a_i | x_i) > 0
    target: np.ndarray  # π(a_i | x_i)
    predicted: np.ndarray | None = None  # q̂(x_i, a_i)
    expected_predicted: np.ndarray | None = None  # Σ_a π(a | x_i) q̂(x_i, a)

    def __post_init__(self) -> None:
        named = {
            "rewards": self.rewards, "behaviour": self.behaviour, "target": self.target,
            "predicted": self.predicted, "expected_predicted": self.expected_predicted,
        }  # fmt: skip
        for name, values in named.items():
            if values is None:
                continue
            if values.shape != self.rewards.shape:
                raise MetarecError(
                    f"logged data: {name} has shape {values.shape}, rewards {self.rewards.shape}"
                )
            if not np.isfinite(values).all():
                raise MetarecError(f"logged data: {name} holds NaN or infinite values")
        if (self.target < 0).any():
            raise MetarecError("logged data: target probabilities must be non-negative")
        if (self.behaviour <= 0).any():
            raise MetarecError(
                "logged propensities must be positive (the behaviour policy took them)"
            )

    def subset(self, rows: np.ndarray) -> LoggedData:
        """The events at ``rows`` (a bootstrap resample)."""

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[rows]

        return LoggedData(
            self.rewards[rows], self.behaviour[rows], self.target[rows],
            pick(self.predicted), pick(self.expected_predicted),
        )  # fmt: skip


def importance_weights(data: LoggedData, clip: float | None = None) -> np.ndarray:
    """(n,) π/μ per event, at most ``clip`` when given."""
    weights = data.target / data.behaviour
    return weights if clip is None else np.minimum(weights, clip)


def ips(data: LoggedData, clip: float | None = None) -> float:
    return float(np.mean(importance_weights(data, clip) * data.rewards))


def snips(data: LoggedData, clip: float | None = None) -> float:
    weights = importance_weights(data, clip)
    total = weights.sum()
    return float((weights * data.rewards).sum() / total) if total > 0 else 0.0


def doubly_robust(data: LoggedData, clip: float | None = None) -> float:
    if data.predicted is None or data.expected_predicted is None:
        raise MetarecError("the doubly robust estimate needs a reward model's predictions")
    correction = importance_weights(data, clip) * (data.rewards - data.predicted)
    return float(np.mean(data.expected_predicted + correction))


ESTIMATOR_FUNCTIONS: dict[str, Callable[[LoggedData, float | None], float]] = {
    "ips": ips, "snips": snips, "dr": doubly_robust,
}  # fmt: skip


def estimate(
    data: LoggedData,
    estimator: str,
    clip: float | None = None,
    resamples: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, tuple[float, float]]:
    """The estimate and its percentile-bootstrap 95% interval.

    ``groups`` (n,) labels events that are not independent (e.g. one user's session): the
    bootstrap then resamples whole groups. None: every event is its own group.
    """
    if estimator not in ESTIMATOR_FUNCTIONS:
        raise MetarecError(f"estimator {estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    function = ESTIMATOR_FUNCTIONS[estimator]
    n = len(data.rewards)
    if groups is None:
        groups = np.arange(n)
    if len(groups) != n:
        raise MetarecError(f"logged data: {len(groups)} group labels for {n} events")
    _, membership = np.unique(groups, return_inverse=True)
    order = np.argsort(membership, kind="stable")
    bounds = np.searchsorted(membership[order], np.arange(membership.max() + 2))
    members = [order[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        picks = rng.integers(0, len(members), len(members))
        values.append(function(data.subset(np.concatenate([members[g] for g in picks])), clip))
    low, high = np.quantile(values, [0.025, 0.975])
    return function(data, clip), (float(low), float(high))
