"""``random_start``: history augmentation of the training episodes."""

from __future__ import annotations

import numpy as np
import pytest

from metarec.data.episodes import sample_episodes
from metarec.errors import ConfigError
from metarec.trained_run import TrainConfig


def histories(shortest: int = 3, n_users: int = 60) -> list[np.ndarray]:
    """Histories of distinct items, so an episode's place in its history can be read back."""
    lengths = np.random.default_rng(4).integers(shortest, 80, n_users)
    return [np.arange(int(n)) + 1000 * user for user, n in enumerate(lengths)]


def placed(episodes: list[tuple[np.ndarray, np.ndarray]], sequences: list[np.ndarray]) -> list:
    """(history, start, support size, query size) of every episode, found by its items."""
    found = []
    for support, query in episodes:
        user = int(support[0]) // 1000
        start = int(np.flatnonzero(sequences[user] == support[0])[0])
        found.append((user, start, len(support), len(query)))
    return found


def test_without_random_start_every_support_is_a_history_prefix():
    sequences = histories()
    seeded = sample_episodes(sequences, [5, 10, 20], 10, np.random.default_rng(0))
    assert all(start == 0 for _, start, _, _ in placed(seeded, sequences))


def test_random_starts_are_contiguous_whole_and_spread():
    # long histories: a shifted start rarely lands on the first item by chance
    sequences = histories(shortest=40)
    longest = max(len(sequence) for sequence in sequences)
    starts, prefix_episodes = [], 0
    for seed in range(40):
        episodes = sample_episodes(
            sequences, [5, 10, 20], 10, np.random.default_rng(seed), random_start=0.5
        )
        for (support, query), (user, start, size, query_size) in zip(
            episodes, placed(episodes, sequences), strict=True
        ):
            history = sequences[user]
            window = history[start : start + size + query_size]
            assert np.array_equal(np.concatenate([support, query]), window)
            # a shifted support keeps a whole query after it
            if start > 0:
                assert query_size == 10
            prefix_episodes += start == 0
            if len(history) == longest and size == 5:
                starts.append(start)
    # half the episodes, and the few shifted ones whose draw lands on the first item
    share = prefix_episodes / (40 * len(sequences))
    assert 0.47 < share < 0.56
    # the shifted starts of the longest history reach its last possible start
    assert max(starts) > longest - 30 and len(set(starts)) > 10


def test_a_random_start_outside_a_fraction_is_refused():
    with pytest.raises(ConfigError, match="random_start 1.5"):
        TrainConfig(random_start=1.5)
