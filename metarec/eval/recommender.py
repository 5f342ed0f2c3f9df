"""The one interface every recommender implements: what evaluation ranks.

A recommender is fitted on the training users' histories (validation users may be used
for model selection only) and then scores the whole catalogue for any user given that
user's history, including users it has never seen: the cold-start setting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from metarec.data.splits import UserCase


class Recommender(ABC):
    """Fit once, then score batches of users from their histories."""

    @abstractmethod
    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        """Learn from training users' time-ordered item histories (list of (L_u,) arrays)."""

    @abstractmethod
    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        """Scores (B, n_items) float32 for B users given their (L_b,) item histories."""
