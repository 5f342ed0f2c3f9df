"""Baselines against slow, independent per-user or per-item reference computations."""

import numpy as np
import pytest

from metarec.baselines import build_baseline, itemknn
from metarec.baselines.ease import ease_weights
from metarec.baselines.itemknn import item_similarity, keep_top_k
from metarec.data.matrix import interaction_matrix
from metarec.data.splits import coldstart_split
from metarec.errors import ConfigError
from metarec.eval.ranking import evaluate_cases


@pytest.fixture(scope="module")
def split(synthetic_dataset):
    return coldstart_split(synthetic_dataset.sequences(), synthetic_dataset.n_items, 5, 10, 0)


def fitted(name, split, **hyperparameters):
    method = build_baseline(name, {name: hyperparameters})
    method.fit(split.train_sequences, split.n_items, split.valid)
    return method


def test_pop_counts_training_users(split):
    scores = fitted("pop", split).score([np.array([0])])[0]
    for item in (0, 5, 17):
        assert scores[item] == sum(item in seq for seq in split.train_sequences)


def test_itemknn_equals_per_pair_cosine_loop(split):
    histories = [case.history for case in split.test[:5]]
    scores = fitted("itemknn", split, neighbours=None).score(histories)
    users_of = [
        set(np.flatnonzero([i in seq for seq in split.train_sequences]))
        for i in range(split.n_items)
    ]

    def cosine(a, b):
        if not users_of[a] or not users_of[b]:
            return 0.0
        return len(users_of[a] & users_of[b]) / np.sqrt(len(users_of[a]) * len(users_of[b]))

    for row, history in enumerate(histories):
        for item in (0, 3, 50, 119):
            expected = sum(cosine(h, item) for h in history)
            assert scores[row, item] == pytest.approx(expected, rel=1e-5)


def test_userknn_equals_per_user_loop(split):
    history = split.test[0].history
    scores = fitted("userknn", split, neighbours=7).score([history])[0]
    query = set(history.tolist())
    similarity = np.array(
        [
            len(query & set(seq.tolist())) / np.sqrt(len(query) * len(seq))
            for seq in split.train_sequences
        ]
    )
    top = np.argsort(-similarity, kind="stable")[:7]
    expected = np.zeros(split.n_items)
    for user in top:
        expected[split.train_sequences[user]] += similarity[user]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_ease_columns_are_ridge_regressions_on_other_items():
    matrix = (np.random.default_rng(0).random((60, 12)) < 0.3).astype(float)
    gram, ridge = matrix.T @ matrix, 5.0
    weights = ease_weights(gram, ridge)
    for j in range(12):
        others = [i for i in range(12) if i != j]
        column = np.linalg.solve(gram[np.ix_(others, others)] + ridge * np.eye(11), gram[others, j])
        np.testing.assert_allclose(weights[others, j], column, rtol=1e-8, atol=1e-10)
        assert weights[j, j] == 0.0


def test_ease_picks_lambda_by_validation(split):
    method = fitted("ease", split, lambdas=[1.0, 30.0, 3000.0])
    quality = {}
    for ridge in (1.0, 30.0, 3000.0):
        candidate = fitted("ease", split, lambdas=[ridge])
        quality[ridge] = evaluate_cases(candidate.score, split.valid, (10,))["ndcg@10"].mean()
    assert method.ridge == max(quality, key=quality.get)


def test_learned_baselines_beat_popularity(split):
    pop = evaluate_cases(fitted("pop", split).score, split.test, (10,))["ndcg@10"].mean()
    for name, hyperparameters in [
        ("itemknn", {"neighbours": None}),
        ("userknn", {"neighbours": 20}),
        ("ease", {"lambdas": [10.0, 100.0]}),
    ]:
        quality = evaluate_cases(fitted(name, split, **hyperparameters).score, split.test, (10,))
        assert quality["ndcg@10"].mean() > pop + 0.05, name


def test_hyperparameters_are_checked():
    with pytest.raises(ConfigError, match="missing required key 'neighbours'"):
        build_baseline("userknn", {"userknn": {}})
    with pytest.raises(ConfigError, match="expected a list"):
        build_baseline("ease", {"ease": {"lambdas": 5}})
    with pytest.raises(ConfigError, match=r"itemknn.neighbours 0: need at least 1, or null"):
        build_baseline("itemknn", {"itemknn": {"neighbours": 0}})
    with pytest.raises(ConfigError, match=r"userknn.neighbours -3: need at least 1"):
        build_baseline("userknn", {"userknn": {"neighbours": -3}})


def test_keep_top_k_equals_stable_sort_with_ties():
    rng = np.random.default_rng(3)
    matrix = rng.integers(0, 4, size=(40, 30)).astype(np.float32)  # many ties
    for k in (1, 5, 29, 30):
        order = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
        expected = np.zeros_like(matrix)
        np.put_along_axis(expected, order, np.take_along_axis(matrix, order, axis=1), axis=1)
        np.testing.assert_array_equal(keep_top_k(matrix, k), expected)


def test_blocked_sparse_neighbours_equal_dense_reference(split):
    sparse = interaction_matrix(split.train_sequences, split.n_items)
    matrix = sparse.toarray().astype(float)
    counts = matrix.sum(axis=0)
    norms = np.sqrt(np.where(counts > 0, counts, 1.0))
    dense = matrix.T @ matrix / norms[:, None] / norms[None, :]
    np.fill_diagonal(dense, 0.0)
    order = np.argsort(-dense, axis=1, kind="stable")[:, :10]
    expected = np.zeros_like(dense)
    np.put_along_axis(expected, order, np.take_along_axis(dense, order, axis=1), axis=1)
    # 7 items' rows per block: several blocks, one partial
    blocked = item_similarity(sparse, neighbours=10, block_floats=7 * split.n_items)
    np.testing.assert_allclose(blocked.toarray(), expected, rtol=1e-5, atol=1e-7)
    history = split.test[0].history
    scores = fitted("itemknn", split, neighbours=10).score([history])[0]
    np.testing.assert_allclose(scores, expected[history].sum(axis=0), rtol=1e-5, atol=1e-6)


def test_dense_item_methods_refuse_big_catalogues(split, monkeypatch):
    monkeypatch.setattr(itemknn, "ALL_PAIRS_MAX_ITEMS", split.n_items - 1)
    with pytest.raises(ConfigError, match="set itemknn.neighbours"):
        fitted("itemknn", split, neighbours=None)
    fitted("itemknn", split, neighbours=5)  # top-k neighbours stay allowed
    with pytest.raises(ConfigError, match=r"the limit is ease.max_items = 100\. Use itemknn"):
        fitted("ease", split, lambdas=[10.0], max_items=100)
