"""EASE (Steck, 2019): a closed-form item-item linear autoencoder with a zero diagonal.

B = I - P / diag(P) with P = (XᵀX + λI)⁻¹, and a user's scores are x_u B. The ridge
strength λ is picked from ``lambdas`` by ndcg@10 on the validation users.

EASE is dense by nature (an N×N inverse: N² floats and O(N³) time), so above
``max_items`` it is refused rather than left to swap or run for hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec.data.matrix import ALL_PAIRS_MAX_ITEMS, interaction_matrix
from metarec.data.splits import UserCase
from metarec.errors import ConfigError
from metarec.eval.ranking import evaluate_cases
from metarec.eval.recommender import Recommender


@dataclass
class EASEConfig:
    lambdas: list[float]
    max_items: int = ALL_PAIRS_MAX_ITEMS

    def __post_init__(self) -> None:
        if not self.lambdas or min(self.lambdas) <= 0:
            raise ConfigError(f"ease.lambdas {self.lambdas}: need at least one, each positive")


def ease_weights(gram: np.ndarray, ridge: float) -> np.ndarray:
    """(N, N) EASE item weights from the (N, N) Gram matrix XᵀX and ridge strength λ."""
    precision = np.linalg.inv(gram + ridge * np.eye(len(gram)))
    weights = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


class EASE(Recommender):
    def __init__(self, config: EASEConfig) -> None:
        self.config = config
        self.weights: np.ndarray | None = None
        self.ridge: float | None = None

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        if n_items > self.config.max_items:
            gigabytes = 3 * n_items**2 * 8 / 1e9  # the Gram matrix, its inverse, the weights
            raise ConfigError(
                f"ease: {n_items:,} items need dense {n_items:,}×{n_items:,} matrices "
                f"(about {gigabytes:.0f} GB) and an O(N³) inverse; the limit is ease.max_items "
                f"= {self.config.max_items:,}. Use itemknn with neighbours set, or raise "
                f"ease.max_items in the baselines YAML"
            )
        matrix = interaction_matrix(train_sequences, n_items, dtype=np.float64)
        gram = (matrix.T @ matrix).toarray()
        best = -1.0
        for ridge in self.config.lambdas:
            self.weights = ease_weights(gram, ridge)
            quality = evaluate_cases(self.score, valid, (10,))["ndcg@10"].mean() if valid else 0.0
            if quality > best:
                best, self.ridge, chosen = quality, ridge, self.weights
        self.weights = chosen

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        queries = interaction_matrix(histories, len(self.weights), dtype=np.float64)
        return np.asarray(queries @ self.weights, dtype=np.float32)
