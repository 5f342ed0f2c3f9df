"""Collaborative starting points for item id embeddings, from meta-train users' histories.

Text alone carries little of MovieLens's signal, and id embeddings learned from scratch
need many epochs. Starting them at the top singular directions of the cosine-normalised
user×item matrix puts co-consumed items close from step one: the dot products of the
initial embeddings approximate the item-kNN cosine similarities.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from metarec.data.matrix import interaction_matrix


def _top_singular(matrix: sp.csr_matrix, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``rank`` largest singular values (descending) and right vectors (rank, N).

    A truncated sparse SVD (ARPACK, fixed start vector: deterministic) keeps a 140k × 27k
    matrix sparse; it needs rank < min(U, N), so smaller problems take the dense SVD.
    """
    if rank < min(matrix.shape) - 1:
        start = np.ones(min(matrix.shape))
        _, singular, right = svds(matrix, k=rank, v0=start, random_state=0)
        order = np.argsort(-singular, kind="stable")
        return singular[order], right[order]
    _, singular, right = np.linalg.svd(matrix.toarray(), full_matrices=False)
    return singular[:rank], right[:rank]


def svd_item_embeddings(sequences: list[np.ndarray], n_items: int, dim: int) -> np.ndarray:
    """(N, dim) float32 item vectors E with E Eᵀ ≈ the item-item cosine of the histories.

    Columns of the (U, N) 0/1 matrix are scaled to unit norm (unseen items stay zero);
    E = V_k diag(s_k) from its SVD, so E Eᵀ is the best rank-k approximation of XᵀX.
    """
    matrix = interaction_matrix(sequences, n_items, dtype=np.float64)
    norms = np.sqrt(np.asarray(matrix.sum(axis=0)).ravel())
    matrix = matrix @ sp.diags(1.0 / np.where(norms > 0, norms, 1.0))
    singular, right = _top_singular(matrix.tocsr(), min(dim, min(matrix.shape)))
    rank = len(singular)
    embeddings = np.zeros((n_items, dim))
    embeddings[:, :rank] = right.T * singular
    signs = np.sign(embeddings[np.abs(embeddings).argmax(axis=0), np.arange(dim)])
    return (embeddings * np.where(signs == 0, 1.0, signs)).astype(np.float32)
