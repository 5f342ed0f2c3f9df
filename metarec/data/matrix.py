"""Histories as a user×item 0/1 matrix, the input of the classical methods.

At ml-20m size (140k users × 27k items) a dense matrix would take 15 GB, so the matrix
is sparse (CSR); callers densify only a batch of rows, or a block of an item×item product.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

# Above this many items, a method keeping a value for every pair of items (item-kNN with
# every item a neighbour, the RL simulator's similarities, EASE) holds GBs: they refuse.
ALL_PAIRS_MAX_ITEMS = 20_000
BLOCK_FLOATS = 1 << 24  # item×item counts densified at once (64 MB of float32)


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


def co_occurrence_blocks(
    matrix: sp.csr_matrix, block_floats: int = BLOCK_FLOATS
) -> Iterator[tuple[int, np.ndarray]]:
    """Blocks of the (N, N) co-occurrence counts of a (U, N) 0/1 ``matrix``: (start, (B, N))
    where row r counts the users holding both item start + r and each item; about
    ``block_floats`` counts per block, in item order, so N×N is never dense at once."""
    n_items = matrix.shape[1]
    by_item = matrix.T.tocsr()
    rows = max(1, block_floats // max(1, n_items))
    for start in range(0, n_items, rows):
        yield start, (by_item[start : start + rows] @ matrix).toarray()
