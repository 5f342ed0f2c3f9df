"""A slate recommendation simulator: cold users shown K of the adapted model's top N items.

An episode is one user. At reset the user brings a support history (what the meta-learned
model adapted on) and N candidates: the adapted model's top N unseen items with its scores.
Each step the policy shows a slate of K candidates; the response model
(``metarec/rl/response.py``) decides clicks and likes; the reward is

    r = w_click · clicks + w_like · likes + w_diversity · (1 − mean pairwise genre Jaccard)

Boredom makes long-term reward differ from greedy reward: each genre's exposure decays by
``boredom_decay`` per step and grows by the share of the slate in that genre; after the
step the user leaves with probability

    leave_base + leave_slope · max(0, max_genre exposure − boredom_free)   (clipped to 1)

so slates that keep repeating a genre end sessions early. Clicked items are consumed (never
clicked again). Episodes end when the user leaves or after ``horizon`` steps.

``SlateSimulator`` runs B episodes at once with numpy (training and evaluation use it);
``SlateEnv`` is the same simulator as a ``gymnasium.Env`` for one episode at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import numpy as np
from gymnasium import spaces

from metarec.errors import ConfigError
from metarec.eval.ranking import top_k_indices
from metarec.rl.response import ResponseModel

SCORE_BLOCK_FLOATS = 1 << 24  # adapted scores computed at once (64 MB of float32)


@dataclass
class SimulatorConfig:
    candidates: int = 50  # N: the adapted model's top-N unseen items per user
    slate_size: int = 5  # K
    horizon: int = 20
    boredom_decay: float = 0.7
    boredom_free: float = 1.0  # exposure a genre may reach before the user starts leaving
    leave_base: float = 0.05
    leave_slope: float = 0.3
    click_weight: float = 1.0
    like_weight: float = 1.0
    diversity_weight: float = 0.1
    history_window: int = 20  # consumed items in an observation
    shown_window: int = 4  # past slates in an observation

    def __post_init__(self) -> None:
        if not 1 <= self.slate_size <= self.candidates:
            raise ConfigError(
                f"simulator: need 1 <= slate_size ({self.slate_size}) <= candidates "
                f"({self.candidates})"
            )
        for name in ("horizon", "shown_window", "history_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"simulator.{name} {getattr(self, name)}: expected >= 1")
        for name in ("leave_base", "leave_slope", "boredom_free"):
            if getattr(self, name) < 0:
                raise ConfigError(f"simulator.{name} {getattr(self, name)}: expected >= 0")
        if not 0.0 <= self.boredom_decay < 1.0:
            raise ConfigError(f"simulator.boredom_decay {self.boredom_decay}: expected [0, 1)")


@dataclass
class SimulatedUsers:
    """U users' fixed episode data; candidate rows index the catalogue."""

    supports: list[np.ndarray]  # what the adapted model saw, item ids
    candidates: np.ndarray  # (U, N) item ids, best adapted score first
    scores: np.ndarray  # (U, N) the adapted model's scores of them
    click_probabilities: np.ndarray  # (U, N)
    like_probabilities: np.ndarray  # (U, N)

    def __len__(self) -> int:
        return len(self.supports)


def top_unseen(scores: np.ndarray, seen: list[np.ndarray], n: int) -> np.ndarray:
    """(B, n) item ids of each row's ``n`` best (B, n_items) ``scores`` outside its ``seen``
    items, best first; ties go to the lower id."""
    allowed = scores.astype(np.float64, copy=True)
    for row, items in enumerate(seen):
        allowed[row, items] = -np.inf
    return top_k_indices(allowed, n)


def best_unseen(
    score_rows: Callable[[np.ndarray], np.ndarray],
    seen: list[np.ndarray],
    n_items: int,
    n: int,
    block_floats: int = SCORE_BLOCK_FLOATS,
) -> tuple[np.ndarray, np.ndarray]:
    """`top_unseen` for U users, and the (U, n) scores of those items. ``score_rows`` gives
    the (B, n_items) scores of user rows (B,); it is asked for about ``block_floats`` scores
    at a time, so the (U, n_items) scores are never held at once."""
    block = max(1, block_floats // max(1, n_items))
    candidates, scores = [], []
    for start in range(0, len(seen), block):
        rows = np.arange(start, min(len(seen), start + block))
        values = score_rows(rows)
        best = top_unseen(values, seen[start : start + block], n)
        candidates.append(best)
        scores.append(np.take_along_axis(values, best, axis=1))
    return np.concatenate(candidates), np.concatenate(scores)


def simulated_users(
    response: ResponseModel,
    supports: list[np.ndarray],
    profiles: list[np.ndarray],
    candidates: np.ndarray,
    scores: np.ndarray,
) -> SimulatedUsers:
    """Users whose tastes are their whole ``profiles`` and whose (U, N) ``candidates`` and
    their (U, N) ``scores`` come from a model that saw only their ``supports``."""
    clicks = np.stack(
        [response.click_probabilities(p, c) for p, c in zip(profiles, candidates, strict=True)]
    )
    return SimulatedUsers(
        supports=supports,
        candidates=candidates,
        scores=scores.astype(np.float32),
        click_probabilities=clicks,
        like_probabilities=response.like_rates[candidates],
    )


@dataclass
class StepOutcome:
    rewards: np.ndarray  # (B,)
    clicks: np.ndarray  # (B, K) bool
    likes: np.ndarray  # (B, K) bool
    left: np.ndarray  # (B,) bool: the user left after this step


def genre_diversity(slate_genres: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """(B,) 1 − mean pairwise Jaccard similarity of the genre sets of each slate's shown
    items; ``slate_genres`` (B, K, G) 0/1, ``shown`` (B, K) bool. Fewer than two items: 0."""
    genres = slate_genres * shown[..., None]
    intersection = genres @ genres.transpose(0, 2, 1)
    sizes = genres.sum(-1)
    union = sizes[:, :, None] + sizes[:, None, :] - intersection
    jaccard = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    pairs = shown[:, :, None] & shown[:, None, :] & ~np.eye(shown.shape[1], dtype=bool)
    n_pairs = pairs.sum((1, 2))
    mean = np.divide((jaccard * pairs).sum((1, 2)), n_pairs, out=np.zeros(len(shown)),
                     where=n_pairs > 0)  # fmt: skip
    return np.where(n_pairs > 0, 1.0 - mean, 0.0)


def first_occurrences(slates: np.ndarray) -> np.ndarray:
    """(B, K) bool: True where the slot's candidate did not appear earlier in its slate."""
    earlier = (slates[:, :, None] == slates[:, None, :]) & np.tri(slates.shape[1], k=-1, dtype=bool)
    return ~earlier.any(-1)


class SlateSimulator:
    """B simulated sessions stepped together; every random draw comes from ``rng``."""

    def __init__(
        self, users: SimulatedUsers, response: ResponseModel, config: SimulatorConfig
    ) -> None:
        if users.candidates.shape[1] != config.candidates:
            raise ConfigError(
                f"simulator: users carry {users.candidates.shape[1]} candidates, "
                f"config says {config.candidates}"
            )
        self.users, self.response, self.config = users, response, config

    def reset(self, rows: np.ndarray) -> None:
        """Start one session per user row in ``rows`` (B,)."""
        batch, n_genres = len(rows), self.response.genres.shape[1]
        self.rows = np.asarray(rows)
        self.consumed = np.zeros((batch, self.config.candidates), dtype=bool)
        self.exposure = np.zeros((batch, n_genres))
        self.shown = np.full((batch, self.config.shown_window, self.config.slate_size), -1)
        self.clicked: list[list[int]] = [[] for _ in range(batch)]
        self.step_index = 0

    @property
    def candidate_items(self) -> np.ndarray:
        return self.users.candidates[self.rows]

    def shown_items(self) -> np.ndarray:
        """(B, M, K) item ids of the last M slates, newest first; -1 where none was shown."""
        sessions = np.arange(len(self.rows))[:, None, None]
        items = self.candidate_items[sessions, np.maximum(self.shown, 0)]
        return np.where(self.shown >= 0, items, -1)

    def step(self, slates: np.ndarray, rng: np.random.Generator) -> StepOutcome:
        """Show (B, K) candidate positions; repeated positions in a slate are shown once."""
        config, rows = self.config, self.rows[:, None]
        sessions = np.broadcast_to(np.arange(len(slates))[:, None], slates.shape)
        shown = first_occurrences(slates)
        click_draws, like_draws, leave_draws = (
            rng.random(slates.shape), rng.random(slates.shape), rng.random(len(slates))
        )  # fmt: skip
        already = np.take_along_axis(self.consumed, slates, axis=1)
        clicks = shown & ~already & (click_draws < self.users.click_probabilities[rows, slates])
        likes = clicks & (like_draws < self.users.like_probabilities[rows, slates])
        slate_genres = self.response.genres[self.users.candidates[rows, slates]]
        rewards = (
            config.click_weight * clicks.sum(1)
            + config.like_weight * likes.sum(1)
            + config.diversity_weight * genre_diversity(slate_genres, shown)
        )
        # .at: a repeated position must not overwrite its own click with a False
        np.logical_or.at(self.consumed, (sessions, slates), clicks)
        clicked_items = self.candidate_items[sessions, slates]
        for session, (items, clicked) in enumerate(zip(clicked_items, clicks, strict=True)):
            self.clicked[session].extend(items[clicked].tolist())
        self.exposure = (
            config.boredom_decay * self.exposure
            + (slate_genres * shown[..., None]).sum(1) / config.slate_size
        )
        boredom = self.exposure.max(1) if self.exposure.shape[1] else np.zeros(len(slates))
        leave = np.clip(
            config.leave_base + config.leave_slope * np.maximum(0.0, boredom - config.boredom_free),
            0.0, 1.0,
        )  # fmt: skip
        self.shown = np.concatenate([np.where(shown, slates, -1)[:, None], self.shown[:, :-1]], 1)
        self.step_index += 1
        return StepOutcome(rewards, clicks, likes, leave_draws < leave)


class SlateEnv(gymnasium.Env):
    """One simulated session at a time through the Gymnasium API.

    Observation (a dict): ``history`` the user's last ``history_window`` consumed item ids
    (support then clicks, ``n_items`` pads), ``shown`` the last ``shown_window`` slates' item
    ids (newest first, ``n_items`` pads), ``candidates`` the N item ids, ``scores`` their
    adapted scores, ``consumed`` which candidates were clicked. Action: K candidate
    positions. ``reset(options={"user": row})`` picks the user; otherwise one is drawn.
    """

    metadata = {"render_modes": []}

    def __init__(
        self, users: SimulatedUsers, response: ResponseModel, config: SimulatorConfig
    ) -> None:
        self.simulator = SlateSimulator(users, response, config)
        self.config = config
        self.n_items = len(response.like_rates)
        pad, finite = self.n_items + 1, np.finfo(np.float32)
        self.observation_space = spaces.Dict(
            {
                "history": spaces.MultiDiscrete([pad] * config.history_window),
                "shown": spaces.MultiDiscrete([pad] * (config.shown_window * config.slate_size)),
                "candidates": spaces.MultiDiscrete([pad] * config.candidates),
                "scores": spaces.Box(finite.min, finite.max, (config.candidates,), np.float32),
                "consumed": spaces.MultiBinary(config.candidates),
            }
        )
        self.action_space = spaces.MultiDiscrete([config.candidates] * config.slate_size)

    def _observation(self) -> dict:
        simulator, config = self.simulator, self.config
        row = simulator.rows[0]
        consumed_items = np.r_[self.simulator.users.supports[row], simulator.clicked[0]]
        history = np.full(config.history_window, self.n_items, dtype=np.int64)
        recent = consumed_items[-config.history_window :].astype(np.int64)
        history[len(history) - len(recent) :] = recent
        shown = simulator.shown_items()[0].reshape(-1)
        return {
            "history": history,
            "shown": np.where(shown >= 0, shown, self.n_items).astype(np.int64),
            "candidates": simulator.users.candidates[row].astype(np.int64),
            "scores": simulator.users.scores[row].astype(np.float32),
            "consumed": simulator.consumed[0].astype(np.int8),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        n_users = len(self.simulator.users)
        if options and "user" in options:
            row = int(options["user"])
            if not 0 <= row < n_users:
                raise ConfigError(f"reset: user row {row} outside 0..{n_users - 1}")
        else:
            row = int(self.np_random.integers(n_users))
        self.simulator.reset(np.array([row]))
        return self._observation(), {"user_row": row}

    def step(self, action):
        if not self.action_space.contains(np.asarray(action, dtype=np.int64)):
            raise ValueError(
                f"action {action!r}: expected {self.config.slate_size} candidate positions "
                f"in 0..{self.config.candidates - 1}"
            )
        slate = np.asarray(action, dtype=np.int64).reshape(1, -1)
        outcome = self.simulator.step(slate, self.np_random)
        terminated = bool(outcome.left[0])
        truncated = not terminated and self.simulator.step_index >= self.config.horizon
        info = {"clicks": int(outcome.clicks.sum()), "likes": int(outcome.likes.sum())}
        return self._observation(), float(outcome.rewards[0]), terminated, truncated, info
