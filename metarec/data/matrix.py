"""Histories as a user×item 0/1 matrix, the input of the classical methods.

At ml-20m size (140k users × 27k items) a dense matrix would take 15 GB, so the matrix
is sparse (CSR); callers densify only a batch of rows, or a block of an item×item product.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def interaction_matrix(
    sequences: list[np.ndarray], n_items: int, dtype: type = np.float32, binary: bool = True
) -> sp.csr_matrix:
    """(U, N) sparse matrix: row u marks the items in sequence u.

    ``binary``: an item repeated in a sequence counts once (a 0/1 matrix); otherwise
    entries count the repeats.
    """
    lengths = np.fromiter((len(items) for items in sequences), dtype=np.int64, count=len(sequences))
    columns = np.concatenate(sequences).astype(np.int64) if len(sequences) else np.zeros(0, int)
    rows = np.repeat(np.arange(len(sequences)), lengths)
    matrix = sp.csr_matrix(
        (np.ones(len(columns), dtype=dtype), (rows, columns)), shape=(len(sequences), n_items)
    )
    matrix.sum_duplicates()
    if binary:
        matrix.data[:] = 1
    return matrix
