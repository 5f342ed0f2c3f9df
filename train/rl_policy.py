"""Recipe: a slate policy for long-term reward over the meta-learned model's candidates.

    metarec rl train --config configs/rl_quick.yaml --split-seed 0 --output-dir runs/rl
    metarec rl evaluate --checkpoint runs/rl --output rl.json

Top to bottom:

1. The base run (a coldstart meta-lora run, trained first from ``base_config`` when it has
   no checkpoint) adapts to every meta-train and test user's support; each user's adapted
   state and the item vectors are its catalogue scores, computed a few users at a time
   when needed; the users are those of the run's own split (`metarec/rl/users.py`).
2. The response model is fitted on meta-train users; simulated meta-train users train the
   policy, simulated test users evaluate it (`metarec/rl/env.py`).
3. A behaviour policy is estimated on the meta-train users' logs (which item came next).
4. Off-policy REINFORCE with the top-K correction on those logs (`metarec/rl/reinforce.py`).
5. On-policy REINFORCE in the simulator on meta-train users, with a learned value baseline.
6. Evaluation on test users: the discounted return of greedy, softmax and the learned
   policy with 95% CIs over users (`metarec/rl/simulated_eval.py`), and IPS / SNIPS / DR
   estimates on the test users' logs (`metarec/rl/offline_eval.py`).

Everything `metarec rl evaluate` (`metarec/jobs/rl_evaluate.py`) needs is saved in the
output dir (`metarec/rl/run_files.py`): the config, the response model, the adapted states
and item vectors, the behaviour and learned policies (safetensors).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from metarec.atomic import atomic_dir
from metarec.config import from_mapping
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig
from metarec.device import to_numpy
from metarec.errors import ConfigError, MetarecError
from metarec.meta.recommender import LLMRecommender
from metarec.options import (
    Environment,
    add_train_config_options,
    allow_remote_code,
    check_writable,
    config_mapping,
    device_of,
)
from metarec.rl import run_files
from metarec.rl.env import SimulatedUsers, SimulatorConfig, SlateSimulator
from metarec.rl.logs import logged_log_probabilities
from metarec.rl.offline_eval import off_policy_estimates
from metarec.rl.policy import (
    ItemSide,
    LogitFn,
    SlatePolicy,
    mlp,
    n_item_features,
    rollout,
    score_logits,
    state_features,
)
from metarec.rl.reinforce import discounted_returns, off_policy_loss, on_policy_loss
from metarec.rl.response import (
    ResponseFitConfig,
    ResponseModel,
    check_neighbours,
    fit_response_model,
)
from metarec.rl.simulated_eval import Policies, compare_returns
from metarec.rl.users import (
    AdaptedScores,
    LogView,
    Users,
    sessions_of,
    simulated,
    split_sides,
    users_of,
)
from metarec.trained_run import TrainConfig, TrainedRun


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


def states_and_item_vectors(method: LLMRecommender, histories: list[np.ndarray]) -> AdaptedScores:
    """The adapted scores of ``histories`` as ``method.score`` computes them, kept as the
    factors its (U, n_items) product would be: (U, d) states and (n_items, d) item vectors."""
    with method.model.frozen_item_vectors():
        return AdaptedScores(method.states(histories), to_numpy(method.model.item_vectors()))


def adapted_scores_of(
    config: RLConfig,
    base_train: TrainConfig | None,
    trust_remote_code: bool,
    device: str = "cpu",
) -> tuple[Dataset, dict[str, np.ndarray], dict[str, AdaptedScores]]:
    """(dataset, {side: (U,) users}, {side: adapted scores}) from the base run, trained
    first if missing (on the device its config names), adapted on ``device``; the sides are
    the run's coldstart split (`metarec.rl.users`)."""
    if not (config.base_run / "checkpoint").is_dir():
        if base_train is None:
            raise MetarecError(
                f"{config.base_run}: no trained run there; train it (`make demo` or `metarec "
                "train`) or set base_config so this recipe trains it"
            )
        from train.meta_train import train as meta_train

        meta_train(base_train)
    run = TrainedRun(config.base_run, config.data, trust_remote_code, device)
    run.check_compatible("coldstart", config.split_seed)
    method, dataset = run.recommender(), run.dataset
    check_neighbours(dataset.n_items, config.response.neighbours)  # before adapting, not after
    sequences = dataset.sequences()
    sides = split_sides(run.split(config.support_size))
    adapted = {
        side: states_and_item_vectors(method, [sequences[u][: config.support_size] for u in users])
        for side, users in tqdm(sides.items(), desc="adapt to supports", unit="side")
    }
    return dataset, sides, adapted


def simulated_side(users: Users, response: ResponseModel, config: RLConfig) -> SimulatedUsers:
    """``users`` as simulated users, each with its top ``simulator.candidates`` items."""
    return simulated(users, response, config.support_size, config.simulator.candidates)


def log_view(users: Users, simulated_users: SimulatedUsers, config: RLConfig) -> LogView:
    """``users``' logged sessions as the policies see them."""
    sessions = sessions_of(
        users, config.support_size, config.simulator, config.reinforce.gamma,
        config.response.like_threshold,
    )  # fmt: skip
    return LogView(
        sessions, users, simulated_users, config.simulator.shown_window,
        config.simulator.slate_size,
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


def compared_policies(policy: SlatePolicy, config: RLConfig) -> Policies:
    """Each evaluated policy's logits and whether it samples its picks."""
    return {
        "greedy": (score_logits(), False),
        "softmax": (score_logits(config.evaluation.softmax_temperature), True),
        "learned": (policy.logits, False),
    }


def evaluate(
    config: RLConfig,
    test: Users,
    response: ResponseModel,
    behaviour: torch.nn.Module,
    policy: SlatePolicy,
) -> dict:
    """Simulated returns on the test users with CIs, and OPE on their logs."""
    item_side = ItemSide.from_counts(response.genres, response.popularity)
    test_simulated = simulated_side(test, response, config)
    simulator = SlateSimulator(test_simulated, response, config.simulator)
    policies = compared_policies(policy, config)
    settings, sim = config.evaluation, config.simulator
    results: dict = {"users": len(test.ids), "episodes_per_user": settings.episodes_per_user}
    results |= compare_returns(
        simulator, policies, item_side, settings.episodes_per_user, config.reinforce.gamma,
        config.seed + 3, settings.bootstrap, config.seed,
    )  # fmt: skip
    results["ope"] = off_policy_estimates(
        log_view(test, test_simulated, config), logit_function(behaviour), policies, response,
        item_side, sim.click_weight, sim.like_weight, config.reinforce.log_batch,
        settings.ope_clip, settings.bootstrap, config.seed,
    )  # fmt: skip
    return results


def train(
    config: RLConfig,
    base_train: TrainConfig | None = None,
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> dict:
    """Run the whole recipe; returns the evaluation results (also in results.json).

    ``device`` is where the base run adapts and scores; the small policy networks train on
    the CPU.

    The output dir is filled in a staging folder and replaces any earlier run only once
    complete: a failure leaves the earlier run whole, never its files mixed with new ones.
    """
    # 1. adapted scores for every meta-train and test user
    dataset, sides, adapted = adapted_scores_of(config, base_train, trust_remote_code, device)
    with atomic_dir(config.output_dir) as out:
        run_files.write_description(out, asdict(config), config.seed)
        run_files.save_scores(out / run_files.SCORES, sides, adapted)

        # 2. response model and simulated meta-train users
        train_users = users_of(dataset, sides["train"], adapted["train"])
        response = fit_response_model(
            train_users.sequences, train_users.ratings, dataset.item_text, config.response
        )
        response.save(out / run_files.SIMULATOR)
        item_side = ItemSide.from_counts(response.genres, response.popularity)
        train_simulated = simulated_side(train_users, response, config)
        # closed on failure too: its thread must not write into a staging dir being removed
        with SummaryWriter(str(out / "tensorboard")) as writer:
            # 3-4. behaviour policy and off-policy REINFORCE on the meta-train logs
            torch.manual_seed(config.seed)  # a base run trained above drew from torch's RNG
            logs = log_view(train_users, train_simulated, config)
            behaviour = fit_behaviour(logs, item_side, config, writer)
            policy = SlatePolicy(config.simulator.shown_window, config.reinforce.hidden)
            train_offline(policy, behaviour, logs, item_side, config, writer)

            # 5. on-policy REINFORCE in the simulator
            simulator = SlateSimulator(train_simulated, response, config.simulator)
            train_online(policy, simulator, item_side, config, writer)
        run_files.save_module(behaviour, out / run_files.BEHAVIOUR)
        run_files.save_module(policy, out / run_files.POLICY)

        # 6. evaluation on test users
        test_users = users_of(dataset, sides["test"], adapted["test"])
        results = evaluate(config, test_users, response, behaviour, policy.eval())
        run_files.write_results(out, results)
    return results


def print_results(results: dict) -> None:
    """The evaluation as `metarec rl train` and `metarec rl evaluate` print it."""
    print(f"{results['users']} test users x {results['episodes_per_user']} simulated sessions")
    print("| policy | discounted return (95% CI) | session length | SNIPS on test logs (95% CI) |")
    print("|---|---|---|---|")
    for name in ("greedy", "softmax", "learned"):
        low, high = results["return_ci"][name]
        snips = results["ope"]["policies"][name]["snips"]
        print(f"| {name} | {results[f'return_{name}']:.3f} [{low:.3f}, {high:.3f}] | "
              f"{results['session_length'][name]:.2f} | {snips['value']:.3f} "
              f"[{snips['ci'][0]:.3f}, {snips['ci'][1]:.3f}] |")  # fmt: skip
    print(f"learned / greedy: {results['learned_vs_greedy']:.3f}")


@dataclass
class RLTrainCommandConfig:
    """``metarec rl train``: the RL config, the base run's training config (when the recipe
    may train it) and whether the backbone may run its own code."""

    rl: RLConfig
    base_train: TrainConfig | None = None
    trust_remote_code: bool = False
    device: str = "cpu"  # where the base run trains, adapts and scores (--device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_config_options(parser)
    parser.add_argument("--output-dir", type=Path, help="the RL run dir")


def config_from_args(args: argparse.Namespace, env: Environment) -> RLTrainCommandConfig:
    raw = config_mapping(args.config, args.set, args.split_seed, args.output_dir, env)
    config = from_mapping(RLConfig, raw, where=f"{args.config}: config")
    base_train = None
    if config.base_config is not None:
        base = config_mapping(config.base_config, [], config.split_seed, config.base_run, env)
        base["data"] = {**base["data"], **raw["data"]}
        base_train = from_mapping(TrainConfig, base, where=f"{config.base_config}: config")
        allow_remote_code(base_train, args.trust_remote_code, str(config.base_config))
    device = device_of(args, env)
    if base_train is not None:
        base_train.distributed.device = device
    return RLTrainCommandConfig(config, base_train, args.trust_remote_code, device)


def run(config: RLTrainCommandConfig) -> None:
    check_writable(config.rl.output_dir / run_files.CONFIG)
    print_results(train(config.rl, config.base_train, config.trust_remote_code, config.device))
    print(f"wrote {config.rl.output_dir / run_files.RESULTS}")
