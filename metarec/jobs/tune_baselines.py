"""``metarec tune-baselines``: search the classical baselines' hyper-parameters on validation users.

    metarec tune-baselines --dataset ml-100k --protocol coldstart --support-size 10 \\
        --methods itemknn,userknn,ease,sasrec --trials 20 --output runs/baselines_tuned.yaml

The baselines' counterpart of ``metarec tune`` and with the same budget (``--trials``, TPE
by default): each trial fits a method on the protocol split's training histories and scores
its validation users (ndcg@10, full ranking); test users are never looked at. The output is
a baselines YAML (every section of ``--baselines-config``, the tuned ones replaced by their
best trial) for ``metarec evaluate --baselines-config``, with each method's trials beside it
in ``<output>.trials.json``. ``pop`` has nothing to tune; for EASE each trial draws one ridge
strength (written as a one-value ``lambdas`` list).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from tqdm import tqdm

from metarec.atomic import atomic_file
from metarec.baselines import build_baseline
from metarec.config import load_yaml
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import PROTOCOLS, ProtocolConfig, Split, make_split
from metarec.errors import ConfigError
from metarec.eval.ranking import ranked_cases
from metarec.options import (
    REPO_CONFIGS,
    Environment,
    add_data_options,
    check_writable,
    from_args,
    job_config,
    name_list,
)

OBJECTIVE = "ndcg@10"


def _itemknn(trial: optuna.Trial) -> dict[str, Any]:
    neighbours = trial.suggest_categorical("neighbours", [0, 10, 20, 50, 100, 200, 400])
    return {"neighbours": neighbours or None}  # 0 stands for "every item" (None)


def _userknn(trial: optuna.Trial) -> dict[str, Any]:
    return {"neighbours": trial.suggest_int("neighbours", 5, 400, log=True)}


def _ease(trial: optuna.Trial) -> dict[str, Any]:
    return {"lambdas": [trial.suggest_float("lambda", 1.0, 5000.0, log=True)]}


def _sasrec(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "hidden": trial.suggest_categorical("hidden", [32, 64, 128]),
        "layers": trial.suggest_int("layers", 1, 3),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
        "max_len": trial.suggest_categorical("max_len", [20, 50]),
        "weight_decay": trial.suggest_categorical("weight_decay", [0.0, 1e-5, 1e-4]),
    }


# method -> the part of its section a trial draws (the rest stays as in --baselines-config)
SEARCH_SPACES: dict[str, Callable[[optuna.Trial], dict[str, Any]]] = {
    "itemknn": _itemknn,
    "userknn": _userknn,
    "ease": _ease,
    "sasrec": _sasrec,
}


@dataclass
class TuneBaselinesConfig:
    """Which baselines to tune, on which protocol's validation users, with how many trials."""

    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    methods: list[str] = field(default_factory=lambda: ["itemknn", "ease"])
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    trials: int = 20
    seed: int = 0
    output: Path = Path("runs/baselines_tuned.yaml")

    def __post_init__(self) -> None:
        unknown = [name for name in self.methods if name not in SEARCH_SPACES]
        if unknown:
            raise ConfigError(
                f"tune-baselines: nothing to tune for {', '.join(unknown)}; "
                f"tunable: {', '.join(SEARCH_SPACES)}"
            )
        if self.trials < 1:
            raise ConfigError(f"tune-baselines: --trials {self.trials} must be at least 1")


def validation_score(
    name: str, section: dict[str, Any], hyperparameters: dict[str, Any], split: Split
) -> float:
    """Mean validation ndcg@10 of baseline ``name`` fitted with ``section`` on ``split``."""
    method = build_baseline(name, {**hyperparameters, name: section})
    method.fit(split.train_sequences, split.n_items, split.valid)
    per_user, _ = ranked_cases(method.score, split.valid, (10,), name=name)
    return float(np.mean(per_user[OBJECTIVE]))


def tune_method(
    name: str, config: TuneBaselinesConfig, split: Split
) -> tuple[dict[str, Any], list[dict]]:
    """The best section for ``name`` after ``config.trials`` TPE trials, and every trial."""
    base = dict(config.hyperparameters.get(name) or {})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed)
    )
    trials: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        section = {**base, **SEARCH_SPACES[name](trial)}
        score = validation_score(name, section, config.hyperparameters, split)
        trials.append({"params": trial.params, f"valid_{OBJECTIVE}": score})
        return score

    study.optimize(objective, n_trials=config.trials)
    best = {**base, **SEARCH_SPACES[name](optuna.trial.FixedTrial(study.best_params))}
    return best, trials


def tune_baselines(config: TuneBaselinesConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the tuned baselines YAML mapping, per method: its trials, best params and score)."""
    dataset = load_dataset(config.data)
    split = make_split(dataset.sequences(), dataset.n_items, config.protocol, dataset.user_ids)
    if not split.valid:
        raise ConfigError("tune-baselines: the split has no validation users to tune on")
    tuned = dict(config.hyperparameters)
    report: dict[str, Any] = {}
    for name in tqdm(config.methods, desc="baselines", unit="method"):
        best, trials = tune_method(name, config, split)
        tuned[name] = best
        scores = [trial[f"valid_{OBJECTIVE}"] for trial in trials]
        report[name] = {"best": best, f"best_valid_{OBJECTIVE}": max(scores), "trials": trials}
    return tuned, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_options(parser)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="coldstart")
    parser.add_argument("--support-size", type=int, default=10)
    parser.add_argument("--query-size", type=int, default=10)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--methods", default="itemknn,ease", help=", ".join(SEARCH_SPACES))
    parser.add_argument("--trials", type=int, default=20, help="trials per method")
    parser.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed")
    parser.add_argument("--baselines-config", type=Path, default=REPO_CONFIGS / "baselines.yaml")
    parser.add_argument("--output", type=Path, default=Path("runs/baselines_tuned.yaml"))


def config_from_args(args: argparse.Namespace, env: Environment) -> TuneBaselinesConfig:
    return job_config(
        TuneBaselinesConfig,
        args,
        env,
        protocol=from_args(ProtocolConfig, args, name=args.protocol),
        methods=name_list(args.methods),
        hyperparameters=load_yaml(args.baselines_config),
    )


def run(config: TuneBaselinesConfig) -> None:
    """Tune, print each method's best validation figure, write the YAML and the trials."""
    trials_path = config.output.with_suffix(".trials.json")
    for output in (config.output, trials_path):
        check_writable(output)
    tuned, report = tune_baselines(config)
    for name, found in report.items():
        best_score = found[f"best_valid_{OBJECTIVE}"]
        print(f"{name}: valid {OBJECTIVE} {best_score:.4f} with {found['best']}")
    with atomic_file(trials_path) as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_file(config.output) as temporary:
        temporary.write_text(yaml.safe_dump(tuned, sort_keys=False))
    print(f"wrote {config.output} and {trials_path}")
