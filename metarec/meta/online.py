"""Online updates: replay test users' interactions in time order and score each next item.

Each test user's stream starts with its first ``start`` items (adapted on, as a cold
user's support); then, for each of the next ``events`` items: the model scores the
catalogue from the history so far (seen items excluded), the rank of the item the user
actually took next is recorded (prequential ndcg@10 and hr@10), and the item joins the
history. What happens to the fast weights between events is the strategy:

- ``none``: adapted once on the first ``start`` items, then kept;
- ``full``: re-adapted from the meta-learned initialisation on the whole history, with the
  run's inner steps, after every event;
- ``incremental``: one inner step (at ``incremental_lr_scale`` × the inner lr) from the
  current fast weights on the most recent ``window`` items after every event.

Compute is counted as adaptation token-steps (history positions × inner steps, each a
forward and backward pass) and timed. All users of a batch move through time together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from metarec.data.episodes import collate
from metarec.device import model_device, to_numpy
from metarec.errors import ConfigError
from metarec.eval.metrics import metrics_at_k, relevant_ranks
from metarec.meta.personalise import adapt_batch, last_states
from metarec.meta.recommender import LLMRecommender
from metarec.models.lora import FastWeights

STRATEGIES = ("none", "full", "incremental")


@dataclass
class OnlineConfig:
    start: int = 5  # items given before the first scored event
    events: int = 15  # scored events per user (users with fewer items are skipped)
    # incremental: the step's loss covers the most recent items only, at a fraction of the
    # inner lr (both picked on ml-100k validation users: docs/benchmarks.md)
    window: int = 5
    incremental_lr_scale: float = 0.3
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.start < 2 or self.events < 1 or self.window < 2:
            raise ConfigError("online: start and window must be at least 2, events at least 1")


def _adapted(
    method: LLMRecommender,
    histories: np.ndarray,
    start: FastWeights | None,
    steps: int,
    lr_scale: float = 1.0,
) -> FastWeights:
    """Fast weights after ``steps`` support steps on (U, T) ``histories`` from ``start``
    (None: the meta-learned initialisation), the inner learning rate times ``lr_scale``."""
    batch = collate(
        list(histories), [np.empty(0, dtype=np.int64)] * len(histories), model_device(method.model)
    )
    return adapt_batch(
        method.model, batch, method.meta, method.rates, steps, start=start, lr_scale=lr_scale
    )


def _next_item_ranks(
    method: LLMRecommender, histories: np.ndarray, fast: FastWeights, targets: np.ndarray
) -> np.ndarray:
    """(U,) rank of each target among items not in its (U, T) history (the model reads
    the last ``max_len`` items)."""
    model = method.model
    recent = histories[:, -model.config.max_len :]
    batch = collate(
        list(recent), [np.empty(0, dtype=np.int64)] * len(histories), model_device(model)
    )
    with torch.no_grad():
        scores = to_numpy(model.scores(last_states(model, batch, fast)))
    excluded = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(excluded, histories, True, axis=1)
    return relevant_ranks(scores, targets[:, None], excluded)[:, 0]


def replay(
    method: LLMRecommender, streams: list[np.ndarray], strategy: str, config: OnlineConfig
) -> tuple[dict, np.ndarray]:
    """Prequential metrics of one strategy over users' (L,) streams (L >= start + events),
    and the (U, events) rank of every event."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"online strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    steps = method.inner_steps
    max_len = method.model.config.max_len
    ranks, token_steps, seconds = [], 0, 0.0  # ranks: (B, events) per batch
    with method.model.frozen_item_vectors():
        for first in range(0, len(streams), config.batch_size):
            users = np.stack(
                [
                    s[: config.start + config.events]
                    for s in streams[first : first + config.batch_size]
                ]
            )
            started = time.perf_counter()
            fast = _adapted(method, users[:, : config.start], None, steps)
            token_steps += users.shape[0] * config.start * steps
            seconds += time.perf_counter() - started
            batch_ranks = []
            for t in range(config.start, config.start + config.events):
                batch_ranks.append(_next_item_ranks(method, users[:, :t], fast, users[:, t]))
                seen = users[:, max(0, t + 1 - max_len) : t + 1]  # the event joins the history
                started = time.perf_counter()
                if strategy == "full":
                    fast = _adapted(method, seen, None, steps)
                    token_steps += seen.size * steps
                elif strategy == "incremental":
                    recent = seen[:, -config.window :]
                    fast = _adapted(method, recent, fast, 1, config.incremental_lr_scale)
                    token_steps += recent.size
                seconds += time.perf_counter() - started
            ranks.append(np.stack(batch_ranks, axis=1))
    ranks = np.concatenate(ranks)
    per_event = metrics_at_k(ranks.reshape(-1, 1), 10)
    summary = {
        "ndcg@10": float(per_event["ndcg@10"].mean()),
        "hr@10": float(per_event["hr@10"].mean()),
        "adaptation_token_steps": int(token_steps),
        "adaptation_seconds": seconds,
        "events": int(ranks.size),
        "users": len(streams),
    }
    return summary, ranks
