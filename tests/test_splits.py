"""Protocol splits follow docs/protocols.md to the letter."""

import numpy as np
import pytest

from metarec.data.splits import coldstart_split, loo_split, sampled_split
from metarec.errors import MetarecError


def test_coldstart_partitions_users_by_seeded_permutation(synthetic_dataset):
    sequences = synthetic_dataset.sequences()
    split = coldstart_split(sequences, synthetic_dataset.n_items, 5, 3, split_seed=7)
    order = np.random.default_rng(7).permutation(len(sequences))
    n_train, n_valid = int(0.7 * len(sequences)), int(0.1 * len(sequences))
    assert sorted(c.user for c in split.valid) == sorted(order[n_train : n_train + n_valid])
    assert sorted(c.user for c in split.test) == sorted(order[n_train + n_valid :])
    train_users = np.sort(order[:n_train])
    for user, sequence in zip(train_users, split.train_sequences, strict=True):
        np.testing.assert_array_equal(sequence, sequences[user])
    for case in split.test:
        np.testing.assert_array_equal(case.history, sequences[case.user][:5])
        np.testing.assert_array_equal(case.relevant, sequences[case.user][5:8])


def test_coldstart_skips_users_without_query():
    sequences = [np.arange(n) for n in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12)]
    split = coldstart_split(sequences, 12, support_size=9, query_size=5, split_seed=0)
    test_users = np.random.default_rng(0).permutation(10)[8:]  # int(7.0) + int(1.0) = 8
    expected = sorted(u for u in test_users if len(sequences[u]) > 9)
    assert [case.user for case in split.test] == expected
    assert split.counts["test_users_skipped"] == sum(len(sequences[u]) <= 9 for u in test_users)


def test_loo_holds_out_last_two(synthetic_dataset):
    sequences = synthetic_dataset.sequences()
    split = loo_split(sequences, synthetic_dataset.n_items)
    for case, valid, sequence in zip(split.test, split.valid, sequences, strict=True):
        assert case.relevant.tolist() == [sequence[-1]]
        assert valid.relevant.tolist() == [sequence[-2]]
        np.testing.assert_array_equal(case.history, sequence[:-1])
    assert all(len(s) == len(q) - 2 for s, q in zip(split.train_sequences, sequences, strict=True))


def test_sampled_negatives_are_unseen_distinct_and_seeded(synthetic_dataset):
    sequences = synthetic_dataset.sequences()
    first = sampled_split(sequences, synthetic_dataset.n_items, 19, sample_seed=4)
    again = sampled_split(sequences, synthetic_dataset.n_items, 19, sample_seed=4)
    for case, repeat, sequence in zip(first.test, again.test, sequences, strict=True):
        assert case.candidates[0] == sequence[-1]
        negatives = case.candidates[1:]
        assert len(set(negatives.tolist())) == 19
        assert not set(negatives.tolist()) & set(sequence.tolist())
        np.testing.assert_array_equal(case.candidates, repeat.candidates)


def test_loo_refuses_short_histories_naming_the_user():
    with pytest.raises(MetarecError, match="user 42 has 2"):
        loo_split([np.arange(5), np.arange(2)], 5, user_ids=np.array([7, 42]))
