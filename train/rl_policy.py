"""Recipe: a slate policy for long-term reward over the meta-learned model's candidates.

    metarec rl train --config configs/rl_quick.yaml --split-seed 0 --output-dir runs/rl
    metarec rl evaluate --checkpoint runs/rl --output rl.json

Top to bottom:

1. The base run (a coldstart meta-lora run, trained first from ``base_config`` when it has
   no checkpoint) adapts to every meta-train and test user's support and scores the catalogue.
2. The response model is fitted on meta-train users; simulated meta-train users train the
   policy, simulated test users evaluate it (`metarec/rl/env.py`).
3. A behaviour policy is estimated on the meta-train users' logs (which item came next).
4. Off-policy REINFORCE with the top-K correction on those logs (`metarec/rl/reinforce.py`).
5. On-policy REINFORCE in the simulator on meta-train users, with a learned value baseline.
6. Evaluation on test users: the discounted return of greedy, softmax and the learned
   policy with 95% CIs over users, and IPS / SNIPS / DR estimates on the test users' logs.

Everything `evaluate` needs is saved in the output dir: the config, the response model,
the adapted scores, the behaviour and learned policies (safetensors).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from metarec.atomic import atomic_dir, recover
from metarec.config import from_mapping
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import coldstart_users
from metarec.errors import ConfigError, MetarecError
from metarec.eval.evaluate import check_same_split
from metarec.eval.metrics import bootstrap_ci
from metarec.provenance import provenance
from metarec.rl import ope
from metarec.rl.env import SimulatedUsers, SimulatorConfig, SlateSimulator, simulated_users
from metarec.rl.logs import (
    LoggedSessions,
    logged_context,
    logged_log_probabilities,
    logged_sessions,
    slot_probabilities,
)
from metarec.rl.policy import (
    ItemSide,
    LogitFn,
    SlatePolicy,
    mlp,
    n_item_features,
    rollout,
    score_logits,
    standardise_scores,
    state_features,
)
from metarec.rl.reinforce import discounted_returns, off_policy_loss, on_policy_loss
from metarec.rl.response import ResponseFitConfig, ResponseModel, fit_response_model
from train.meta_train import TrainConfig


@dataclass
class ReinforceConfig:
    gamma: float = 0.9
    lr: float = 0.01
    hidden: int = 32
    behaviour_epochs: int = 2  # fitting the behaviour policy on meta-train logs
    offline_epochs: int = 2  # off-policy REINFORCE on meta-train logs (0: skip)
    log_batch: int = 256  # logged steps per update
    weight_cap: float = 10.0  # on π/β
    online_iterations: int = 200  # on-policy updates in the simulator (0: skip)
    users_per_iteration: int = 128  # simulated sessions per on-policy update
    value_weight: float = 0.5  # of the baseline's squared error in the loss

    def __post_init__(self) -> None:
        at_least = {"hidden": 1, "log_batch": 1, "users_per_iteration": 1,
                    "behaviour_epochs": 1, "offline_epochs": 0, "online_iterations": 0}  # fmt: skip
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"reinforce.{name} {getattr(self, name)}: expected >= {low}")
        for name in ("lr", "weight_cap"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"reinforce.{name} {getattr(self, name)}: expected > 0")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"reinforce.gamma {self.gamma}: expected (0, 1]")


@dataclass
class EvaluationConfig:
    episodes_per_user: int = 10  # simulated sessions per test user and policy
    softmax_temperature: float = 1.0  # on z-scored adapted scores
    bootstrap: int = 1000
    ope_clip: float | None = None  # cap on OPE importance weights (None: unclipped)

    def __post_init__(self) -> None:
        if self.episodes_per_user < 1 or self.bootstrap < 1:
            raise ConfigError(
                f"evaluation: episodes_per_user ({self.episodes_per_user}) and bootstrap "
                f"({self.bootstrap}) must be at least 1"
            )
        if self.softmax_temperature <= 0:
            raise ConfigError(
                f"evaluation.softmax_temperature {self.softmax_temperature}: expected > 0"
            )


@dataclass
class RLConfig:
    base_run: Path = Path("runs/demo")  # a coldstart `metarec train` run (meta-lora)
    base_config: Path | None = None  # trains base_run with this YAML when it is missing
    data: DataConfig = field(default_factory=DataConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    response: ResponseFitConfig = field(default_factory=ResponseFitConfig)
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    support_size: int = 10  # what the base model adapts on, per user
    split_seed: int = 0  # must be the base run's
    seed: int = 0
    output_dir: Path = Path("runs/rl")

    def __post_init__(self) -> None:
        if self.support_size < 1:
            raise ConfigError(f"support_size {self.support_size}: expected at least 1")


@dataclass
class Users:
    """One side of the split as the recipe needs it."""

    ids: np.ndarray  # (U,) user indices of the dataset
    sequences: list[np.ndarray]
    ratings: list[np.ndarray]
    adapted_scores: np.ndarray  # (U, n_items) after adapting to the support


def split_users(dataset: Dataset, split_seed: int, support_size: int) -> dict[str, np.ndarray]:
    """Meta-train users, and test users with at least one item after their support."""
    sequences = dataset.sequences()
    train, _, test = coldstart_users(dataset.n_users, split_seed)
    test = np.array([u for u in np.sort(test) if len(sequences[u]) > support_size], dtype=int)
    if len(test) == 0:
        raise MetarecError(
            f"support_size {support_size}: no test user has an item after its support"
        )
    return {"train": np.sort(train), "test": test}


def adapted_scores_of(config: RLConfig, base_train: TrainConfig | None, trust_remote_code: bool):
    """(dataset, {side: (U, n_items) scores}) from the base run, trained first if missing."""
    from retrieval.catalogue import load_run
    from train.meta_train import run

    if not (config.base_run / "checkpoint").is_dir():
        if base_train is None:
            raise MetarecError(
                f"{config.base_run}: no trained run there; train it (`make demo` or `metarec "
                "train`) or set base_config so this recipe trains it"
            )
        run(base_train)
    method, dataset, _ = load_run(config.base_run, config.data, trust_remote_code)
    check_same_split(method, config.base_run, "coldstart", config.split_seed, config.data)
    sequences = dataset.sequences()
    scores = {
        side: method.score([sequences[u][: config.support_size] for u in users])
        for side, users in tqdm(
            split_users(dataset, config.split_seed, config.support_size).items(),
            desc="adapt to supports", unit="side",
        )
    }  # fmt: skip
    return dataset, scores


def users_of(dataset: Dataset, ids: np.ndarray, scores: np.ndarray) -> Users:
    sequences, ratings = dataset.sequences(), dataset.rating_sequences()
    return Users(ids, [sequences[u] for u in ids], [ratings[u] for u in ids], scores)


def simulated(users: Users, response: ResponseModel, config: RLConfig) -> SimulatedUsers:
    supports = [s[: config.support_size] for s in users.sequences]
    return simulated_users(
        response, supports, users.sequences, users.adapted_scores, config.simulator.candidates
    )


def sessions_of(users: Users, config: RLConfig) -> LoggedSessions:
    sim = config.simulator
    return logged_sessions(
        users.sequences, users.ratings, config.support_size, sim.horizon, config.reinforce.gamma,
        sim.click_weight, sim.like_weight, config.response.like_threshold,
    )  # fmt: skip


@dataclass
class LogView:
    """Logged sessions with the catalogue-wide inputs every policy reads at them."""

    sessions: LoggedSessions
    users: Users
    simulated: SimulatedUsers
    config: RLConfig

    def context(self, events: np.ndarray, over_candidates: bool):
        """The view at ``events``: over each user's N candidates, or over the catalogue."""
        scores = self.users.adapted_scores
        candidate_scores = self.simulated.scores
        if over_candidates:
            choices, values = self.simulated.candidates, candidate_scores
        else:
            choices = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
            values = scores
        return logged_context(
            self.sessions, events, self.users.sequences,
            standardise_scores(values, candidate_scores), choices,
            self.config.simulator.shown_window, self.config.simulator.slate_size,
        )  # fmt: skip


def batches(n: int, size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    return [order[start : start + size] for start in range(0, n, size)]


def fit_behaviour(
    logs: LogView, item_side: ItemSide, config: RLConfig, writer: SummaryWriter
) -> torch.nn.Module:
    """The behaviour policy β: a first-pick softmax over the catalogue fitted by likelihood."""
    behaviour = mlp(n_item_features(config.simulator.shown_window), config.reinforce.hidden)
    optimiser = torch.optim.Adam(behaviour.parameters(), lr=config.reinforce.lr)
    rng, step = np.random.default_rng(config.seed), 0
    for epoch in range(config.reinforce.behaviour_epochs):
        for events in tqdm(batches(len(logs.sessions), config.reinforce.log_batch, rng),
                           desc=f"behaviour epoch {epoch}", unit="batch"):  # fmt: skip
            context = logs.context(events, over_candidates=False)
            items = logs.sessions.items[events]
            behaviour_fn = logit_function(behaviour)
            loss = -logged_log_probabilities(behaviour_fn, context, item_side, items).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            writer.add_scalar("behaviour/nll", loss.item(), step)
            step += 1
    return behaviour.eval()


def logit_function(scorer: torch.nn.Module) -> LogitFn:
    return lambda features: scorer(features).squeeze(-1)


def train_offline(
    policy: SlatePolicy,
    behaviour: torch.nn.Module,
    logs: LogView,
    item_side: ItemSide,
    config: RLConfig,
    writer: SummaryWriter,
) -> None:
    """Off-policy REINFORCE with the top-K correction over the meta-train logs."""
    settings = config.reinforce
    optimiser = torch.optim.Adam(policy.parameters(), lr=settings.lr)
    rng, step = np.random.default_rng(config.seed + 1), 0
    for epoch in range(settings.offline_epochs):
        for events in tqdm(batches(len(logs.sessions), settings.log_batch, rng),
                           desc=f"off-policy epoch {epoch}", unit="batch"):  # fmt: skip
            context = logs.context(events, over_candidates=False)
            items = logs.sessions.items[events]
            log_probability = logged_log_probabilities(policy.logits, context, item_side, items)
            with torch.no_grad():
                behaviour_log_probability = logged_log_probabilities(
                    logit_function(behaviour), context, item_side, items
                )
            progress = torch.as_tensor(logs.sessions.progress[events])
            values = policy.value(state_features(context, item_side, progress))[:, 0]
            returns = torch.as_tensor(logs.sessions.returns[events], dtype=torch.float32)
            loss = off_policy_loss(
                log_probability, behaviour_log_probability, returns - values,
                config.simulator.slate_size, settings.weight_cap,
            ) + settings.value_weight * ((values - returns) ** 2).mean()  # fmt: skip
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            weights = (log_probability.detach() - behaviour_log_probability).double().exp()
            writer.add_scalar("offline/loss", loss.item(), step)
            writer.add_scalar("offline/weight_mean", weights.mean().item(), step)
            writer.add_scalar("offline/weight_max", weights.max().item(), step)
            capped = (weights > settings.weight_cap).float().mean()
            writer.add_scalar("offline/weight_capped_share", capped.item(), step)
            step += 1


def train_online(
    policy: SlatePolicy,
    simulator: SlateSimulator,
    item_side: ItemSide,
    config: RLConfig,
    writer: SummaryWriter,
) -> None:
    """On-policy REINFORCE with a value baseline on simulated meta-train users."""
    settings = config.reinforce
    optimiser = torch.optim.Adam(policy.parameters(), lr=settings.lr)
    rng = np.random.default_rng(config.seed + 2)
    progress = tqdm(range(settings.online_iterations), desc="on-policy", unit="update")
    for iteration in progress:
        rows = rng.integers(len(simulator.users), size=settings.users_per_iteration)
        episodes = rollout(simulator, rows, policy.logits, item_side, rng, sample=True)
        returns = discounted_returns(episodes.rewards, episodes.alive, settings.gamma)
        values = policy.value(episodes.states)[..., 0]
        steps = episodes.alive.sum().clamp(min=1)
        value_loss = (((values - returns) ** 2) * episodes.alive).sum() / steps
        loss = on_policy_loss(episodes.log_probabilities, returns - values, episodes.alive)
        optimiser.zero_grad()
        (loss + settings.value_weight * value_loss).backward()
        optimiser.step()
        episode_return = returns[:, 0].mean().item()
        progress.set_postfix(ret=f"{episode_return:.2f}")
        writer.add_scalar("online/return", episode_return, iteration)
        writer.add_scalar("online/session_length", episodes.alive.sum(1).mean().item(), iteration)
        entropy = (episodes.entropies * episodes.alive).sum() / steps
        writer.add_scalar("online/entropy", entropy.item(), iteration)
        writer.add_scalar("online/value_loss", value_loss.item(), iteration)
        norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in policy.scorer.parameters()))
        writer.add_scalar("online/scorer_weight_norm", norm.item(), iteration)


def policies(policy: SlatePolicy, config: RLConfig) -> dict[str, tuple[LogitFn, bool]]:
    """Each evaluated policy's logits and whether it samples its picks."""
    return {
        "greedy": (score_logits(), False),
        "softmax": (score_logits(config.evaluation.softmax_temperature), True),
        "learned": (policy.logits, False),
    }


def simulated_returns(
    simulator: SlateSimulator, logit_fn: LogitFn, sample: bool, item_side: ItemSide,
    config: RLConfig,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per test user (U,): mean discounted return and session length over
    ``episodes_per_user`` sessions; every policy starts from the same seed."""
    episodes = config.evaluation.episodes_per_user
    n_users = len(simulator.users)
    rows = np.repeat(np.arange(n_users), episodes)
    with torch.no_grad():
        run = rollout(simulator, rows, logit_fn, item_side,
                      np.random.default_rng(config.seed + 3), sample)  # fmt: skip
    returns = discounted_returns(run.rewards, run.alive, config.reinforce.gamma)[:, 0]
    per_user = {"return": returns, "length": run.alive.sum(1)}
    return {k: v.reshape(n_users, episodes).mean(1).numpy() for k, v in per_user.items()}


def off_policy_estimates(
    logs: LogView,
    behaviour: torch.nn.Module,
    policy: SlatePolicy,
    response: ResponseModel,
    item_side: ItemSide,
    config: RLConfig,
) -> dict:
    """IPS / SNIPS / DR value estimates of each policy on the logged test sessions: the
    reward of one slot of its slate, were the item shown consumed as logged items are
    (logged events carry one item each). Intervals resample users, not events."""
    sim, evaluation = config.simulator, config.evaluation
    events = np.arange(len(logs.sessions))
    chunks = np.array_split(events, max(1, len(events) // config.reinforce.log_batch))
    with torch.no_grad():  # in chunks: catalogue-wide features take (B, n_items, G) floats
        behaviour_probability = np.concatenate([
            logged_log_probabilities(
                logit_function(behaviour), logs.context(chunk, over_candidates=False),
                item_side, logs.sessions.items[chunk],
            ).double().exp().numpy()
            for chunk in chunks
        ])  # fmt: skip
    context = logs.context(events, over_candidates=True)
    candidate_items = context.items.numpy()
    hits = candidate_items == logs.sessions.items[:, None]
    like_reward = sim.click_weight + sim.like_weight * response.like_rates
    results = {}
    for name, (logit_fn, sample) in policies(policy, config).items():
        slots = slot_probabilities(logit_fn, context, item_side, sim.slate_size, sample).numpy()
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
                data, estimator, evaluation.ope_clip, evaluation.bootstrap, config.seed,
                groups=logs.sessions.rows,
            )  # fmt: skip
            results[name][estimator] = {"value": value, "ci": list(interval)}
    return {"events": len(events), "policies": results}


def evaluate(
    config: RLConfig,
    dataset: Dataset,
    scores: dict[str, np.ndarray],
    response: ResponseModel,
    behaviour: torch.nn.Module,
    policy: SlatePolicy,
) -> dict:
    """Simulated returns on test users with CIs, and OPE on their logs."""
    item_side = ItemSide.from_counts(response.genres, response.popularity)
    test = users_of(dataset, split_users(dataset, config.split_seed, config.support_size)["test"],
                    scores["test"])  # fmt: skip
    test_simulated = simulated(test, response, config)
    simulator = SlateSimulator(test_simulated, response, config.simulator)
    results: dict = {
        "users": len(test.ids), "episodes_per_user": config.evaluation.episodes_per_user
    }  # fmt: skip
    returns, intervals, lengths = {}, {}, {}
    per_user_returns = {}
    for name, (logit_fn, sample) in policies(policy, config).items():
        per_user = simulated_returns(simulator, logit_fn, sample, item_side, config)
        per_user_returns[name] = per_user["return"]
        returns[name] = float(per_user["return"].mean())
        intervals[name] = list(bootstrap_ci(per_user["return"], config.evaluation.bootstrap,
                                            seed=config.seed))  # fmt: skip
        lengths[name] = float(per_user["length"].mean())
    for name in returns:
        results[f"return_{name}"] = returns[name]
    results["return_ci"] = intervals
    results["session_length"] = lengths
    results["learned_vs_greedy"] = (
        returns["learned"] / returns["greedy"] if returns["greedy"] != 0 else float("nan")
    )
    results["learned_minus_greedy_ci"] = list(bootstrap_ci(
        per_user_returns["learned"] - per_user_returns["greedy"],
        config.evaluation.bootstrap, seed=config.seed,
    ))  # fmt: skip
    logs = LogView(sessions_of(test, config), test, test_simulated, config)
    results["ope"] = off_policy_estimates(logs, behaviour, policy, response, item_side, config)
    return results


def save_scores(path: Path, users: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> None:
    tensors = {f"{side}_users": users[side].astype(np.int64) for side in users}
    tensors |= {f"{side}_scores": scores[side].astype(np.float32) for side in scores}
    save_numpy(tensors, str(path))


def save_module(module: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def load_module(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    try:
        module.load_state_dict(load_file(str(path)))
    except (OSError, RuntimeError, KeyError) as err:
        raise MetarecError(f"{path}: cannot load into the configured network ({err})") from None
    return module.eval()


def train(
    config: RLConfig, base_train: TrainConfig | None = None, trust_remote_code: bool = False
) -> dict:
    """Run the whole recipe; returns the evaluation results (also in results.json).

    The output dir is filled in a staging folder and replaces any earlier run only once
    complete: a failure leaves the earlier run whole, never its files mixed with new ones.
    """
    # 1. adapted scores for every meta-train and test user
    dataset, scores = adapted_scores_of(config, base_train, trust_remote_code)
    sides = split_users(dataset, config.split_seed, config.support_size)
    with atomic_dir(config.output_dir) as out:
        with open(out / "config.json", "w") as handle:
            json.dump(asdict(config), handle, indent=2, default=str)
        with open(out / "run.json", "w") as handle:
            json.dump({"seed": config.seed, **provenance()}, handle, indent=2)
        save_scores(out / "adapted_scores.safetensors", sides, scores)

        # 2. response model and simulated meta-train users
        train_users = users_of(dataset, sides["train"], scores["train"])
        response = fit_response_model(
            train_users.sequences, train_users.ratings, dataset.item_text, config.response
        )
        response.save(out / "simulator")
        item_side = ItemSide.from_counts(response.genres, response.popularity)
        train_simulated = simulated(train_users, response, config)
        writer = SummaryWriter(str(out / "tensorboard"))

        # 3-4. behaviour policy and off-policy REINFORCE on the meta-train logs
        torch.manual_seed(config.seed)  # here: a base run trained above drew from torch's RNG
        logs = LogView(sessions_of(train_users, config), train_users, train_simulated, config)
        behaviour = fit_behaviour(logs, item_side, config, writer)
        policy = SlatePolicy(config.simulator.shown_window, config.reinforce.hidden)
        train_offline(policy, behaviour, logs, item_side, config, writer)

        # 5. on-policy REINFORCE in the simulator
        simulator = SlateSimulator(train_simulated, response, config.simulator)
        train_online(policy, simulator, item_side, config, writer)
        writer.close()
        save_module(behaviour, out / "behaviour.safetensors")
        save_module(policy, out / "policy.safetensors")

        # 6. evaluation on test users
        results = evaluate(config, dataset, scores, response, behaviour, policy.eval())
        with open(out / "results.json", "w") as handle:
            handle.write(json.dumps(results, indent=2) + "\n")
    return results


def load_config(
    run_dir: Path, data_dir: Path | None = None, cache_dir: Path | None = None
) -> RLConfig:
    """A trained RL run's config; ``data_dir`` / ``cache_dir`` say where its data is now."""
    recover(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise MetarecError(f"{path}: missing; expected a `metarec rl train` output dir")
    raw = json.loads(path.read_text())
    for key, value in (("data_dir", data_dir), ("cache_dir", cache_dir)):
        if value is not None:
            raw["data"][key] = str(value)
    return from_mapping(RLConfig, raw, where=str(path))


def evaluate_run(
    run_dir: Path, data_dir: Path | None = None, cache_dir: Path | None = None
) -> dict:
    """Evaluate a trained RL run from its saved files (no base model needed)."""
    config = load_config(run_dir, data_dir, cache_dir)
    for name in ("adapted_scores.safetensors", "behaviour.safetensors", "policy.safetensors"):
        if not (run_dir / name).is_file():
            raise MetarecError(f"{run_dir / name}: missing; the RL run did not finish training")
    dataset = load_dataset(config.data)
    saved = load_numpy(str(run_dir / "adapted_scores.safetensors"))
    sides = split_users(dataset, config.split_seed, config.support_size)
    for side, users in sides.items():
        if not np.array_equal(saved[f"{side}_users"], users):
            raise MetarecError(
                f"{run_dir / 'adapted_scores.safetensors'}: its {side} users are not this "
                "dataset's split; was the run trained on other data?"
            )
    response = ResponseModel.load(run_dir / "simulator")
    policy = SlatePolicy(config.simulator.shown_window, config.reinforce.hidden)
    load_module(policy, run_dir / "policy.safetensors")
    behaviour = mlp(n_item_features(config.simulator.shown_window), config.reinforce.hidden)
    load_module(behaviour, run_dir / "behaviour.safetensors")
    scores = {side: saved[f"{side}_scores"] for side in sides}
    for width, what in ((scores["test"].shape[1], "adapted_scores.safetensors"),
                        (len(response.like_rates), "simulator/")):  # fmt: skip
        if width != dataset.n_items:
            raise MetarecError(
                f"{run_dir / what}: made for {width} items, the data has {dataset.n_items}"
            )
    return evaluate(config, dataset, scores, response, behaviour, policy)
