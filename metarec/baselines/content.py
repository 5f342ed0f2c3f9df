"""Text-only content baseline: an item scores its mean cosine to the history's items' text.

Every item is a sentence vector of its text (all-MiniLM-L6-v2 by default, as the LLM user
model's item side), so an item nobody interacted with is ranked like any other: the
baseline collaborative methods cannot beat on new items. It learns nothing from
interactions; ``fit`` only reads the vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from metarec.data.splits import UserCase
from metarec.errors import MetarecError
from metarec.eval.recommender import Recommender

# text encoder name -> (N, d) vectors of the catalogue's item text, in item index order
TextVectors = Callable[[str], np.ndarray]


@dataclass
class ContentConfig:
    text_encoder: str = "all-minilm-l6-v2"  # or a local sentence-transformers folder


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """(N, d) rows scaled to unit L2 norm; all-zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class Content(Recommender):
    def __init__(self, config: ContentConfig, text_vectors: TextVectors) -> None:
        self.config = config
        self.text_vectors = text_vectors
        self.unit: np.ndarray | None = None  # (N, d) unit text vectors once fitted

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        vectors = np.asarray(self.text_vectors(self.config.text_encoder), dtype=np.float32)
        if len(vectors) != n_items:
            raise MetarecError(f"content: {len(vectors)} item texts for {n_items} items")
        self.unit = unit_rows(vectors)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, N) mean over each history's items of their cosine to every item; an empty
        history scores every item 0. A mean of cosines between unit vectors is the dot
        product with the mean of those vectors: one (B, d) × (d, N) product per batch."""
        empty = np.zeros(self.unit.shape[1], dtype=self.unit.dtype)
        means = np.stack(
            [self.unit[history].mean(axis=0) if len(history) else empty for history in histories]
        )
        return means @ self.unit.T
