"""Popularity: every user gets the items most training users interacted with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec.data.matrix import interaction_matrix
from metarec.data.splits import UserCase
from metarec.eval.recommender import Recommender


@dataclass
class PopConfig:
    """Popularity has no hyper-parameters."""


class Pop(Recommender):
    def __init__(self, config: PopConfig) -> None:
        self.config = config
        self.counts: np.ndarray | None = None

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        self.counts = np.asarray(interaction_matrix(train_sequences, n_items).sum(axis=0)).ravel()

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))
