"""SASRec baseline: windows, left alignment, determinism, and that it learns the synthetic data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from metarec.baselines.pop import Pop, PopConfig
from metarec.baselines.sasrec import SASRec, SASRecConfig, left_aligned_batch, make_windows
from metarec.data.splits import Split, coldstart_split
from metarec.eval.ranking import evaluate_cases

TINY = SASRecConfig(
    max_len=20,
    hidden=32,
    layers=1,
    heads=1,
    dropout=0.1,
    lr=5e-3,
    weight_decay=0.0,
    batch_size=64,
    max_epochs=20,
    eval_every=5,
    patience=4,
    seed=0,
    device="cpu",
)


@pytest.fixture(scope="module")
def synthetic_coldstart(synthetic_dataset) -> Split:
    return coldstart_split(synthetic_dataset.sequences(), synthetic_dataset.n_items, 10, 10, 0)


@pytest.fixture(scope="module")
def fitted(synthetic_coldstart: Split) -> SASRec:
    model = SASRec(TINY)
    model.fit(
        synthetic_coldstart.train_sequences, synthetic_coldstart.n_items, synthetic_coldstart.valid
    )
    return model


def test_make_windows_cuts_from_the_first_item_with_stride_max_len() -> None:
    pad = 99
    windows = make_windows(
        [np.arange(8), np.array([40, 41, 42, 43]), np.array([50]), np.arange(60, 67)],
        max_len=3,
        padding_id=pad,
    )
    expected = [
        [0, 1, 2, 3],
        [3, 4, 5, 6],
        [6, 7, pad, pad],  # 8 items: the last window is padded
        [40, 41, 42, 43],  # exactly max_len + 1 items: one window
        # [50] alone holds no transition: no window
        [60, 61, 62, 63],
        [63, 64, 65, 66],  # a trailing single item [66] is dropped
    ]
    assert windows.dtype == torch.int64
    assert windows.tolist() == expected


def test_left_aligned_batch_keeps_the_last_items_and_pads_on_the_right() -> None:
    items, last = left_aligned_batch(
        [np.array([5, 6]), np.arange(10, 15)], max_len=3, padding_id=-1
    )
    assert items.tolist() == [[5, 6, -1], [12, 13, 14]]
    assert last.tolist() == [1, 2]


def test_sasrec_beats_popularity_on_synthetic_coldstart(
    fitted: SASRec, synthetic_coldstart: Split
) -> None:
    pop = Pop(PopConfig())
    pop.fit(
        synthetic_coldstart.train_sequences, synthetic_coldstart.n_items, synthetic_coldstart.valid
    )
    pop_ndcg = evaluate_cases(pop.score, synthetic_coldstart.test, (10,))["ndcg@10"].mean()
    sasrec_ndcg = evaluate_cases(fitted.score, synthetic_coldstart.test, (10,))["ndcg@10"].mean()
    assert sasrec_ndcg > pop_ndcg + 0.1, (sasrec_ndcg, pop_ndcg)


def test_scores_are_float32_over_the_catalogue(fitted: SASRec, synthetic_coldstart: Split) -> None:
    scores = fitted.score([np.array([3]), np.array([1, 2, 3, 4])])
    assert scores.shape == (2, synthetic_coldstart.n_items)
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()


def test_long_history_is_scored_from_its_last_max_len_items(fitted: SASRec) -> None:
    history = np.arange(TINY.max_len + 7)
    np.testing.assert_array_equal(fitted.score([history]), fitted.score([history[-TINY.max_len :]]))
    assert not np.array_equal(fitted.score([history]), fitted.score([history[: TINY.max_len]]))


def test_padding_in_a_batch_does_not_change_a_short_history_score(fitted: SASRec) -> None:
    short, long = np.array([7, 8, 9]), np.arange(TINY.max_len + 5)
    alone = fitted.score([short])
    batched = fitted.score([short, long])
    np.testing.assert_allclose(batched[0], alone[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched[1], fitted.score([long])[0], rtol=1e-5, atol=1e-5)


def test_two_fits_with_the_same_seed_score_identically(synthetic_coldstart: Split) -> None:
    config = replace(TINY, max_epochs=4, eval_every=2)
    histories = [case.history for case in synthetic_coldstart.test[:16]]
    scores = []
    for _ in range(2):
        model = SASRec(config)
        model.fit(
            synthetic_coldstart.train_sequences,
            synthetic_coldstart.n_items,
            synthetic_coldstart.valid,
        )
        scores.append(model.score(histories))
    np.testing.assert_array_equal(scores[0], scores[1])
    other = SASRec(replace(config, seed=1))
    other.fit(
        synthetic_coldstart.train_sequences, synthetic_coldstart.n_items, synthetic_coldstart.valid
    )
    assert not np.array_equal(other.score(histories), scores[0])


def test_without_validation_users_it_trains_max_epochs(synthetic_coldstart: Split) -> None:
    model = SASRec(replace(TINY, max_epochs=2, patience=1))
    model.fit(synthetic_coldstart.train_sequences, synthetic_coldstart.n_items, [])
    assert model.epochs_trained == 2
    assert model.best_valid_ndcg is None


def test_fit_restores_the_best_validation_state(synthetic_coldstart: Split) -> None:
    """A noisy run (high lr, evaluated every epoch) whose last epoch is not its best."""
    config = replace(TINY, lr=2e-2, max_epochs=10, eval_every=1, patience=10)
    selected, last = SASRec(config), SASRec(config)
    selected.fit(
        synthetic_coldstart.train_sequences, synthetic_coldstart.n_items, synthetic_coldstart.valid
    )
    last.fit(synthetic_coldstart.train_sequences, synthetic_coldstart.n_items, [])

    def valid_ndcg(model: SASRec) -> float:
        return evaluate_cases(model.score, synthetic_coldstart.valid, (10,))["ndcg@10"].mean()

    assert valid_ndcg(selected) == pytest.approx(selected.best_valid_ndcg)
    assert valid_ndcg(last) < selected.best_valid_ndcg - 0.01
