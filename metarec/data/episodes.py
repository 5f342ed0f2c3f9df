"""Meta-training episodes: each user's history cut the way a cold user arrives.

A cold test user brings its first K interactions (the support) and is judged on the next
Q (the query). Training episodes mirror that from the start of each training user's
history, with K drawn per episode from ``support_sizes`` so one initialisation serves
several support sizes. Batches are padded tensors ready for the user model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EpisodeBatch:
    """U episodes as tensors.

    ``support``: (U, K_max) right-padded item ids (padding repeats id 0, masked by length);
    ``support_lengths``: (U,); ``query``: (U, Q_max) item ids, -1 = padding.
    """

    support: torch.Tensor
    support_lengths: torch.Tensor
    query: torch.Tensor

    def support_excluded(self, n_items: int) -> torch.Tensor:
        """(U, N) bool: the support items, which are never ranked.

        Built on the support's device with a scatter (padding goes to a spare column N,
        dropped), so no step waits on the device for a data-dependent shape.
        """
        device = self.support.device
        positions = torch.arange(self.support.shape[1], device=device)
        real = positions[None, :] < self.support_lengths[:, None]
        columns = torch.where(real, self.support, n_items)
        excluded = torch.zeros(len(self.support), n_items + 1, dtype=torch.bool, device=device)
        excluded.scatter_(1, columns, True)
        return excluded[:, :n_items]


def collate(
    supports: list[np.ndarray],
    queries: list[np.ndarray],
    device: torch.device | str | None = None,
) -> EpisodeBatch:
    """Pad per-user supports (K_u,) and queries (Q_u,) into an EpisodeBatch on ``device``
    (default: the CPU)."""
    width = max(len(s) for s in supports)
    query_width = max(1, max(len(q) for q in queries))
    support = np.zeros((len(supports), width), dtype=np.int64)
    query = np.full((len(queries), query_width), -1, dtype=np.int64)
    for row, (items, relevant) in enumerate(zip(supports, queries, strict=True)):
        support[row, : len(items)] = items
        query[row, : len(relevant)] = relevant
    lengths = np.array([len(s) for s in supports], dtype=np.int64)
    return EpisodeBatch(*(torch.from_numpy(part).to(device) for part in (support, lengths, query)))


def sample_episodes(
    sequences: list[np.ndarray],
    support_sizes: list[int],
    query_size: int,
    rng: np.random.Generator,
    random_start: float = 0.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (support, query) episode per sequence long enough for a query, in shuffled order.

    Support = K items (K drawn from ``support_sizes``, capped so at least one query item
    remains), query = the next ``query_size`` items. The support starts at the first item,
    or, for a ``random_start`` fraction of the episodes, at a uniformly drawn position that
    leaves a whole query after it (history augmentation: later stretches of a long history
    become new users' episodes).
    """
    episodes = []
    for index in rng.permutation(len(sequences)):
        sequence = sequences[index]
        size = min(int(rng.choice(support_sizes)), len(sequence) - 1)
        if size < 2:
            continue
        start = 0
        if random_start > 0 and rng.random() < random_start:
            start = int(rng.integers(0, max(1, len(sequence) - size - query_size + 1)))
        end = start + size
        episodes.append((sequence[start:end], sequence[end : end + query_size]))
    return episodes


def history_windows(
    sequences: list[np.ndarray], window: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive windows of at most ``window`` items covering every sequence, shuffled.

    For next-item training at every position: each window is a "support" of its own (its
    query is empty). A last window shorter than 2 items has no target and is dropped.
    """
    windows = [
        sequence[start : start + window]
        for sequence in sequences
        for start in range(0, len(sequence), window)
        if len(sequence) - start >= 2
    ]
    empty = np.zeros(0, dtype=np.int64)
    return [(windows[index], empty) for index in rng.permutation(len(windows))]
