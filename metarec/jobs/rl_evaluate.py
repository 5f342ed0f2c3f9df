"""``metarec rl evaluate``: re-evaluate a trained RL run from its saved files.

    metarec rl evaluate --checkpoint runs/rl --output rl.json

The run dir (`metarec.rl.run_files`) holds the adapted scores, the response model and both
policies, so no language model is built: the base run is read only for its split (which
test users), refused as `metarec rl train` refuses it when the data or split differ. The
results are those of the recipe's step 6 (`train.rl_policy.evaluate`), equal to the run's
own ``results.json`` on the same data.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metarec.config import from_mapping
from metarec.errors import MetarecError
from metarec.eval.report import write_json
from metarec.options import Environment, check_writable
from metarec.rl import run_files
from metarec.rl.policy import SlatePolicy, mlp, n_item_features
from metarec.rl.response import ResponseModel
from metarec.rl.users import SIDES, split_sides, users_of
from metarec.trained_run import TrainedRun
from train.rl_policy import RLConfig, evaluate, print_results


@dataclass
class RLEvaluateConfig:
    checkpoint: Path  # the RL run dir
    data_dir: Path | None = None  # where the run's dataset is now (default: as trained)
    cache_dir: Path | None = None  # default: as trained
    output: Path | None = None  # results JSON


def evaluate_run(
    run_dir: Path, data_dir: Path | None = None, cache_dir: Path | None = None
) -> dict:
    """Evaluate a trained RL run from its saved files (no base model is built)."""
    raw = run_files.read_config(run_dir, data_dir, cache_dir)
    config = from_mapping(RLConfig, raw, where=str(run_dir / run_files.CONFIG))
    run_files.check_trained(run_dir)
    if not (config.base_run / "checkpoint").is_dir():
        raise MetarecError(
            f"{config.base_run}: the RL run's base run is not there (base_run in "
            f"{run_dir / run_files.CONFIG}); its checkpoint says which users are test users"
        )
    base = TrainedRun(config.base_run, config.data)
    base.check_compatible("coldstart", config.split_seed)
    dataset = base.dataset
    sides = split_sides(base.split(config.support_size))
    scores_path = run_dir / run_files.SCORES
    saved_users, adapted = run_files.load_scores(scores_path, SIDES)
    for side, users in sides.items():
        if not np.array_equal(saved_users[side], users):
            raise MetarecError(
                f"{scores_path}: its {side} users are not this dataset's split; was the run "
                "trained on other data?"
            )
    response = ResponseModel.load(run_dir / run_files.SIMULATOR)
    policy = SlatePolicy(config.simulator.shown_window, config.reinforce.hidden)
    run_files.load_module(policy, run_dir / run_files.POLICY)
    behaviour = mlp(n_item_features(config.simulator.shown_window), config.reinforce.hidden)
    run_files.load_module(behaviour, run_dir / run_files.BEHAVIOUR)
    for width, what in ((adapted["test"].n_items, run_files.SCORES),
                        (len(response.like_rates), f"{run_files.SIMULATOR}/")):  # fmt: skip
        if width != dataset.n_items:
            raise MetarecError(
                f"{run_dir / what}: made for {width} items, the data has {dataset.n_items}"
            )
    test = users_of(dataset, sides["test"], adapted["test"])
    return evaluate(config, test, response, behaviour, policy)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="where the run's dataset is now (default: as trained, "
        "or $METAREC_DATA_DIR)",
    )  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, help="default: as trained")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the RL run dir")
    parser.add_argument("--output", type=Path, help="results JSON")


def config_from_args(args: argparse.Namespace, env: Environment) -> RLEvaluateConfig:
    return RLEvaluateConfig(
        checkpoint=args.checkpoint,
        data_dir=args.data_dir or env.data_dir,
        cache_dir=args.cache_dir or env.cache_dir,
        output=args.output,
    )


def run(config: RLEvaluateConfig) -> None:
    check_writable(config.output)
    results = evaluate_run(config.checkpoint, config.data_dir, config.cache_dir)
    print_results(results)
    if config.output:
        write_json(config.output, results)
        print(f"wrote {config.output}")
