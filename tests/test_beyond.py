"""Beyond-accuracy measures against hand-computed values and independent formulas."""

import numpy as np
import pytest

from metarec.data.splits import UserCase
from metarec.eval.beyond import beyond_accuracy, coverage, diversity, gini, novelty
from metarec.eval.ranking import top_items


def test_hand_computed_small_case():
    lists = np.array([[0, 1], [0, 2], [0, -1]])
    assert coverage(lists, 5) == pytest.approx(3 / 5)
    popularity = np.array([7, 3, 0, 1, 1])  # of 7 training users
    expected = [
        np.mean([-np.log2(8 / 8), -np.log2(4 / 8)]),
        np.mean([-np.log2(8 / 8), -np.log2(1 / 8)]),
        0.0,  # only the always-seen item
    ]
    np.testing.assert_allclose(novelty(lists, popularity, 7), expected)
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(diversity(lists, embeddings), [1.0, 0.0, 0.0])


def test_gini_equals_the_mean_absolute_difference_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n_items = int(rng.integers(3, 40))
        lists = rng.integers(-1, n_items, size=(int(rng.integers(1, 30)), 5))
        counts = np.bincount(lists[lists >= 0], minlength=n_items).astype(float)
        reference = np.abs(counts[:, None] - counts[None, :]).sum() / (
            2 * n_items**2 * counts.mean()
        )
        assert gini(lists, n_items) == pytest.approx(reference)
    assert gini(np.array([[0, 1], [2, 3]]), 4) == pytest.approx(0.0)
    assert gini(np.array([[0], [0], [0]]), 4) == pytest.approx(0.75)  # (n - 1) / n at most


def test_top_items_skip_the_history_and_break_ties_by_index():
    scores = np.array([[0.5, 0.9, 0.9, 0.1, 0.9]])
    case = UserCase(0, history=np.array([1]), relevant=np.array([3]))
    np.testing.assert_array_equal(top_items(scores, [case], 3), [[2, 4, 0]])
    sampled = UserCase(0, history=np.array([1]), relevant=np.array([3]), candidates=np.array([3]))
    np.testing.assert_array_equal(top_items(scores, [sampled], 2), [[3, -1]])


def test_top_items_equal_a_full_stable_sort():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(30, 40)).astype(float)  # many ties
    cases = [UserCase(u, history=rng.choice(40, 6, replace=False), relevant=np.array([0]))
             for u in range(30)]  # fmt: skip
    for k in (1, 10, 34, 40):
        expected = []
        for row, case in zip(scores, cases, strict=True):
            allowed = np.setdiff1d(np.arange(40), case.history)
            order = allowed[np.argsort(-row[allowed], kind="stable")][:k]
            expected.append(np.pad(order, (0, k - len(order)), constant_values=-1))
        np.testing.assert_array_equal(top_items(scores, cases, k), expected)


def test_beyond_accuracy_reads_only_the_first_k_items():
    lists = np.array([[0, 1, 2, 3], [0, 1, 4, 5]])
    catalogue, per_user = beyond_accuracy(lists, 2, np.ones(6), 3, np.eye(6))
    assert catalogue == {"coverage@2": pytest.approx(2 / 6), "gini@2": pytest.approx(4 / 6)}
    np.testing.assert_allclose(per_user["diversity@2"], [1.0, 1.0])
