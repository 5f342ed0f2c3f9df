"""Slate policies over the adapted model's candidates: what they see, and how they act.

Every policy scores the choosable items from the same per-item features and fills a slate
one pick at a time (so a pick can see the genres already in the slate):

- ``score``: the adapted model's score, z-scored over the user's N candidates;
- ``popularity``: log popularity among meta-train users, standardised over the catalogue;
- ``shown_age_1..M``: for the slate shown 1..M steps ago, the largest share of it taken by
  one of the item's genres (how much showing it again repeats what was just shown);
- ``in_slate``: the same share over the items already picked for this slate.

``greedy`` ranks by ``score``; ``softmax`` samples picks from softmax(score / T); the
learned policy is a small network over all the features (REINFORCE, ``train/rl_policy.py``),
with a value network over a summary of the state as its baseline. Consumed items are not
picked while unconsumed ones remain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from metarec.rl.env import SlateSimulator

LogitFn = Callable[[torch.Tensor], torch.Tensor]  # (B, C, F) features -> (B, C) logits


@dataclass
class ItemSide:
    """Static item attributes the features read."""

    genres: torch.Tensor  # (n_items, G) 0/1
    popularity: torch.Tensor  # (n_items,) standardised log popularity

    @classmethod
    def from_counts(cls, genres: np.ndarray, popularity: np.ndarray) -> ItemSide:
        log_popularity = np.log1p(popularity.astype(np.float64))
        spread = log_popularity.std() or 1.0
        standard = (log_popularity - log_popularity.mean()) / spread
        return cls(torch.as_tensor(genres, dtype=torch.float32),
                   torch.as_tensor(standard, dtype=torch.float32))  # fmt: skip


@dataclass
class SlateContext:
    """What a policy sees at one step of B sessions, over C choosable items each."""

    items: torch.Tensor  # (B, C) item ids
    scores: torch.Tensor  # (B, C) adapted scores, z-scored over the user's candidates
    shown: torch.Tensor  # (B, M, K) item ids of the last M slates, newest first; -1 pads
    consumed: torch.Tensor  # (B, C) bool


def n_item_features(shown_window: int) -> int:
    return 3 + shown_window


def n_state_features(shown_window: int) -> int:
    return 1 + shown_window


def genre_shares(items: torch.Tensor, item_side: ItemSide) -> torch.Tensor:
    """(..., G) share of the ``items`` (..., K) (−1 pads count as absent) in each genre."""
    present = (items >= 0).float()
    genres = item_side.genres[items.clamp(min=0)] * present[..., None]
    return genres.sum(-2) / items.shape[-1]


def repeat_share(candidate_genres: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """(B, C) largest share in ``shares`` (B, G) of one of each candidate's genres (B, C, G)."""
    return (candidate_genres * shares[:, None, :]).amax(-1)


def item_features(context: SlateContext, item_side: ItemSide) -> torch.Tensor:
    """(B, C, 2 + M) features of every choosable item, before any pick (``in_slate`` comes
    from `build_slate`)."""
    candidate_genres = item_side.genres[context.items]
    shares = genre_shares(context.shown, item_side)  # (B, M, G)
    repeats = [repeat_share(candidate_genres, shares[:, age]) for age in range(shares.shape[1])]
    return torch.stack(
        [context.scores, item_side.popularity[context.items].expand_as(context.scores), *repeats],
        -1,
    )


def state_features(
    context: SlateContext, item_side: ItemSide, progress: torch.Tensor
) -> torch.Tensor:
    """(B, 1 + M) summary for the value baseline: (B,) ``progress`` through the horizon and
    the largest genre share of each recent slate (the same in logs and in the simulator)."""
    shares = genre_shares(context.shown, item_side).amax(-1)  # (B, M)
    return torch.cat([progress[:, None].float(), shares], 1)


def mlp(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 1))


class SlatePolicy(nn.Module):
    """The learned policy: a per-item scorer and a state-value baseline."""

    def __init__(self, shown_window: int, hidden: int) -> None:
        super().__init__()
        self.shown_window = shown_window
        self.scorer = mlp(n_item_features(shown_window), hidden)
        self.value = mlp(n_state_features(shown_window), hidden)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.scorer(features).squeeze(-1)


def score_logits(temperature: float = 1.0) -> LogitFn:
    """The adapted model's own policy: its z-scored score over a temperature."""
    return lambda features: features[..., 0] / temperature


def first_pick_log_probabilities(
    logit_fn: LogitFn, context: SlateContext, item_side: ItemSide
) -> torch.Tensor:
    """(B, C) log-probability of each item as the slate's first pick (consumed items: −inf)."""
    features = item_features(context, item_side)
    no_slate_yet = torch.zeros_like(features[..., :1])
    logits = logit_fn(torch.cat([features, no_slate_yet], -1))
    return torch.log_softmax(logits.masked_fill(~choosable(context.consumed), float("-inf")), -1)


def choosable(unavailable: torch.Tensor) -> torch.Tensor:
    """(B, C) the items a pick may take: the available ones, or every item of a row where
    none is available (a session that consumed all its candidates still gets a slate)."""
    exhausted = unavailable.all(1, keepdim=True)
    return ~unavailable | exhausted


def build_slate(
    logit_fn: LogitFn,
    features: torch.Tensor,
    context: SlateContext,
    item_side: ItemSide,
    slate_size: int,
    noise: np.random.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick ``slate_size`` items one at a time: (B, K) positions into the C items, (B,)
    log-probability of the slate under the sequential softmax (with gradient) and (B,)
    entropy of the first pick's distribution (without).

    ``noise`` given: each pick is sampled (Gumbel-max); None: each pick is the argmax.
    ``features`` (B, C, 2 + M) from `item_features`.
    """
    batch, choices = context.items.shape
    candidate_genres = item_side.genres[context.items]
    picked = torch.zeros(batch, choices, dtype=torch.bool)
    in_slate = torch.zeros(batch, item_side.genres.shape[1])
    positions, log_probability = [], torch.zeros(batch)
    for pick in range(slate_size):
        allowed = choosable(picked | context.consumed) & ~picked
        repeats = repeat_share(candidate_genres, in_slate / slate_size)
        logits = logit_fn(torch.cat([features, repeats[..., None]], -1))
        log_softmax = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        ranking = log_softmax.detach()
        if pick == 0:
            first_entropy = -(ranking.exp() * ranking.nan_to_num(neginf=0.0)).sum(-1)
        if noise is not None:
            gumbel = torch.as_tensor(noise.gumbel(size=(batch, choices)), dtype=ranking.dtype)
            ranking = ranking + gumbel
        choice = ranking.argmax(-1)
        log_probability = log_probability + log_softmax.gather(1, choice[:, None])[:, 0]
        picked[torch.arange(batch), choice] = True
        in_slate = in_slate + candidate_genres[torch.arange(batch), choice]
        positions.append(choice)
    return torch.stack(positions, 1), log_probability, first_entropy


def standardise_scores(scores: np.ndarray, candidate_scores: np.ndarray) -> np.ndarray:
    """(U, n) scores z-scored with each user's candidate mean and spread (U, N)."""
    spread = candidate_scores.std(1, keepdims=True)
    return (scores - candidate_scores.mean(1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def simulator_context(simulator: SlateSimulator) -> SlateContext:
    """The policies' view of the simulator's current sessions."""
    scores = simulator.users.scores[simulator.rows].astype(np.float64)
    return SlateContext(
        torch.as_tensor(simulator.candidate_items),
        torch.as_tensor(standardise_scores(scores, scores), dtype=torch.float32),
        torch.as_tensor(simulator.shown_items()), torch.as_tensor(simulator.consumed),
    )  # fmt: skip


@dataclass
class Rollout:
    rewards: torch.Tensor  # (B, T), 0 after the session ended
    alive: torch.Tensor  # (B, T) 1 while the session lasted
    log_probabilities: torch.Tensor  # (B, T) of each slate
    states: torch.Tensor  # (B, T, S) value-baseline features
    entropies: torch.Tensor  # (B, T) of the first pick's distribution (no gradient)


def rollout(
    simulator: SlateSimulator,
    rows: np.ndarray,
    logit_fn: LogitFn,
    item_side: ItemSide,
    rng: np.random.Generator,
    sample: bool,
) -> Rollout:
    """Run one session for each user row in ``rows`` (B,) to its end or the horizon."""
    config = simulator.config
    simulator.reset(rows)
    alive = torch.ones(len(rows))
    rewards, alives, log_probabilities, states, entropies = [], [], [], [], []
    for step in range(config.horizon):
        context = simulator_context(simulator)
        progress = torch.full((len(rows),), step / config.horizon)
        states.append(state_features(context, item_side, progress))
        slates, log_probability, entropy = build_slate(
            logit_fn, item_features(context, item_side), context, item_side,
            config.slate_size, rng if sample else None,
        )  # fmt: skip
        outcome = simulator.step(slates.numpy(), rng)
        rewards.append(torch.as_tensor(outcome.rewards, dtype=torch.float32) * alive)
        alives.append(alive)
        log_probabilities.append(log_probability)
        entropies.append(entropy)
        alive = alive * torch.as_tensor(~outcome.left, dtype=torch.float32)
    return Rollout(
        torch.stack(rewards, 1), torch.stack(alives, 1),
        torch.stack(log_probabilities, 1), torch.stack(states, 1), torch.stack(entropies, 1),
    )  # fmt: skip
