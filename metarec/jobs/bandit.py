"""``metarec bandit``: replay evaluation of exploration policies over adapted candidates.

A coldstart run's test users, adapted to their first ``support_size`` items, get a
uniform-random log of displays; greedy, epsilon-greedy, LinUCB and Thompson sampling are
replayed on it (`metarec.rl.bandit`).

    metarec bandit --checkpoint runs/demo --output bandit.json --plot bandit.png
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from metarec.data.prepare import DataConfig
from metarec.eval.plots import reward_curves
from metarec.eval.report import write_json
from metarec.options import (
    Environment,
    add_run_options,
    check_writable,
    from_args,
    job_config,
)
from metarec.rl.bandit import BanditConfig, compare_policies
from metarec.trained_run import TrainedRun


@dataclass
class BanditJobConfig:
    """Which run, the replay's settings, and where results go."""

    run: Path
    bandit: BanditConfig = field(default_factory=BanditConfig)
    data: DataConfig | None = None  # None: the run's own data, as it was trained
    output: Path | None = None  # results JSON
    plot: Path | None = None  # cumulative reward curves PNG
    trust_remote_code: bool = False
    device: str = "cpu"  # where the model computes (--device, resolved by config_from_args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, "coldstart run dir")
    parser.add_argument("--support-size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20, help="logged displays per user")
    parser.add_argument("--arms", type=int, default=5, help="arms per display")
    parser.add_argument("--pool", type=int, default=50, help="arms come from this top-N")
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=1.0, help="LinUCB width, Thompson scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="results JSON")
    parser.add_argument("--plot", type=Path, help="cumulative reward curves PNG")


def config_from_args(args: argparse.Namespace, env: Environment) -> BanditJobConfig:
    return job_config(BanditJobConfig, args, env, bandit=from_args(BanditConfig, args))


def run(config: BanditJobConfig) -> None:
    for output in (config.output, config.plot):
        check_writable(output)
    settings = config.bandit
    trained = TrainedRun(config.run, config.data, config.trust_remote_code, config.device)
    trained.check_compatible("coldstart")
    results, rewards = compare_policies(
        trained.recommender().score,
        trained.split(settings.support_size),
        trained.dataset.sequences(),
        settings,
    )
    print(
        f"{results['events']} logged events: {results['users']} cold users x "
        f"{settings.rounds} rounds, {settings.arms} arms from the top {settings.pool}"
    )
    print("| policy | counted events | CTR (95% CI) | x greedy |\n|---|---|---|---|")
    for kind, row in results["policies"].items():
        low, high = row["ctr_ci"]
        print(
            f"| {kind} | {row['events']} | {row['ctr']:.4f} [{low:.4f}, {high:.4f}] | "
            f"{row['vs_greedy']:.2f} |"
        )
    if config.plot:
        reward_curves(rewards, config.plot)
    if config.output:
        write_json(config.output, {"config": asdict(settings), **results})
