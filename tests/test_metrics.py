"""Metrics against hand-computed rankings, a slow sort-based reference, and properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec.eval.metrics import all_metrics, bootstrap_ci, metrics_at_k, relevant_ranks


def slow_ranks(scores, relevant, excluded):
    """Reference: stable descending sort of the kept items, position of each relevant one."""
    ranks = np.full(relevant.shape, np.inf)
    for b in range(scores.shape[0]):
        kept = [i for i in range(scores.shape[1]) if not excluded[b, i]]
        order = sorted(kept, key=lambda i: -scores[b, i])  # Python's sort is stable
        for q, item in enumerate(relevant[b]):
            if item >= 0:
                ranks[b, q] = order.index(item) + 1
    return ranks


def test_hand_computed_ranking():
    # Items 0..5 scored; item 1 excluded (history). Ranking of kept items: 3, 0, 4, 2, 5.
    scores = np.array([[0.8, 0.9, 0.1, 1.0, 0.5, 0.0]])
    excluded = np.array([[False, True, False, False, False, False]])
    relevant = np.array([[0, 2, -1]])
    ranks = relevant_ranks(scores, relevant, excluded)
    np.testing.assert_array_equal(ranks, [[2.0, 4.0, np.inf]])
    at3 = metrics_at_k(ranks, 3)
    assert at3["recall@3"][0] == pytest.approx(1 / 2)
    assert at3["precision@3"][0] == pytest.approx(1 / 3)
    assert at3["hr@3"][0] == 1.0
    idcg = 1 + 1 / math.log2(3)
    assert at3["ndcg@3"][0] == pytest.approx((1 / math.log2(3)) / idcg)
    at5 = metrics_at_k(ranks, 5)
    assert at5["ndcg@5"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / idcg)
    assert all_metrics(ranks, (3,))["mrr"][0] == pytest.approx(1 / 2)


def test_ties_break_by_lower_item_index():
    scores = np.array([[1.0, 1.0, 1.0, 1.0]])
    ranks = relevant_ranks(scores, np.array([[2, 0]]), np.zeros((1, 4), dtype=bool))
    np.testing.assert_array_equal(ranks, [[3.0, 1.0]])


def test_recall_denominator_is_min_of_relevant_and_k():
    ranks = np.array([[1.0, 2.0, 3.0, 40.0]])
    assert metrics_at_k(ranks, 2)["recall@2"][0] == 1.0
    assert metrics_at_k(ranks, 10)["recall@10"][0] == pytest.approx(3 / 4)


def test_matches_sort_based_reference():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(20, 30)).astype(float)  # many ties on purpose
    excluded = rng.random((20, 30)) < 0.2
    relevant = np.stack([rng.choice(np.flatnonzero(~row), 4, replace=False) for row in excluded])
    relevant[::3, 3] = -1
    np.testing.assert_array_equal(
        relevant_ranks(scores, relevant, excluded), slow_ranks(scores, relevant, excluded)
    )


@settings(max_examples=200, deadline=None)
@given(
    n_items=st.integers(2, 40),
    n_relevant=st.integers(1, 10),
    k=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
)
def test_metrics_in_unit_interval_and_perfect_ranking_scores_one(n_items, n_relevant, k, seed):
    rng = np.random.default_rng(seed)
    n_relevant = min(n_relevant, n_items)
    relevant = rng.choice(n_items, n_relevant, replace=False)[None, :]
    scores = rng.normal(size=(1, n_items))
    excluded = np.zeros((1, n_items), dtype=bool)
    for name, value in all_metrics(relevant_ranks(scores, relevant, excluded), (k,)).items():
        assert 0.0 <= value[0] <= 1.0 + 1e-12, name
    perfect = np.zeros((1, n_items))
    perfect[0, relevant[0]] = 1.0 + rng.random(n_relevant)
    best = all_metrics(relevant_ranks(perfect, relevant, excluded), (k,))
    assert best[f"ndcg@{k}"][0] == pytest.approx(1.0)
    assert best[f"recall@{k}"][0] == pytest.approx(1.0)
    assert best["mrr"][0] == 1.0


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(0).random(300)
    low, high = bootstrap_ci(values, seed=1)
    assert low < values.mean() < high
    assert (low, high) == bootstrap_ci(values, seed=1)
    assert high - low < 0.1
