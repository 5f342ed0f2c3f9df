"""The RL pieces: simulator, response model, REINFORCE math, and the recipe end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from gymnasium.utils.env_checker import check_env
from safetensors.numpy import load_file, save_file

from metarec.cli import main
from metarec.errors import ConfigError, MetarecError
from metarec.rl.env import (
    SimulatorConfig,
    SlateEnv,
    SlateSimulator,
    best_unseen,
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
    check_neighbours,
    fit_logistic,
    fit_response_model,
    item_genres,
    similarities_and_examples,
)
from metarec.rl.run_files import load_scores, save_scores
from metarec.rl.users import AdaptedScores, LogView, Users, simulated

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
        sp.csr_matrix(similarities), np.array([4.0, 0.0, -1.0]), rng.random(n_items),
        np.arange(n_items) + 1, genres, GENRES, ResponseFitConfig(),
    )  # fmt: skip


def toy_users(response: ResponseModel, config: SimulatorConfig, n_users: int = 4):
    rng = np.random.default_rng(1)
    n_items = len(response.like_rates)
    supports = [rng.choice(n_items, 3, replace=False) for _ in range(n_users)]
    profiles = [np.r_[s, rng.choice(n_items, 2, replace=False)] for s in supports]
    scores = rng.random((n_users, n_items))
    candidates, candidate_scores = best_unseen(
        lambda rows: scores[rows], supports, n_items, config.candidates
    )
    return simulated_users(response, supports, profiles, candidates, candidate_scores)


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


def dense_similarities(sequences: list[np.ndarray], n_items: int, neighbours: int | None):
    """The reference: item columns' cosine from a dense 0/1 matrix, pair by pair, zero for an
    item and itself; with ``neighbours``, each row's that many largest kept (ties: lower id)."""
    matrix = np.zeros((len(sequences), n_items))
    for user, items in enumerate(sequences):
        matrix[user, items] = 1
    similarities = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            a, b = matrix[:, i], matrix[:, j]
            if i != j and a.any() and b.any():
                similarities[i, j] = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    if neighbours is not None:
        for row in similarities:
            order = sorted(range(n_items), key=lambda j: (-row[j], j))
            row[order[neighbours:]] = 0.0
    return similarities


def random_sequences(seed: int, n_users: int = 12, n_items: int = 15) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n_items, int(rng.integers(5, 10)), replace=False) for _ in range(n_users)]


@pytest.mark.parametrize("neighbours", [None, 3])
@pytest.mark.parametrize("block_floats", [1 << 24, 2 * 15, 1])  # one block; 2 rows; 1 row
def test_sparse_similarities_equal_the_dense_formula(neighbours, block_floats):
    sequences = random_sequences(3)
    config = ResponseFitConfig(neighbours=neighbours)
    similarities, *_ = similarities_and_examples(sequences, 15, config, block_floats)
    assert sp.issparse(similarities)
    want = dense_similarities(sequences, 15, neighbours)
    np.testing.assert_allclose(similarities.toarray(), want, atol=1e-6)
    if neighbours is not None:
        assert (np.diff(similarities.indptr) <= neighbours).all()


@pytest.mark.parametrize("neighbours", [None, 3])
@pytest.mark.parametrize("block_floats", [1 << 24, 2 * 15])
def test_calibration_scores_each_user_as_if_left_out(neighbours, block_floats):
    """A user's examples use similarities and popularity computed without that user; with
    ``neighbours``, only the neighbours chosen on all users count."""
    sequences = random_sequences(2)
    config = ResponseFitConfig(negatives_per_positive=2, neighbours=neighbours)
    _, features, labels, users, items = similarities_and_examples(
        sequences, 15, config, block_floats
    )
    kept = dense_similarities(sequences, 15, neighbours) != 0
    for user in (0, 5):
        others = [s for u, s in enumerate(sequences) if u != user]
        similarities = dense_similarities(others, 15, None)
        popularity = np.bincount(np.concatenate(others), minlength=15)
        profile = sequences[user][: int(0.8 * len(sequences[user]))]
        mine = users == user
        block = np.ix_(items[mine], profile)
        if neighbours is None:
            want = similarities[block].mean(1)
        else:
            want = np.where(kept[block], similarities[block], 0.0).mean(1)
        np.testing.assert_allclose(features[mine, 0], want, atol=1e-6)
        np.testing.assert_allclose(features[mine, 1], np.log1p(popularity[items[mine]]))
        assert labels[mine].sum() == len(sequences[user]) - len(profile)


def test_all_neighbours_are_refused_above_the_limit():
    check_neighbours(40, None, limit=40)
    check_neighbours(41, 10, limit=40)
    with pytest.raises(ConfigError) as refused:
        check_neighbours(41, None, limit=40)
    assert str(refused.value) == (
        "response.neighbours is null (every item a neighbour): with 41 items the simulator's "
        "similarities are a dense 41×41 matrix (0.0 GB); above 40 items set "
        "response.neighbours (e.g. 100) in the RL config"
    )
    with pytest.raises(ConfigError, match="response.neighbours 0: expected >= 1"):
        ResponseFitConfig(neighbours=0)


def test_logistic_fit_recovers_known_weights():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20000, 2))
    truth = np.array([1.5, -0.7, 0.3])
    labels = rng.random(20000) < 1 / (1 + np.exp(-(features @ truth[:2] + truth[2])))
    np.testing.assert_allclose(fit_logistic(features, labels.astype(float)), truth, atol=0.08)


@pytest.mark.parametrize("neighbours", [None, 5])
def test_response_model_fit_and_round_trip(tmp_path, neighbours):
    rng = np.random.default_rng(0)
    texts = [f"Film {i} | {GENRES[i % 3]}, {GENRES[(i + 1) % 3]}" for i in range(30)]
    sequences = [rng.choice(30, 12, replace=False) for _ in range(40)]
    ratings = [rng.integers(1, 6, 12).astype(float) for _ in range(40)]
    config = ResponseFitConfig(like_prior_weight=2.0, neighbours=neighbours)
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
    np.testing.assert_array_equal(loaded.similarities.toarray(), model.similarities.toarray())
    assert loaded.fit == config
    np.testing.assert_array_equal(loaded.calibration, model.calibration)
    profile = sequences[0]
    np.testing.assert_allclose(
        loaded.click_probabilities(profile, np.arange(30)),
        model.click_probabilities(profile, np.arange(30)),
    )
    affinity = model.affinity(profile, np.arange(30))
    np.testing.assert_allclose(
        affinity, model.similarities.toarray()[:, profile].mean(1), rtol=1e-6
    )


def test_a_response_model_saved_with_dense_similarities_still_loads(tmp_path):
    """Models saved before neighbours were sparse hold a dense (N, N) ``similarities``."""
    model = toy_response()
    model.save(tmp_path / "simulator")
    path = tmp_path / "simulator" / "response.safetensors"
    tensors = load_file(str(path))
    for name in ("neighbour_indptr", "neighbour_indices", "neighbour_similarities"):
        del tensors[name]
    save_file({**tensors, "similarities": model.similarities.toarray()}, str(path))
    loaded = ResponseModel.load(tmp_path / "simulator")
    profile, items = np.array([1, 4, 5]), np.arange(12)
    np.testing.assert_array_equal(
        loaded.click_probabilities(profile, items), model.click_probabilities(profile, items)
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


def test_candidates_and_catalogue_scores_come_a_few_users_at_a_time():
    """Candidates from blocks of users' score rows equal the dense (U, n_items) reference's
    best unseen items; the logs' catalogue view holds each event's own row, z-scored with
    its user's candidates."""
    rng = np.random.default_rng(4)
    adapted = AdaptedScores(rng.normal(size=(7, 4)), rng.normal(size=(20, 4)))
    dense = adapted.states @ adapted.item_vectors.T
    sequences = [rng.choice(20, int(rng.integers(4, 8)), replace=False) for _ in range(7)]
    supports = [s[:3] for s in sequences]
    for block_floats in (1 << 24, 2 * 20, 1):  # every user at once; two; one
        items, scores = best_unseen(adapted.rows, supports, 20, 5, block_floats)
        for user, support in enumerate(supports):
            want = sorted(set(range(20)) - set(support), key=lambda i: (-dense[user, i], i))[:5]
            assert items[user].tolist() == want
            np.testing.assert_allclose(scores[user], dense[user, want])
    users = Users(np.arange(7), sequences, [np.full(len(s), 4.0) for s in sequences], adapted)
    sessions = logged_sessions(sequences, users.ratings, 3, 4, 0.9, 1.0, 1.0, 4.0)
    view = LogView(sessions, users, simulated(users, toy_response(20), 3, 5), 2, 2)
    events = np.arange(len(sessions))
    context = view.context(events, over_candidates=False)
    rows = sessions.rows
    candidate_scores = dense[rows[:, None], view.simulated.candidates[rows]]
    want = (dense[rows] - candidate_scores.mean(1, keepdims=True)) / candidate_scores.std(
        1, keepdims=True
    )
    np.testing.assert_allclose(context.scores.numpy(), want, rtol=1e-5, atol=1e-5)
    assert context.items.tolist() == [list(range(20))] * len(events)
    for event, (row, step) in enumerate(zip(rows, sessions.steps, strict=True)):
        held = np.isin(np.arange(20), sequences[row][:step])
        assert context.consumed[event].tolist() == held.tolist()


def test_adapted_scores_are_saved_as_states_and_old_dense_files_are_named(tmp_path):
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(9, 3)).astype(np.float32)
    adapted = {side: AdaptedScores(rng.normal(size=(n, 3)).astype(np.float32), vectors)
               for side, n in (("train", 4), ("test", 2))}  # fmt: skip
    users = {"train": np.arange(4), "test": np.array([7, 9])}
    path = tmp_path / "adapted_scores.safetensors"
    save_scores(path, users, adapted)
    loaded_users, loaded = load_scores(path, ("train", "test"))
    assert loaded_users["test"].tolist() == [7, 9]
    np.testing.assert_array_equal(
        loaded["train"].rows(np.arange(4)), adapted["train"].rows(np.arange(4))
    )
    dense = {f"{side}_scores": adapted[side].rows(np.arange(len(users[side]))) for side in users}
    save_file({**{f"{s}_users": u for s, u in users.items()}, **dense}, str(path))
    with pytest.raises(MetarecError, match="dense \\(users × items\\) adapted scores"):
        load_scores(path, ("train", "test"))
