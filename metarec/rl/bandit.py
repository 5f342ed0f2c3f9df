"""Bandit exploration over the adapted model's candidates, evaluated offline by replay.

The replay method (Li, Chu, Langford and Wang, WSDM 2011): a log of events, each with the
arms that were available, the arm a uniformly random logging policy showed and its reward.
A policy under evaluation is asked to choose at each event; only events where it chose the
logged arm count, with their logged reward. With uniform logging this estimates the
policy's click-through rate without bias, learning included (the policy only ever sees
the rewards of counted events, as it would online).

Policies pick one of K arms from features of (user, arm): a bias, the adapted model's score
z-scored among the arms, and the arm's log popularity. ``greedy`` takes the best model
score; ``epsilon-greedy``, ``linucb`` and ``thompson`` learn a shared linear reward model
from the counted events, exploring at random, by an upper confidence bound, or by
sampling the posterior.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from metarec.data.splits import Split
from metarec.errors import ConfigError
from metarec.eval.beyond import user_counts
from metarec.eval.metrics import bootstrap_ci
from metarec.rl.env import best_unseen

POLICIES = ("greedy", "epsilon-greedy", "linucb", "thompson")


@dataclass
class LoggedEvent:
    """One logged display: ``features`` (K, d) of the arms, the shown arm and its reward."""

    features: np.ndarray
    shown: int
    reward: float


class LinearPolicy:
    """A bandit over arms described by (K, d) features, with a ridge reward model."""

    def __init__(self, kind: str, dim: int, alpha: float, epsilon: float, seed: int) -> None:
        if kind not in POLICIES:
            raise ConfigError(f"bandit policy {kind!r}: expected one of {', '.join(POLICIES)}")
        self.kind, self.alpha, self.epsilon = kind, alpha, epsilon
        self.rng = np.random.default_rng(seed)
        self.precision = np.eye(dim)  # A = I + Σ x xᵀ
        self.moment = np.zeros(dim)  # b = Σ r x

    def choose(self, features: np.ndarray) -> int:
        """Index of the arm to show among the rows of ``features`` (K, d)."""
        if self.kind == "greedy":
            return int(np.argmax(features[:, 1]))  # column 1: the model's score
        covariance = np.linalg.inv(self.precision)
        theta = covariance @ self.moment
        if self.kind == "epsilon-greedy":
            if self.rng.random() < self.epsilon:
                return int(self.rng.integers(len(features)))
            return int(np.argmax(features @ theta))
        if self.kind == "linucb":
            widths = np.sqrt(np.einsum("kd,de,ke->k", features, covariance, features))
            return int(np.argmax(features @ theta + self.alpha * widths))
        sample = self.rng.multivariate_normal(theta, self.alpha**2 * covariance)
        return int(np.argmax(features @ sample))

    def update(self, chosen: np.ndarray, reward: float) -> None:
        self.precision += np.outer(chosen, chosen)
        self.moment += reward * chosen


def replay(policy: LinearPolicy, events: list[LoggedEvent]) -> np.ndarray:
    """Rewards (M,) of the M events where ``policy`` chose the logged arm, in log order."""
    rewards = []
    for event in events:
        if policy.choose(event.features) == event.shown:
            rewards.append(event.reward)
            policy.update(event.features[event.shown], event.reward)
    return np.array(rewards)


def arm_features(scores: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """(K, 3) features of K arms: bias, model score z-scored among them, log popularity."""
    spread = scores.std()
    standard = (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)
    return np.column_stack([np.ones(len(scores)), standard, np.log1p(popularity)])


@dataclass
class BanditConfig:
    support_size: int = 10  # cold users of the run's coldstart split, given this many items
    rounds: int = 20  # logged displays per cold user
    arms: int = 5  # arms per display, drawn from the model's top `pool` unseen items
    pool: int = 50
    epsilon: float = 0.1
    alpha: float = 1.0  # LinUCB's bound width, Thompson's posterior scale
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.arms <= self.pool:
            raise ConfigError(f"bandit: need 2 <= arms ({self.arms}) <= pool ({self.pool})")


def logged_events(
    pools: np.ndarray,
    pool_scores: np.ndarray,
    futures: list[np.ndarray],
    popularity: np.ndarray,
    config: BanditConfig,
) -> list[LoggedEvent]:
    """A uniform-random log for users with (U, pool) top unseen items ``pools`` and their
    (U, pool) adapted ``pool_scores``: per user and round, ``arms`` of them drawn, one shown
    at random, reward 1 if the user took it later (its ``futures``). Users are interleaved
    round by round."""
    rng = np.random.default_rng(config.seed)
    events = []
    for _ in range(config.rounds):
        for user, pool in enumerate(pools):
            drawn = rng.choice(len(pool), size=config.arms, replace=False)
            arms = pool[drawn]
            shown = int(rng.integers(config.arms))
            features = arm_features(pool_scores[user, drawn], popularity[arms])
            reward = float(arms[shown] in set(futures[user].tolist()))
            events.append(LoggedEvent(features, shown, reward))
    return events


def compare_policies(
    score: Callable[[list[np.ndarray]], np.ndarray],
    split: Split,
    sequences: list[np.ndarray],
    config: BanditConfig,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Replay every policy on one log of ``split``'s test users (given their support, what
    they took after it read from ``sequences``), scored by the adapted model's ``score`` a
    few users at a time; results and the counted rewards of each policy."""
    histories = [case.history for case in split.test]
    futures = [sequences[case.user][len(case.history) :] for case in split.test]
    popularity = user_counts(split.train_sequences, split.n_items)
    pools, pool_scores = best_unseen(
        lambda rows: score([histories[row] for row in rows]), histories, split.n_items, config.pool
    )
    events = logged_events(pools, pool_scores, futures, popularity, config)
    rewards = {
        kind: replay(LinearPolicy(kind, 3, config.alpha, config.epsilon, config.seed), events)
        for kind in POLICIES
    }
    greedy = rewards["greedy"].mean()
    policies = {}
    for kind, values in rewards.items():
        policies[kind] = {
            "events": len(values),
            "ctr": float(values.mean()),
            "ctr_ci": list(bootstrap_ci(values, 1000, seed=config.seed)),
            "vs_greedy": float(values.mean() / greedy) if greedy > 0 else float("nan"),
        }
    return {"events": len(events), "users": len(histories), "policies": policies}, rewards
