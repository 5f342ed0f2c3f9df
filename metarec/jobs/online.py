"""``metarec online``: replay a coldstart run's test users' streams under update strategies.

No updates vs full re-adaptation vs incremental one-step updates (`metarec.meta.online`),
with prequential ndcg@10 / hr@10 and the adaptation compute each costs.

    metarec online --checkpoint runs/demo --strategies none,full,incremental
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from metarec.data.prepare import DataConfig
from metarec.eval.report import write_json
from metarec.meta.online import OnlineConfig, replay
from metarec.options import (
    Environment,
    add_run_options,
    check_writable,
    from_args,
    job_config,
    name_list,
)
from metarec.trained_run import TrainedRun


@dataclass
class OnlineJobConfig:
    """Which run, whose streams (its coldstart test or validation users) and strategies."""

    run: Path
    replay: OnlineConfig = field(default_factory=OnlineConfig)
    data: DataConfig | None = None  # None: the run's own data, as it was trained
    strategies: list[str] = field(default_factory=lambda: ["none", "full", "incremental"])
    split_users: str = "test"  # valid: to pick settings
    output: Path | None = None  # results JSON
    trust_remote_code: bool = False
    device: str = "cpu"  # where the model computes (--device, resolved by config_from_args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, "coldstart run dir")
    parser.add_argument("--strategies", default="none,full,incremental")
    parser.add_argument("--split-users", choices=("test", "valid"), default="test")
    parser.add_argument("--start", type=int, default=5, help="items given before the first event")
    parser.add_argument("--events", type=int, default=15, help="scored events per user")
    parser.add_argument("--window", type=int, default=5, help="incremental: recent items per step")
    parser.add_argument(
        "--incremental-lr-scale", type=float, default=0.3, help="incremental step lr / inner lr"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, help="results JSON")


def config_from_args(args: argparse.Namespace, env: Environment) -> OnlineJobConfig:
    return job_config(
        OnlineJobConfig,
        args,
        env,
        replay=from_args(OnlineConfig, args),
        strategies=name_list(args.strategies),
    )


def run(config: OnlineJobConfig) -> None:
    check_writable(config.output)
    trained = TrainedRun(config.run, config.data, config.trust_remote_code, config.device)
    trained.check_compatible("coldstart")
    settings = config.replay
    split = trained.split(settings.start)
    cases = split.test if config.split_users == "test" else split.valid
    sequences = trained.dataset.sequences()
    streams = [
        sequences[case.user]
        for case in cases
        if len(sequences[case.user]) >= settings.start + settings.events
    ]
    method = trained.recommender()
    results = {}
    for strategy in config.strategies:
        results[strategy], _ = replay(method, streams, strategy, settings)
    print(
        f"{len(streams)} {config.split_users} users, first {settings.start} items given, "
        f"{settings.events} events each"
    )
    print("| strategy | ndcg@10 | hr@10 | adaptation token-steps | adaptation s |")
    print("|---|---|---|---|---|")
    for strategy, row in results.items():
        print(
            f"| {strategy} | {row['ndcg@10']:.4f} | {row['hr@10']:.4f} | "
            f"{row['adaptation_token_steps']} | {row['adaptation_seconds']:.1f} |"
        )
    if config.output:
        write_json(config.output, {"config": asdict(settings), "strategies": results})
