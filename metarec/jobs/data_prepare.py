"""``metarec data prepare``: read, validate, preprocess and cache a dataset; print its stats."""

from __future__ import annotations

import argparse

from metarec.data.prepare import DataConfig, load_dataset
from metarec.options import Environment, add_data_options, data_config

Config = DataConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_options(parser)


def config_from_args(args: argparse.Namespace, env: Environment) -> Config:
    return data_config(args, env)


def run(config: Config) -> None:
    dataset = load_dataset(config)
    for key, value in dataset.stats().items():
        print(f"{key:28s} {value:.6g}" if isinstance(value, float) else f"{key:28s} {value}")
