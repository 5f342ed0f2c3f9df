"""``metarec config show``: print the resolved training config (defaults, YAML, ``--set``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import yaml

from metarec.options import Environment, add_train_config_options, train_config
from metarec.trained_run import TrainConfig

Config = TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_config_options(parser)


def config_from_args(args: argparse.Namespace, env: Environment) -> Config:
    return train_config(args, env)


def run(config: Config) -> None:
    resolved = json.loads(json.dumps(asdict(config), default=str))
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
