"""Collaborative starting points for item id embeddings, from meta-train users' histories.

Text alone carries little of MovieLens's signal, and id embeddings learned from scratch
need many epochs. Starting them at the top singular directions of the cosine-normalised
user×item matrix puts co-consumed items close from step one: the dot products of the
initial embeddings approximate the item-kNN cosine similarities.
"""

from __future__ import annotations

import numpy as np

from metarec.data.matrix import interaction_matrix


def svd_item_embeddings(sequences: list[np.ndarray], n_items: int, dim: int) -> np.ndarray:
    """(N, dim) float32 item vectors E with E Eᵀ ≈ the item-item cosine of the histories.

    Columns of the (U, N) 0/1 matrix are scaled to unit norm (unseen items stay zero);
    E = V_k diag(s_k) from its SVD, so E Eᵀ is the best rank-k approximation of XᵀX.
    """
    matrix = interaction_matrix(sequences, n_items, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=0)
    matrix /= np.where(norms > 0, norms, 1.0)
    _, singular, right = np.linalg.svd(matrix, full_matrices=False)
    rank = min(dim, len(singular))
    embeddings = np.zeros((n_items, dim))
    embeddings[:, :rank] = right[:rank].T * singular[:rank]
    signs = np.sign(embeddings[np.abs(embeddings).argmax(axis=0), np.arange(dim)])
    return (embeddings * np.where(signs == 0, 1.0, signs)).astype(np.float32)
