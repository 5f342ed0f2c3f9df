"""Item-kNN: score = sum of cosine similarities between a candidate and the history items.

Similarity is the cosine between item columns of the training users' 0/1 interaction
matrix, without shrinkage; ``neighbours`` keeps only each item's top-k similarities
(None keeps all, the reference protocol's setting). The similarity matrix is sparse and
built a block of items at a time (`co_occurrence_blocks`), so a 27k-item catalogue never
holds an N×N dense array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from metarec.data.matrix import (
    ALL_PAIRS_MAX_ITEMS,
    BLOCK_FLOATS,
    co_occurrence_blocks,
    interaction_matrix,
)
from metarec.data.splits import UserCase
from metarec.errors import ConfigError
from metarec.eval.ranking import top_k_mask
from metarec.eval.recommender import Recommender


def keep_top_k(matrix: np.ndarray, k: int) -> np.ndarray:
    """Zero all but the ``k`` largest entries of each row of (R, C) ``matrix``.

    Exactly ``k`` survive per row; among equal values the lower column index wins.
    """
    return np.where(top_k_mask(matrix, k), matrix, 0)


@dataclass
class ItemKNNConfig:
    neighbours: int | None

    def __post_init__(self) -> None:
        if self.neighbours is not None and self.neighbours < 1:
            raise ConfigError(f"itemknn.neighbours {self.neighbours}: need at least 1, or null")


def item_similarity(
    matrix: sp.csr_matrix, neighbours: int | None = None, block_floats: int = BLOCK_FLOATS
) -> sp.csr_matrix:
    """(N, N) sparse cosine between the columns of a (U, N) 0/1 matrix; unseen items get 0.

    With ``neighbours`` set, an item is not its own neighbour and each row keeps its
    ``neighbours`` largest similarities (`keep_top_k`).
    """
    norms = np.sqrt(np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel())
    norms[norms == 0] = 1.0
    blocks = []
    for start, co_counts in co_occurrence_blocks(matrix, block_floats):
        stop = start + len(co_counts)
        block = (co_counts / norms[start:stop, None] / norms[None, :]).astype(np.float32)
        if neighbours is not None:
            block[np.arange(stop - start), np.arange(start, stop)] = 0.0
            block = keep_top_k(block, neighbours)
        blocks.append(sp.csr_matrix(block))
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, 0), dtype=np.float32)


class ItemKNN(Recommender):
    def __init__(self, config: ItemKNNConfig) -> None:
        self.config = config
        self.similarity: sp.csr_matrix | None = None

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        if self.config.neighbours is None and n_items > ALL_PAIRS_MAX_ITEMS:
            raise ConfigError(
                f"itemknn.neighbours is null (every item a neighbour): with {n_items:,} items "
                f"that is a dense {n_items:,}×{n_items:,} similarity; above "
                f"{ALL_PAIRS_MAX_ITEMS:,} items set itemknn.neighbours (e.g. 100) in the "
                f"baselines YAML"
            )
        matrix = interaction_matrix(train_sequences, n_items)
        self.similarity = item_similarity(matrix, self.config.neighbours)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        queries = interaction_matrix(histories, self.similarity.shape[0], binary=False)
        return np.asarray((queries @ self.similarity).todense(), dtype=np.float32)
