"""An ensemble of meta-lora runs: each adapts to the user on its own, their scores are averaged.

Runs trained alike but from different training seeds reach different initialisations of
similar quality (docs/benchmarks.md: meta-lora's sd over three seeds is 0.004 to 0.007
ndcg@10 on ml-100k); averaging them removes part of that seed-to-seed noise. Each
member's raw scores are logits on its own scale, so the average is taken over their log-softmax
over the catalogue: the geometric mean of the members' distributions over items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import log_softmax

from metarec.data.splits import UserCase
from metarec.errors import ConfigError
from metarec.eval.recommender import Recommender


def mean_log_probabilities(member_scores: Sequence[np.ndarray]) -> np.ndarray:
    """(B, N) mean over M members of each one's (B, N) log-softmax over the catalogue."""
    logs = [log_softmax(scores.astype(np.float64), axis=1) for scores in member_scores]
    return sum(logs) / len(logs)


class EnsembleRecommender(Recommender):
    """Scores every user with each member, then averages their log-probabilities."""

    def __init__(self, members: Sequence[Recommender]) -> None:
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = list(members)

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        for member in self.members:
            member.fit(train_sequences, n_items, valid)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, n_items) float32 mean log-probabilities of the members' adapted scores."""
        member_scores = [member.score(histories) for member in self.members]
        return mean_log_probabilities(member_scores).astype(np.float32)
