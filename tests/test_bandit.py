"""Replay evaluation: unbiased for a known policy on a synthetic uniform log; policies learn."""

import json

import numpy as np
import pytest

from metarec.cli import main
from metarec.eval.metrics import bootstrap_ci
from metarec.rl.bandit import LinearPolicy, LoggedEvent, replay

K = 4


def synthetic_log(n_events: int, seed: int) -> tuple[list[LoggedEvent], np.ndarray]:
    """Arms with features (1, x, z); click probability 0.1 + 0.6 * (x > 0.5): the model
    score column x is informative. Returns the log and every event's click probabilities."""
    rng = np.random.default_rng(seed)
    events, probabilities = [], []
    for _ in range(n_events):
        x = rng.random(K)
        features = np.column_stack([np.ones(K), x, rng.random(K)])
        p = 0.1 + 0.6 * (x > 0.5)
        shown = int(rng.integers(K))
        events.append(LoggedEvent(features, shown, float(rng.random() < p[shown])))
        probabilities.append(p)
    return events, np.array(probabilities)


def test_replay_is_unbiased_for_the_greedy_policy():
    estimates, truths = [], []
    for seed in range(30):
        events, probabilities = synthetic_log(2000, seed)
        rewards = replay(LinearPolicy("greedy", 3, 1.0, 0.0, seed), events)
        estimates.append(rewards.mean())
        chosen = [
            p[np.argmax(e.features[:, 1])] for e, p in zip(events, probabilities, strict=True)
        ]
        truths.append(np.mean(chosen))
    low, high = bootstrap_ci(np.array(estimates) - np.array(truths), 2000, seed=0)
    assert low < 0 < high  # the mean error's 95% CI covers 0
    assert abs(np.mean(estimates) - np.mean(truths)) < 0.01


def test_about_one_event_in_k_is_counted_and_learning_policies_beat_random():
    events, _ = synthetic_log(4000, seed=1)
    counted = replay(LinearPolicy("greedy", 3, 1.0, 0.0, 0), events)
    assert len(counted) == pytest.approx(len(events) / K, rel=0.1)
    random_ctr = np.mean([e.reward for e in events])  # the logging policy's own CTR
    for kind in ("epsilon-greedy", "linucb", "thompson"):
        learned = replay(LinearPolicy(kind, 3, 0.5, 0.1, 0), events)
        assert learned.mean() > random_ctr + 0.1, kind


def test_bandit_command_reports_every_policy(trained_run, tmp_path):
    folder, _, data_options = trained_run
    output = tmp_path / "bandit.json"
    status = main(["bandit", "--checkpoint", str(folder / "run"), *data_options, "--support-size",
                   "5", "--rounds", "10", "--output", str(output), "--plot",
                   str(tmp_path / "curves.png")])  # fmt: skip
    assert status == 0
    results = json.loads(output.read_text())
    assert set(results["policies"]) == {"greedy", "epsilon-greedy", "linucb", "thompson"}
    assert results["events"] == 10 * results["users"]
    assert results["policies"]["greedy"]["vs_greedy"] == 1.0
    assert (tmp_path / "curves.png").stat().st_size > 10_000
