"""The RL pieces: simulator, response model, REINFORCE math, and the recipe end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from metarec.cli import main
from metarec.rl.env import (
    SimulatorConfig,
    SlateEnv,
    SlateSimulator,
    genre_diversity,
    simulated_users,
)
from metarec.rl.logs import logged_sessions
from metarec.rl.reinforce import (
    discounted_returns,
    off_policy_loss,
    on_policy_loss,
    topk_correction,
)
from metarec.rl.response import (
    ResponseFitConfig,
    ResponseModel,
    calibration_examples,
    co_occurrences,
    fit_logistic,
    fit_response_model,
    item_genres,
    item_similarities,
)

GENRES = ["Drama", "Comedy", "Action"]


def toy_response(n_items: int = 12, seed: int = 0) -> ResponseModel:
    """Items cycle through three genres; similarities random but symmetric."""
    rng = np.random.default_rng(seed)
    similarities = rng.random((n_items, n_items)).astype(np.float32)
    similarities = (similarities + similarities.T) / 2
    np.fill_diagonal(similarities, 0.0)
    genres = np.zeros((n_items, len(GENRES)), dtype=np.float32)
    genres[np.arange(n_items), np.arange(n_items) % len(GENRES)] = 1.0
    return ResponseModel(
        similarities, np.array([4.0, 0.0, -1.0]), rng.random(n_items), np.arange(n_items) + 1,
        genres, GENRES, ResponseFitConfig(),
    )  # fmt: skip


def toy_users(response: ResponseModel, config: SimulatorConfig, n_users: int = 4):
    rng = np.random.default_rng(1)
    n_items = len(response.like_rates)
    supports = [rng.choice(n_items, 3, replace=False) for _ in range(n_users)]
    profiles = [np.r_[s, rng.choice(n_items, 2, replace=False)] for s in supports]
    return simulated_users(
        response, supports, profiles, rng.random((n_users, n_items)), config.candidates
    )


@pytest.fixture
def toy_env():
    config = SimulatorConfig(candidates=6, slate_size=2, horizon=5, history_window=4)
    response = toy_response()
    return SlateEnv(toy_users(response, config), response, config)


def test_env_passes_gymnasium_checker(toy_env):
    check_env(toy_env, skip_render_check=True)


def play(env: SlateEnv, seed: int, actions: list[list[int]]) -> list:
    observation, _ = env.reset(seed=seed)
    trace = [observation]
    for action in actions:
        observation, reward, terminated, truncated, _ = env.step(np.array(action))
        trace.append((observation, reward, terminated, truncated))
        if terminated or truncated:
            break
    return trace


def same(first, second) -> bool:
    return json.dumps(first, default=lambda a: a.tolist()) == json.dumps(
        second, default=lambda a: a.tolist()
    )


def test_env_refuses_an_action_outside_its_space(toy_env):
    toy_env.reset(seed=0)
    with pytest.raises(ValueError, match="candidate positions in 0..5"):
        toy_env.step(np.array([0, -1]))


def test_env_is_deterministic_under_a_seed(toy_env):
    actions = [[0, 1], [2, 3], [0, 4], [5, 5], [1, 2]]
    runs = [play(toy_env, seed, actions) for seed in (7, 7, 8, 9, 10)]
    assert same(runs[0], runs[1])
    assert not all(same(runs[0], other) for other in runs[2:])


def test_gym_env_and_batched_simulator_agree(toy_env):
    """The Env is the batched simulator with B = 1: same seed, same trajectory."""
    actions = np.array([[0, 1], [2, 3], [0, 4], [5, 5], [1, 2]])
    toy_env.reset(seed=3, options={"user": 2})
    env_rewards = [toy_env.step(a)[1] for a in actions]
    simulator = SlateSimulator(toy_env.simulator.users, toy_env.simulator.response, toy_env.config)
    simulator.reset(np.array([2]))
    rng = np.random.default_rng(3)
    batch_rewards = [simulator.step(a[None], rng).rewards[0] for a in actions]
    np.testing.assert_allclose(env_rewards, batch_rewards)


def test_boredom_raises_leaving_only_for_repeated_genres():
    """Exposure follows its recursion; a one-genre slate stream crosses the free level at
    step 2 and (slope 100) every session ends there; a varied stream never does."""
    config = SimulatorConfig(
        candidates=6, slate_size=3, horizon=4, boredom_decay=0.5, boredom_free=1.2,
        leave_base=0.0, leave_slope=100.0,
    )  # fmt: skip
    response = toy_response()
    users = toy_users(response, config)
    genre_of = response.genres.argmax(1)
    simulator = SlateSimulator(users, response, config)
    rows = np.arange(len(users))
    rng = np.random.default_rng(0)
    one_genre, varied = [], []
    for row in rows:
        by_genre = {g: np.flatnonzero(genre_of[users.candidates[row]] == g) for g in range(3)}
        largest = max(by_genre.values(), key=len)
        one_genre.append(np.resize(largest, 3))  # repeats are shown once
        varied.append([by_genre[g][0] if len(by_genre[g]) else largest[0] for g in range(3)])
    simulator.reset(rows)
    first = simulator.step(np.array(one_genre), rng)
    expected = np.array([min(len(set(s)), 3) / 3 for s in one_genre])
    np.testing.assert_allclose(simulator.exposure.max(1), expected)
    assert not first.left.any()
    second = simulator.step(np.array(one_genre), rng)
    np.testing.assert_allclose(simulator.exposure.max(1), 1.5 * expected)
    assert (second.left == (1.5 * expected > 1.2)).all()
    simulator.reset(rows)
    assert not any(simulator.step(np.array(varied), rng).left.any() for _ in range(4))


def test_genre_diversity_against_hand_values():
    genres = np.array([[[1, 0], [1, 0], [0, 1]], [[1, 1], [1, 0], [0, 0]]], dtype=np.float32)
    shown = np.array([[True, True, True], [True, True, False]])
    # slate 0: pairs (0,1) J=1, (0,2) 0, (1,2) 0 -> 1 - 1/3; slate 1: {a,b} vs {a} J=1/2
    np.testing.assert_allclose(genre_diversity(genres, shown), [2 / 3, 0.5])


def test_repeated_positions_are_shown_once(toy_env):
    """A slate naming one candidate twice is that candidate alone: at most one click."""
    config = SimulatorConfig(candidates=6, slate_size=3, horizon=3)
    response = toy_response()
    users = toy_users(response, config)
    users.click_probabilities[:] = 1.0
    simulator = SlateSimulator(users, response, config)
    simulator.reset(np.array([0]))
    outcome = simulator.step(np.array([[2, 2, 2]]), np.random.default_rng(0))
    assert outcome.clicks.sum() == 1
    again = simulator.step(np.array([[2, 3, 3]]), np.random.default_rng(0))
    assert again.clicks[0].tolist() == [False, True, False]  # 2 was consumed


def test_cosine_similarities_against_a_direct_formula():
    sequences = [np.array([0, 1]), np.array([1, 2]), np.array([0, 1, 2])]
    matrix = np.zeros((3, 3))
    for user, items in enumerate(sequences):
        matrix[user, items] = 1
    similarities = item_similarities(co_occurrences(sequences, 3))
    for i in range(3):
        for j in range(3):
            a, b = matrix[:, i], matrix[:, j]
            want = 0.0 if i == j else a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert similarities[i, j] == pytest.approx(want, abs=1e-6)


def test_calibration_scores_each_user_as_if_left_out():
    """A user's examples use similarities and popularity computed without that user."""
    rng = np.random.default_rng(2)
    sequences = [rng.choice(15, int(rng.integers(5, 10)), replace=False) for _ in range(12)]
    config = ResponseFitConfig(negatives_per_positive=2)
    features, labels, users, items = calibration_examples(
        sequences, co_occurrences(sequences, 15), config
    )
    for user in (0, 5):
        others = [s for u, s in enumerate(sequences) if u != user]
        similarities = item_similarities(co_occurrences(others, 15))
        popularity = np.diag(co_occurrences(others, 15))
        profile = sequences[user][: int(0.8 * len(sequences[user]))]
        mine = users == user
        want = similarities[np.ix_(items[mine], profile)].mean(1)
        np.testing.assert_allclose(features[mine, 0], want, atol=1e-6)
        np.testing.assert_allclose(features[mine, 1], np.log1p(popularity[items[mine]]))
        assert labels[mine].sum() == len(sequences[user]) - len(profile)


def test_logistic_fit_recovers_known_weights():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20000, 2))
    truth = np.array([1.5, -0.7, 0.3])
    labels = rng.random(20000) < 1 / (1 + np.exp(-(features @ truth[:2] + truth[2])))
    np.testing.assert_allclose(fit_logistic(features, labels.astype(float)), truth, atol=0.08)


def test_response_model_fit_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    texts = [f"Film {i} | {GENRES[i % 3]}, {GENRES[(i + 1) % 3]}" for i in range(30)]
    sequences = [rng.choice(30, 12, replace=False) for _ in range(40)]
    ratings = [rng.integers(1, 6, 12).astype(float) for _ in range(40)]
    config = ResponseFitConfig(like_prior_weight=2.0)
    model = fit_response_model(sequences, ratings, texts, config)
    items, values = np.concatenate(sequences), np.concatenate(ratings)
    overall = (values >= 4).mean()
    item = 7
    mine = values[items == item]
    want = ((mine >= 4).sum() + 2.0 * overall) / (len(mine) + 2.0)
    assert model.like_rates[item] == pytest.approx(want)
    genres, names = item_genres(texts)
    assert names == sorted(GENRES) and genres.sum(1).tolist() == [2.0] * 30
    model.save(tmp_path / "simulator")
    loaded = ResponseModel.load(tmp_path / "simulator")
    np.testing.assert_array_equal(loaded.similarities, model.similarities)
    np.testing.assert_array_equal(loaded.calibration, model.calibration)
    profile = sequences[0]
    np.testing.assert_allclose(
        loaded.click_probabilities(profile, np.arange(30)),
        model.click_probabilities(profile, np.arange(30)),
    )


def test_discounted_returns_against_a_loop():
    rng = np.random.default_rng(0)
    rewards = torch.as_tensor(rng.random((3, 6)))
    alive = torch.tensor([[1.0] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float64)
    returns = discounted_returns(rewards, alive, 0.9)
    for b in range(3):
        for t in range(6):
            want = sum(0.9 ** (j - t) * rewards[b, j] * alive[b, j] for j in range(t, 6))
            assert returns[b, t].item() == pytest.approx(float(want * alive[b, t]))


def test_off_policy_gradient_is_chen_et_al():
    """∂loss/∂logits = −mean_i min(π/β, cap) λ_K A (e_a − π), by hand."""
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    actions = torch.tensor([0, 3, 1, 1, 2])
    behaviour = torch.tensor([0.3, 0.1, 0.5, 0.05, 0.2])
    advantages = torch.tensor([1.0, -0.5, 2.0, 0.3, -1.0])
    log_probability = torch.log_softmax(logits, -1).gather(1, actions[:, None])[:, 0]
    off_policy_loss(
        log_probability, behaviour.log(), advantages, slate_size=3, weight_cap=4.0
    ).backward()
    policy = torch.softmax(logits.detach(), -1)
    chosen = policy.gather(1, actions[:, None])[:, 0]
    scale = torch.clamp(chosen / behaviour, max=4.0) * 3 * (1 - chosen) ** 2 * advantages
    want = -(scale[:, None] * (torch.nn.functional.one_hot(actions, 4) - policy)) / 5
    torch.testing.assert_close(logits.grad, want)
    assert topk_correction(torch.tensor(0.0), 5).item() == 5.0


# A two-action MDP with one state. "exploit" pays 1 and the user then leaves with
# probability 0.8; "diversify" pays 0.5 and the user leaves with probability 0.1. Always
# taking action x is worth r_x (1 − q_x^H) / (1 − q_x), q_x = γ (1 − leave_x): the one-step
# greedy choice (exploit) is worth 1.22 at γ 0.9, H 40; diversify 2.63.
TOY_REWARD = torch.tensor([1.0, 0.5])
TOY_LEAVE = torch.tensor([0.8, 0.1])


def toy_values(gamma: float, horizon: int) -> torch.Tensor:
    stay = gamma * (1 - TOY_LEAVE)
    return TOY_REWARD * (1 - stay**horizon) / (1 - stay)


def toy_episodes(policy_logits: torch.Tensor, batch: int, horizon: int, generator):
    """(actions, log π(action), rewards, alive) each (B, H) under softmax(policy_logits)."""
    probabilities = torch.softmax(policy_logits, -1).expand(batch, horizon, 2)
    actions = torch.multinomial(probabilities.reshape(-1, 2).detach(), 1, generator=generator)
    actions = actions.reshape(batch, horizon)
    log_probability = torch.log_softmax(policy_logits, -1)[actions]
    leave = torch.rand(batch, horizon, generator=generator) < TOY_LEAVE[actions]
    left_before = torch.cumsum(leave.float(), 1) - leave.float()
    alive = (left_before == 0).float()
    return actions, log_probability, TOY_REWARD[actions] * alive, alive


def test_reinforce_finds_the_closed_form_optimum_greedy_misses():
    gamma, horizon = 0.9, 40
    values = toy_values(gamma, horizon)
    assert TOY_REWARD.argmax() == 0 and values.argmax() == 1  # greedy is suboptimal
    generator = torch.Generator().manual_seed(0)
    logits = torch.zeros(2, requires_grad=True)
    baseline = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([logits, baseline], lr=0.05)
    for _ in range(300):
        _, log_probability, rewards, alive = toy_episodes(logits, 64, horizon, generator)
        returns = discounted_returns(rewards, alive, gamma)
        loss = on_policy_loss(log_probability, returns - baseline, alive)
        loss = loss + ((baseline - returns) ** 2 * alive).sum() / alive.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert torch.softmax(logits, -1)[1] > 0.95
    _, _, rewards, alive = toy_episodes(logits.detach(), 4000, horizon, generator)
    value = discounted_returns(rewards, alive, gamma)[:, 0].mean()
    assert value == pytest.approx(values[1].item(), rel=0.05)


def test_off_policy_reinforce_learns_the_optimum_from_uniform_logs():
    """Logged by a uniform policy (β = 1/2), corrected REINFORCE with K = 1 still learns
    the long-term optimum: per-step events weighted by π/β and their logged returns."""
    gamma, horizon = 0.9, 40
    generator = torch.Generator().manual_seed(1)
    actions, _, rewards, alive = toy_episodes(torch.zeros(2), 2000, horizon, generator)
    returns = discounted_returns(rewards, alive, gamma)
    steps = alive.bool()
    logged_actions, logged_returns = actions[steps], returns[steps]
    behaviour = torch.full_like(logged_returns, 0.5)
    logits = torch.zeros(2, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    for _ in range(200):
        log_probability = torch.log_softmax(logits, -1)[logged_actions]
        advantage = logged_returns - logged_returns.mean()
        loss = off_policy_loss(log_probability, behaviour.log(), advantage, 1, weight_cap=10.0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert torch.softmax(logits, -1)[1] > 0.9


def test_logged_sessions_rewards_and_returns():
    sequences = [np.array([5, 6, 7, 8, 9]), np.array([1, 2])]
    ratings = [np.array([5.0, 3, 4, 2, np.nan]), np.array([4.0, 4])]
    sessions = logged_sessions(sequences, ratings, 2, 10, 0.5, 1.0, 2.0, 4.0)
    # user 1 has nothing after its support of 2
    assert sessions.rows.tolist() == [0, 0, 0] and sessions.items.tolist() == [7, 8, 9]
    np.testing.assert_allclose(sessions.rewards, [3.0, 1.0, 1.0])
    np.testing.assert_allclose(sessions.returns, [3 + 0.5 + 0.25, 1 + 0.5, 1.0])


def test_rl_train_then_evaluate_reproduces_the_results(trained_run, tmp_path, monkeypatch):
    """`metarec rl train` on a tiny run; `rl evaluate` from the saved files gives the same
    results; a rerun that fails midway leaves the first run's files as they were."""
    folder, data, _ = trained_run
    config = tmp_path / "rl.yaml"
    config.write_text(
        json.dumps(
            {
                "base_run": str(folder / "run"),
                "data": {
                    "dataset": "custom",
                    "interactions": str(data.interactions),
                    "items": str(data.items),
                    "cache_dir": str(data.cache_dir),
                },
                "support_size": 5,
                "simulator": {"candidates": 20, "slate_size": 3, "horizon": 6},
                "reinforce": {
                    "behaviour_epochs": 1,
                    "offline_epochs": 1,
                    "online_iterations": 5,
                    "users_per_iteration": 16,
                },
                "evaluation": {"episodes_per_user": 2, "bootstrap": 50},
            }
        )  # fmt: skip
    )
    out = tmp_path / "rl"
    assert main(["rl", "train", "--config", str(config), "--output-dir", str(out)]) == 0
    trained = json.loads((out / "results.json").read_text())
    assert set(trained) >= {"return_greedy", "return_learned", "return_softmax", "return_ci", "ope"}
    for name in ("greedy", "softmax", "learned"):
        low, high = trained["return_ci"][name]
        assert low <= trained[f"return_{name}"] <= high
        assert set(trained["ope"]["policies"][name]) >= {"ips", "snips", "dr"}
    assert (out / "policy.safetensors").is_file()
    assert (out / "simulator" / "response.json").is_file()
    output = tmp_path / "rl.json"
    assert main(["rl", "evaluate", "--checkpoint", str(out), "--output", str(output)]) == 0
    assert json.loads(output.read_text()) == trained

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("killed during on-policy training")

    monkeypatch.setattr("train.rl_policy.train_online", crash)
    with pytest.raises(RuntimeError, match="killed"):
        main(["rl", "train", "--config", str(config), "--output-dir", str(out),
              "--set", "seed=5"])  # fmt: skip
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_rl_evaluate_names_a_missing_run(tmp_path, capsys):
    assert main(["rl", "evaluate", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "config.json: missing" in capsys.readouterr().err


def test_slot_probabilities_of_greedy_and_softmax():
    """Greedy: 1/K on the top K unconsumed by score. Softmax: a distribution (sums to one)
    ordered like the scores, zero on consumed items."""
    from metarec.rl.logs import slot_probabilities
    from metarec.rl.policy import ItemSide, SlateContext, score_logits

    response = toy_response()
    item_side = ItemSide.from_counts(response.genres, response.popularity)
    scores = torch.tensor([[0.5, 2.0, -1.0, 1.5, 0.1, 3.0]])
    context = SlateContext(
        items=torch.arange(6)[None], scores=scores, shown=torch.full((1, 2, 2), -1),
        consumed=torch.tensor([[False, False, False, False, False, True]]),
    )  # fmt: skip
    greedy = slot_probabilities(score_logits(), context, item_side, 2, sample=False)
    assert greedy[0].tolist() == [0.0, 0.5, 0.0, 0.5, 0.0, 0.0]
    soft = slot_probabilities(score_logits(), context, item_side, 2, sample=True)[0]
    assert soft.sum().item() == pytest.approx(1.0) and soft[5] == 0
    assert torch.argsort(soft[:5], descending=True).tolist() == [1, 3, 0, 4, 2]
