"""Popularity: every user gets the items most training users interacted with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec.data.splits import UserCase
from metarec.eval.beyond import user_counts
from metarec.eval.recommender import Recommender


@dataclass
class PopConfig:
    """Popularity has no hyper-parameters."""


class Pop(Recommender):
    def __init__(self, config: PopConfig) -> None:
        self.config = config
        self.counts: np.ndarray | None = None

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        self.counts = user_counts(train_sequences, n_items).astype(np.float32)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))
