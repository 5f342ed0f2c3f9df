"""SVD item embeddings reproduce item-kNN cosines at full rank and rank them well below it."""

import numpy as np

from metarec.baselines.itemknn import item_similarity
from metarec.data.matrix import interaction_matrix
from metarec.models.item_init import svd_item_embeddings


def test_full_rank_dot_products_equal_item_cosines(synthetic_dataset):
    sequences = synthetic_dataset.sequences()[:150]
    n_items = synthetic_dataset.n_items
    embeddings = svd_item_embeddings(sequences, n_items, dim=n_items)
    cosine = item_similarity(interaction_matrix(sequences, n_items)).toarray()
    np.testing.assert_allclose(embeddings @ embeddings.T, cosine, atol=1e-4)


def test_low_rank_keeps_nearest_neighbours_and_is_deterministic(synthetic_dataset):
    sequences = synthetic_dataset.sequences()
    n_items = synthetic_dataset.n_items
    embeddings = svd_item_embeddings(sequences, n_items, dim=16)
    assert embeddings.shape == (n_items, 16)
    np.testing.assert_array_equal(embeddings, svd_item_embeddings(sequences, n_items, dim=16))
    cosine = item_similarity(interaction_matrix(sequences, n_items)).toarray()
    np.fill_diagonal(cosine, -1)
    approx = embeddings @ embeddings.T
    np.fill_diagonal(approx, -np.inf)
    nearest_exact = cosine.argmax(axis=1)
    top5_approx = np.argsort(-approx, axis=1)[:, :5]
    hit_rate = np.mean(
        [exact in row for exact, row in zip(nearest_exact, top5_approx, strict=True)]
    )
    assert hit_rate > 0.8


def test_truncated_sparse_svd_equals_dense_rank_k_reconstruction(synthetic_dataset):
    sequences = synthetic_dataset.sequences()
    n_items = synthetic_dataset.n_items
    matrix = interaction_matrix(sequences, n_items).toarray().astype(float)
    counts = matrix.sum(axis=0)
    matrix /= np.sqrt(np.where(counts > 0, counts, 1.0))
    _, singular, right = np.linalg.svd(matrix, full_matrices=False)
    expected = right[:16].T @ np.diag(singular[:16] ** 2) @ right[:16]
    embeddings = svd_item_embeddings(sequences, n_items, dim=16).astype(float)
    np.testing.assert_allclose(embeddings @ embeddings.T, expected, atol=1e-5)
