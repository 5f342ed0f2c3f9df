"""Logged interactions as RL data: ml-100k sequences read as sessions of one-item slates.

Each user's sequence after its support is a logged session: at step t the "behaviour
policy" (whatever led the user to the item; estimated by the behaviour model of
`train/rl_policy.py`) showed the item the user rated next, with reward
``click_weight + like_weight · [rating ≥ like_threshold]``. The state is the user's items
so far; its last M·K items, newest first, stand in for the last M slates (the log does not
say what else was shown). Policies score the whole catalogue here (a logged item need not
be among the adapted top N), from the same features as in the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarec.errors import MetarecError
from metarec.rl.policy import (
    ItemSide,
    LogitFn,
    SlateContext,
    build_slate,
    first_pick_log_probabilities,
    item_features,
)
from metarec.rl.reinforce import discounted_returns


@dataclass
class LoggedSessions:
    """n logged steps of U users; ``row`` indexes the users' arrays (sequences, scores)."""

    rows: np.ndarray  # (n,)
    steps: np.ndarray  # (n,) position of the logged item in its user's sequence
    items: np.ndarray  # (n,)
    rewards: np.ndarray  # (n,)
    returns: np.ndarray  # (n,) discounted return from this step to the session's end
    progress: np.ndarray  # (n,) step within the session / horizon

    def __len__(self) -> int:
        return len(self.rows)


def logged_sessions(
    sequences: list[np.ndarray],
    ratings: list[np.ndarray],
    support_size: int,
    horizon: int,
    gamma: float,
    click_weight: float,
    like_weight: float,
    like_threshold: float,
) -> LoggedSessions:
    """Sessions of at most ``horizon`` steps, each starting right after a user's support."""
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("rows", "steps", "rewards", "returns")}
    for row, (items, scores) in enumerate(zip(sequences, ratings, strict=True)):
        steps = np.arange(support_size, min(len(items), support_size + horizon))
        if len(steps) == 0:
            continue
        liked = np.nan_to_num(scores[steps], nan=0.0) >= like_threshold
        rewards = click_weight + like_weight * liked.astype(np.float64)
        returns = discounted_returns(
            torch.as_tensor(rewards)[None], torch.ones(1, len(steps), dtype=torch.float64), gamma
        )[0].numpy()
        columns["rows"].append(np.full(len(steps), row))
        columns["steps"].append(steps)
        columns["rewards"].append(rewards)
        columns["returns"].append(returns)
    if not columns["rows"]:
        raise MetarecError(f"logged sessions: no user has an item after its {support_size} first")
    rows, steps = np.concatenate(columns["rows"]), np.concatenate(columns["steps"])
    items = np.array([sequences[r][s] for r, s in zip(rows, steps, strict=True)], dtype=np.int64)
    return LoggedSessions(
        rows, steps, items, np.concatenate(columns["rewards"]), np.concatenate(columns["returns"]),
        (steps - support_size) / horizon,
    )  # fmt: skip


def logged_context(
    sessions: LoggedSessions,
    events: np.ndarray,
    sequences: list[np.ndarray],
    standard_scores: np.ndarray,
    choices: np.ndarray,
    shown_window: int,
    slate_size: int,
) -> SlateContext:
    """The policies' view at the logged ``events`` (B,) over each event's ``choices`` (B, C)
    items with their (B, C) ``standard_scores``."""
    recent = shown_window * slate_size
    rows = sessions.rows[events]
    shown = np.full((len(events), recent), -1)
    consumed = np.zeros((len(events), choices.shape[1]), dtype=bool)
    for position, (row, step) in enumerate(zip(rows, sessions.steps[events], strict=True)):
        before = sequences[row][:step]
        latest = before[::-1][:recent]
        shown[position, : len(latest)] = latest
        consumed[position] = np.isin(choices[position], before)
    return SlateContext(
        torch.as_tensor(choices),
        torch.as_tensor(standard_scores, dtype=torch.float32),
        torch.as_tensor(shown.reshape(len(events), shown_window, slate_size)),
        torch.as_tensor(consumed),
    )  # fmt: skip


def logged_log_probabilities(
    logit_fn: LogitFn, context: SlateContext, item_side: ItemSide, positions: np.ndarray
) -> torch.Tensor:
    """(B,) first-pick log-probability of each event's logged item, at ``positions`` (B,)
    among its choosable items (the item id itself when the choices are the catalogue)."""
    log_probabilities = first_pick_log_probabilities(logit_fn, context, item_side)
    return log_probabilities.gather(1, torch.as_tensor(positions)[:, None])[:, 0]


def slot_probabilities(
    logit_fn: LogitFn,
    context: SlateContext,
    item_side: ItemSide,
    slate_size: int,
    sample: bool,
) -> torch.Tensor:
    """(B, C) probability that a uniformly chosen slot of the policy's slate shows each item.

    Deterministic policies (``sample`` False): 1/K on the slate they build. Sampling
    policies: Chen et al.'s approximation P(item in slate) ≈ 1 − (1 − π)^K from the first
    pick's π, normalised to sum to one as the exact slot probabilities do (the approximation
    alone sums to less, which would shrink DR's expected term).
    """
    with torch.no_grad():
        if sample:
            first = first_pick_log_probabilities(logit_fn, context, item_side).exp()
            in_slate = 1.0 - (1.0 - first) ** slate_size
            return in_slate / in_slate.sum(1, keepdim=True)
        features = item_features(context, item_side)
        slates, _, _ = build_slate(logit_fn, features, context, item_side, slate_size, None)
        slots = torch.zeros(context.items.shape)
        slots.scatter_(1, slates, 1.0 / slate_size)
        return slots
