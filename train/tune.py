"""Hyper-parameter search over meta-training with Optuna: grid, random or TPE.

    metarec tune --config configs/quick.yaml --study-dir runs/tune --sampler tpe --trials 20

Each trial trains a run (`train/meta_train.py`) into ``<study-dir>/trial-<n>`` with the
trial's inner lr, inner steps, LoRA rank, outer lr and algorithm, and its objective is the
run's best validation ndcg@10 after adaptation: validation users only, never test users.
The study lives in ``<study-dir>/study.db`` (SQLite), so running the same command again
continues it up to ``--trials`` finished trials. The best trial's full config is written
to ``<study-dir>/best.yaml``, ready for ``metarec train --config``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
import yaml

from metarec.atomic import atomic_file
from metarec.config import from_mapping, load_yaml
from metarec.errors import ConfigError
from metarec.options import Environment, add_train_config_options, from_args, train_config
from metarec.trained_run import TrainConfig
from train.meta_train import train

SAMPLERS = ("grid", "random", "tpe")


@dataclass
class SearchSpace:
    """Ranges for random/TPE; the grid sampler takes the listed values of each."""

    inner_lr: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5])  # log range: ends
    inner_steps: list[int] = field(default_factory=lambda: [1, 3])
    rank: list[int] = field(default_factory=lambda: [4, 8])
    outer_lr: list[float] = field(default_factory=lambda: [1e-4, 1e-3])  # log range: ends
    algorithm: list[str] = field(default_factory=lambda: ["fomaml", "reptile"])


@dataclass
class TuneConfig:
    train: TrainConfig
    study_dir: Path
    sampler: str = "tpe"
    trials: int = 20
    space: SearchSpace = field(default_factory=SearchSpace)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")


def suggest(trial: optuna.Trial, space: SearchSpace, base: TrainConfig, folder: Path):
    """The trial's TrainConfig: ``base`` with the searched values, writing into ``folder``."""
    meta = replace(
        base.meta,
        inner_lr=trial.suggest_float(
            "inner_lr", min(space.inner_lr), max(space.inner_lr), log=True
        ),
        inner_steps=trial.suggest_int(
            "inner_steps", min(space.inner_steps), max(space.inner_steps)
        ),
        algorithm=trial.suggest_categorical("algorithm", space.algorithm),
    )
    lora = replace(base.model.lora, rank=trial.suggest_categorical("rank", space.rank))
    outer_lr = trial.suggest_float("outer_lr", min(space.outer_lr), max(space.outer_lr), log=True)
    return replace(
        base, meta=meta, model=replace(base.model, lora=lora), outer_lr=outer_lr, output_dir=folder
    )


def _sampler(config: TuneConfig, trials_so_far: int) -> optuna.samplers.BaseSampler:
    # a resumed study must not replay the first run's draws: offset the seed by its trials
    seed = config.seed + trials_so_far
    if config.sampler == "grid":
        return optuna.samplers.GridSampler(asdict(config.space), seed=seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def tune(config: TuneConfig) -> dict:
    """Run trials until ``config.trials`` have finished; returns the best trial's summary."""
    config.study_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{config.study_dir / 'study.db'}"
    study = optuna.create_study(study_name="metarec", storage=storage, direction="maximize",
                                load_if_exists=True)  # fmt: skip
    study.sampler = _sampler(config, len(study.trials))
    if study.user_attrs.get("sampler", config.sampler) != config.sampler:
        raise ConfigError(
            f"{config.study_dir}: the study was started with the "
            f"{study.user_attrs['sampler']} sampler; use it again or a new --study-dir"
        )
    study.set_user_attr("sampler", config.sampler)

    def objective(trial: optuna.Trial) -> float:
        trial_config = suggest(
            trial, config.space, config.train, config.study_dir / f"trial-{trial.number}"
        )
        history = train(trial_config)
        return max(row["valid_ndcg@10_after"] for row in history if row["stage"] == "meta")

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    remaining = config.trials - len(finished)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    best = study.best_trial
    best_config = suggest(
        optuna.trial.FixedTrial(best.params), config.space, config.train,
        config.train.output_dir,
    )  # fmt: skip
    with atomic_file(config.study_dir / "best.yaml") as temporary:
        mapping = json.loads(json.dumps(asdict(best_config), default=str))
        temporary.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return {
        "best_trial": best.number,
        "best_valid_ndcg@10": best.value,
        "params": best.params,
        "trials": len(study.trials),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_config_options(parser)
    parser.add_argument("--study-dir", type=Path, required=True, help="trials, study.db, best.yaml")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    parser.add_argument("--trials", type=int, default=20, help="finished trials to reach")
    parser.add_argument("--space", type=Path, help="YAML search space (train/tune.py SearchSpace)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")


def config_from_args(args: argparse.Namespace, env: Environment) -> TuneConfig:
    space = SearchSpace()
    if args.space is not None:
        space = from_mapping(SearchSpace, load_yaml(args.space), where=f"{args.space}: space")
    return from_args(TuneConfig, args, train=train_config(args, env), space=space)


def run(config: TuneConfig) -> None:
    best = tune(config)
    print(json.dumps(best, indent=2))
    print(f"wrote {config.study_dir / 'best.yaml'}")
