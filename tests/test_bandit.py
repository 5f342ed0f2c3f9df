"""Replay evaluation: unbiased for a known policy on a synthetic uniform log; policies learn."""

import json

import numpy as np
import pytest

from metarec.cli import main
from metarec.eval.metrics import bootstrap_ci
from metarec.rl.bandit import BanditConfig, LinearPolicy, LoggedEvent, logged_events, replay
from metarec.rl.env import best_unseen

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


def test_the_log_draws_from_pools_of_a_few_users_scores_at_a_time():
    """Pools found one user's scores at a time give the log the dense (U, N) scores give:
    per round and user, arms drawn from the user's top unseen items, one shown."""
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(6, 30)).astype(np.float32)
    histories = [rng.choice(30, 4, replace=False) for _ in range(6)]
    futures = [rng.choice(30, 6, replace=False) for _ in range(6)]
    popularity = rng.integers(0, 50, 30)
    config = BanditConfig(rounds=3, arms=3, pool=8, seed=1)
    pools, pool_scores = best_unseen(lambda rows: scores[rows], histories, 30, 8, block_floats=30)
    events = logged_events(pools, pool_scores, futures, popularity, config)
    draws = np.random.default_rng(1)
    want = []
    for _ in range(3):
        for user in range(6):
            unseen = [i for i in range(30) if i not in histories[user]]
            pool = sorted(unseen, key=lambda i: (-scores[user, i], i))[:8]
            arms = draws.choice(pool, size=3, replace=False)
            shown = int(draws.integers(3))
            standard = (scores[user, arms] - scores[user, arms].mean()) / scores[user, arms].std()
            features = np.column_stack([np.ones(3), standard, np.log1p(popularity[arms])])
            want.append((features, shown, float(arms[shown] in futures[user])))
    assert len(events) == len(want)
    for event, (features, shown, reward) in zip(events, want, strict=True):
        np.testing.assert_allclose(event.features, features, rtol=1e-6)
        assert (event.shown, event.reward) == (shown, reward)
