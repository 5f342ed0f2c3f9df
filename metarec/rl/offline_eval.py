"""Off-policy evaluation of slate policies on logged sessions (users' real histories).

The estimand is narrow: the reward of one slot of a policy's slate, were the item shown
consumed as logged items are (each logged event carries one consumed item). The behaviour
policy β is a first-pick softmax over the catalogue; a policy's probability of a logged item
is its slot probability among the user's candidates (`metarec.rl.logs.slot_probabilities`).
IPS, SNIPS and DR (`metarec.rl.ope`) with intervals that resample users, not events.
"""

from __future__ import annotations

import numpy as np
import torch

from metarec.rl import ope
from metarec.rl.logs import logged_log_probabilities, slot_probabilities
from metarec.rl.policy import ItemSide, LogitFn
from metarec.rl.response import ResponseModel
from metarec.rl.users import LogView


def behaviour_probabilities(
    logs: LogView, behaviour: LogitFn, item_side: ItemSide, chunk_size: int
) -> np.ndarray:
    """(n,) β's probability of each logged item among the catalogue, computed in chunks of
    about ``chunk_size`` events (catalogue-wide features take (B, n_items, G) floats)."""
    events = np.arange(len(logs.sessions))
    chunks = np.array_split(events, max(1, len(events) // chunk_size))
    with torch.no_grad():
        return np.concatenate([
            logged_log_probabilities(
                behaviour, logs.context(chunk, over_candidates=False),
                item_side, logs.sessions.items[chunk],
            ).double().exp().numpy()
            for chunk in chunks
        ])  # fmt: skip


def off_policy_estimates(
    logs: LogView,
    behaviour: LogitFn,
    policies: dict[str, tuple[LogitFn, bool]],
    response: ResponseModel,
    item_side: ItemSide,
    click_weight: float,
    like_weight: float,
    chunk_size: int,
    clip: float | None,
    bootstrap: int,
    seed: int,
) -> dict:
    """IPS / SNIPS / DR value estimates of each of ``policies`` (name -> (logits, whether it
    samples)) on the logged sessions, against ``behaviour``. DR's reward model is
    ``click_weight + like_weight · like rate`` of the item."""
    events = np.arange(len(logs.sessions))
    behaviour_probability = behaviour_probabilities(logs, behaviour, item_side, chunk_size)
    context = logs.context(events, over_candidates=True)
    candidate_items = context.items.numpy()
    hits = candidate_items == logs.sessions.items[:, None]
    like_reward = click_weight + like_weight * response.like_rates
    results = {}
    for name, (logit_fn, sample) in policies.items():
        slots = slot_probabilities(logit_fn, context, item_side, logs.slate_size, sample).numpy()
        data = ope.LoggedData(
            rewards=logs.sessions.rewards,
            behaviour=behaviour_probability,
            target=(slots * hits).sum(1),
            predicted=like_reward[logs.sessions.items],
            expected_predicted=(slots * like_reward[candidate_items]).sum(1),
        )
        results[name] = {"events_with_weight": int((data.target > 0).sum())}
        for estimator in ope.ESTIMATORS:
            value, interval = ope.estimate(
                data, estimator, clip, bootstrap, seed, groups=logs.sessions.rows
            )
            results[name][estimator] = {"value": value, "ci": list(interval)}
    return {"events": len(events), "policies": results}
