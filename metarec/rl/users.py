"""The users of the RL recipe: the two sides of a coldstart split, as data, as simulated
users and as logged sessions.

A base run's coldstart split (`metarec.data.splits`) gives the **meta-train** users, whose
real histories fit the simulator and train the policies, and the **test** users with at
least one item after their support, on whom the policies are evaluated. Each side becomes a
`Users` (indices, histories, ratings and the base model's adapted scores); from it come the
simulated users of `metarec.rl.env` and the logged sessions of `metarec.rl.logs`, which
`LogView` shows to the policies as they would see them.

The adapted scores are kept as their two factors, each user's adapted state and the item
vectors (an item's score is their dot product): a few users' catalogue scores are computed
when needed, the (U, n_items) matrix never is (140k users × 27k items would be 15 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarec.data.dataset import Dataset
from metarec.data.splits import Split
from metarec.errors import MetarecError
from metarec.rl.env import SimulatedUsers, SimulatorConfig, best_unseen, simulated_users
from metarec.rl.logs import LoggedSessions, logged_context, logged_sessions
from metarec.rl.policy import SlateContext, standardise_scores
from metarec.rl.response import ResponseModel

SIDES = ("train", "test")


def split_sides(split: Split) -> dict[str, np.ndarray]:
    """Sorted user indices: ``train`` the meta-train users, ``test`` the test users with at
    least one item after their support (those the split evaluates)."""
    if split.protocol != "coldstart":
        raise MetarecError(f"the RL recipe needs a coldstart split, not {split.protocol}")
    return {
        "train": split.train_users.astype(int),
        "test": np.array([case.user for case in split.test], dtype=int),
    }


@dataclass
class AdaptedScores:
    """U users' adapted catalogue scores as factors: score(u, i) = states[u] · item_vectors[i]."""

    states: np.ndarray  # (U, d) after adapting to each user's support
    item_vectors: np.ndarray  # (n_items, d)

    @property
    def n_items(self) -> int:
        return len(self.item_vectors)

    def rows(self, users: np.ndarray) -> np.ndarray:
        """(B, n_items) scores of the user rows ``users`` (B,)."""
        # torch's product, as the model scores: a float32 CPU run's own scores, where numpy's
        # would differ in the last bits
        states, vectors = torch.as_tensor(self.states[users]), torch.as_tensor(self.item_vectors)
        return (states @ vectors.T).numpy()


@dataclass
class Users:
    """One side of the split as the recipe needs it."""

    ids: np.ndarray  # (U,) user indices of the dataset
    sequences: list[np.ndarray]
    ratings: list[np.ndarray]
    adapted: AdaptedScores  # after adapting to the support


def users_of(dataset: Dataset, ids: np.ndarray, adapted: AdaptedScores) -> Users:
    """The users ``ids`` (U,) of ``dataset`` with their ``adapted`` scores."""
    sequences, ratings = dataset.sequences(), dataset.rating_sequences()
    return Users(ids, [sequences[u] for u in ids], [ratings[u] for u in ids], adapted)


def simulated(
    users: Users, response: ResponseModel, support_size: int, candidates: int
) -> SimulatedUsers:
    """``users`` as simulated users: their support, their whole history as their taste, and
    the adapted model's top ``candidates`` unseen items."""
    supports = [s[:support_size] for s in users.sequences]
    items, scores = best_unseen(users.adapted.rows, supports, users.adapted.n_items, candidates)
    return simulated_users(response, supports, users.sequences, items, scores)


def sessions_of(
    users: Users,
    support_size: int,
    simulator: SimulatorConfig,
    gamma: float,
    like_threshold: float,
) -> LoggedSessions:
    """``users``' logged sessions: the first ``simulator.horizon`` items after their support,
    rewarded as the simulator rewards a click (and a like: rated at least ``like_threshold``)."""
    return logged_sessions(
        users.sequences, users.ratings, support_size, simulator.horizon, gamma,
        simulator.click_weight, simulator.like_weight, like_threshold,
    )  # fmt: skip


@dataclass
class LogView:
    """Logged sessions with the catalogue-wide inputs every policy reads at them."""

    sessions: LoggedSessions
    users: Users
    simulated: SimulatedUsers
    shown_window: int
    slate_size: int

    def context(self, events: np.ndarray, over_candidates: bool) -> SlateContext:
        """The view at ``events``: over each user's N candidates, or over the catalogue
        (its users' catalogue scores computed here, for these events only)."""
        rows = self.sessions.rows[events]
        candidate_scores = self.simulated.scores[rows]
        if over_candidates:
            choices, values = self.simulated.candidates[rows], candidate_scores
        else:
            values = self.users.adapted.rows(rows)
            choices = np.tile(np.arange(values.shape[1]), (len(rows), 1))
        return logged_context(
            self.sessions, events, self.users.sequences,
            standardise_scores(values, candidate_scores), choices,
            self.shown_window, self.slate_size,
        )  # fmt: skip
