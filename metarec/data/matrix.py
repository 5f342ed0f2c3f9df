"""Histories as a dense user×item 0/1 matrix, the input of the classical methods."""

from __future__ import annotations

import numpy as np


def interaction_matrix(
    sequences: list[np.ndarray], n_items: int, dtype: type = np.float32
) -> np.ndarray:
    """(U, N) 0/1 matrix: row u marks the items in sequence u."""
    matrix = np.zeros((len(sequences), n_items), dtype=dtype)
    for row, items in enumerate(sequences):
        matrix[row, items] = 1.0
    return matrix
