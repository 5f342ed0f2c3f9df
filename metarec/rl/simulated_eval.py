"""Simulated evaluation of slate policies: their discounted return on simulated test users.

Each policy runs ``episodes_per_user`` sessions per user from the same seed (greedy and a
learned deterministic policy then meet the same clicks and departures draw for draw). Per
user, the mean discounted return and session length; over users, their means with bootstrap
95% intervals, and a paired interval of learned − greedy.
"""

from __future__ import annotations

import numpy as np
import torch

from metarec.eval.metrics import bootstrap_ci
from metarec.rl.env import SlateSimulator
from metarec.rl.policy import ItemSide, LogitFn, rollout
from metarec.rl.reinforce import discounted_returns

Policies = dict[str, tuple[LogitFn, bool]]  # name -> (logits, whether it samples its picks)


def simulated_returns(
    simulator: SlateSimulator,
    logit_fn: LogitFn,
    sample: bool,
    item_side: ItemSide,
    episodes_per_user: int,
    gamma: float,
    session_seed: int,
) -> dict[str, np.ndarray]:
    """Per simulated user (U,): mean discounted return and session length over
    ``episodes_per_user`` sessions drawn from ``session_seed``."""
    n_users = len(simulator.users)
    rows = np.repeat(np.arange(n_users), episodes_per_user)
    with torch.no_grad():
        rng = np.random.default_rng(session_seed)
        run = rollout(simulator, rows, logit_fn, item_side, rng, sample)
    returns = discounted_returns(run.rewards, run.alive, gamma)[:, 0]
    per_user = {"return": returns, "length": run.alive.sum(1)}
    return {k: v.reshape(n_users, episodes_per_user).mean(1).numpy() for k, v in per_user.items()}


def compare_returns(
    simulator: SlateSimulator,
    policies: Policies,
    item_side: ItemSide,
    episodes_per_user: int,
    gamma: float,
    session_seed: int,
    bootstrap: int,
    bootstrap_seed: int,
) -> dict:
    """Each policy's mean return (``return_<name>``) with its CI over users (``return_ci``),
    mean session length, and ``learned`` against ``greedy``: their ratio and the paired CI
    of the per-user difference. Every policy's sessions are drawn from ``session_seed``."""
    returns, intervals, lengths, per_user_returns = {}, {}, {}, {}
    for name, (logit_fn, sample) in policies.items():
        per_user = simulated_returns(
            simulator, logit_fn, sample, item_side, episodes_per_user, gamma, session_seed
        )
        per_user_returns[name] = per_user["return"]
        returns[name] = float(per_user["return"].mean())
        intervals[name] = list(bootstrap_ci(per_user["return"], bootstrap, seed=bootstrap_seed))
        lengths[name] = float(per_user["length"].mean())
    results: dict = {f"return_{name}": value for name, value in returns.items()}
    results["return_ci"] = intervals
    results["session_length"] = lengths
    results["learned_vs_greedy"] = (
        returns["learned"] / returns["greedy"] if returns["greedy"] != 0 else float("nan")
    )
    results["learned_minus_greedy_ci"] = list(bootstrap_ci(
        per_user_returns["learned"] - per_user_returns["greedy"], bootstrap, seed=bootstrap_seed,
    ))  # fmt: skip
    return results
