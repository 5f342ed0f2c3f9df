"""Off-policy estimators against hand-computed values and the true value of a known policy."""

import re

import numpy as np
import pytest

from metarec.errors import MetarecError
from metarec.rl.ope import LoggedData, doubly_robust, estimate, ips, snips

# five logged events: reward, μ(a|x), π(a|x), q̂(x, a), Σ_a π(a|x) q̂(x, a)
LOG = np.array([
    [1.0, 0.5, 0.8, 0.6, 0.7],
    [0.0, 0.25, 0.1, 0.2, 0.3],
    [1.0, 0.2, 0.6, 0.5, 0.5],
    [0.0, 0.5, 0.5, 0.4, 0.45],
    [1.0, 0.1, 0.0, 0.3, 0.2],
])  # fmt: skip


def logged() -> LoggedData:
    return LoggedData(*LOG.T)


def test_estimators_equal_hand_computed_values():
    # weights π/μ: 1.6, 0.4, 3.0, 1.0, 0.0
    assert ips(logged()) == pytest.approx((1.6 + 3.0) / 5)
    assert snips(logged()) == pytest.approx((1.6 + 3.0) / (1.6 + 0.4 + 3.0 + 1.0 + 0.0))
    dr = (0.7 + 1.6 * 0.4) + (0.3 + 0.4 * -0.2) + (0.5 + 3.0 * 0.5) + (0.45 + 1.0 * -0.4) + 0.2
    assert doubly_robust(logged()) == pytest.approx(dr / 5)
    assert ips(logged(), clip=2.0) == pytest.approx((1.6 + 2.0) / 5)


def test_doubly_robust_with_a_zero_reward_model_is_ips():
    data = logged()
    data.predicted = np.zeros(5)
    data.expected_predicted = np.zeros(5)
    assert doubly_robust(data) == pytest.approx(ips(data))


def synthetic_log(n: int, seed: int) -> tuple[LoggedData, float]:
    """Three actions, contexts x ∈ {0, 1}; uniform behaviour; a fixed target policy."""
    rng = np.random.default_rng(seed)
    click = np.array([[0.1, 0.5, 0.3], [0.6, 0.2, 0.4]])  # P(r = 1 | x, a)
    policy = np.array([[0.1, 0.8, 0.1], [0.7, 0.1, 0.2]])  # π(a | x)
    contexts = rng.integers(0, 2, n)
    actions = rng.integers(0, 3, n)
    rewards = (rng.random(n) < click[contexts, actions]).astype(float)
    truth = 0.5 * (policy * click).sum(axis=1).sum()
    data = LoggedData(rewards, np.full(n, 1 / 3), policy[contexts, actions])
    return data, truth


def test_ips_is_unbiased_for_a_known_target_policy():
    estimates = []
    for seed in range(40):
        data, truth = synthetic_log(500, seed)
        estimates.append(ips(data))
    errors = np.array(estimates) - truth
    standard_error = errors.std(ddof=1) / np.sqrt(len(errors))
    assert abs(errors.mean()) < 2.5 * standard_error
    value, (low, high) = estimate(synthetic_log(5000, 99)[0], "snips", resamples=300)
    assert low < truth < high and low < value < high


def test_bad_inputs_are_refused():
    with pytest.raises(MetarecError, match="propensities must be positive"):
        LoggedData(np.ones(2), np.array([0.5, 0.0]), np.ones(2))
    with pytest.raises(MetarecError, match="reward model"):
        doubly_robust(LoggedData(np.ones(2), np.ones(2), np.ones(2)))
    with pytest.raises(MetarecError, match="estimator 'ipw'"):
        estimate(logged(), "ipw")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": np.array([0.5, 0.5])}, "target has shape (2,)"),
        ({"rewards": np.array([1.0, np.nan, 0.0])}, "rewards holds NaN"),
        ({"target": np.array([0.5, -0.1, 0.2])}, "non-negative"),
        ({"behaviour": np.array([0.5, 0.0, 0.2])}, "positive"),
    ],
)
def test_logged_data_is_checked(change, message):
    fields = {"rewards": np.ones(3), "behaviour": np.full(3, 0.5), "target": np.full(3, 0.2)}
    with pytest.raises(MetarecError, match=re.escape(message)):
        LoggedData(**(fields | change))


def test_grouped_bootstrap():
    """Singleton groups are the event bootstrap; groups of identical events widen the
    interval (ten copies of each event are one observation, not ten)."""
    rng = np.random.default_rng(0)
    data = LoggedData(rng.random(40), np.full(40, 0.5), rng.random(40))
    assert estimate(data, "snips", seed=3) == estimate(data, "snips", seed=3, groups=np.arange(40))
    copies = np.repeat(np.arange(40), 10)
    repeated = data.subset(copies)
    _, (low, high) = estimate(repeated, "ips", seed=3)
    _, (group_low, group_high) = estimate(repeated, "ips", seed=3, groups=copies)
    assert group_high - group_low > 2 * (high - low)
