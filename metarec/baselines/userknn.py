"""User-kNN: score items by how the most similar training users interacted.

A user (possibly new) is compared to every training user by the cosine between their
0/1 history vectors; the ``neighbours`` most similar ones (ties: lower training index)
vote for their items with weight equal to the similarity. The training matrix is sparse;
only a batch of users' (B, U_train) similarities is ever dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from metarec.baselines.itemknn import keep_top_k
from metarec.data.matrix import interaction_matrix
from metarec.data.splits import UserCase
from metarec.errors import ConfigError
from metarec.eval.recommender import Recommender


@dataclass
class UserKNNConfig:
    neighbours: int

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ConfigError(f"userknn.neighbours {self.neighbours}: need at least 1")


class UserKNN(Recommender):
    def __init__(self, config: UserKNNConfig) -> None:
        self.config = config
        self.train_matrix: sp.csr_matrix | None = None
        self.train_norms: np.ndarray | None = None

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        self.train_matrix = interaction_matrix(train_sequences, n_items)
        self.train_norms = np.sqrt(np.asarray(self.train_matrix.sum(axis=1)).ravel())

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        queries = interaction_matrix(histories, self.train_matrix.shape[1])
        query_norms = np.sqrt(np.asarray(queries.sum(axis=1)).ravel())
        overlaps = (queries @ self.train_matrix.T).toarray()
        similarity = overlaps / np.outer(query_norms, self.train_norms)
        weights = sp.csr_matrix(keep_top_k(similarity, self.config.neighbours))
        return np.asarray((weights @ self.train_matrix).todense(), dtype=np.float32)
