"""``metarec data synth``: write a synthetic dataset shaped like MovieLens ml-20m, at any size.

The output folder holds ``interactions.parquet`` (user_id, item_id, timestamp, rating; one
row group per chunk of users), ``items.parquet`` (item_id, title, genres) and
``synth.json`` (the arguments and the measured shape). They are a custom dataset like a
user's own files: the command prints the ``metarec data prepare`` line that reads them,
and every command takes the same data options. The generator is
`metarec.data.movielens_like`.

    metarec data synth --users 140000 --items 27000 --interactions 20000000 --seed 0 \\
        --output /tmp/synth20m
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from metarec.atomic import atomic_file
from metarec.data.movielens_like import (
    INTERACTION_SCHEMA,
    MovieLensLikeConfig,
    ShapeTally,
    movielens_like,
)
from metarec.eval.report import write_json
from metarec.options import Environment

DEFAULTS = MovieLensLikeConfig()


@dataclass
class SynthConfig:
    """Where to write, and the dataset to generate."""

    output: Path
    dataset: MovieLensLikeConfig


Config = SynthConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--users", type=int, default=DEFAULTS.n_users, help="default: ml-20m's 140000"
    )
    parser.add_argument(
        "--items", type=int, default=DEFAULTS.n_items, help="default: ml-20m's 27000"
    )
    parser.add_argument(
        "--interactions",
        type=int,
        default=DEFAULTS.n_interactions,
        help="in all, at least 20 per user (default: ml-20m's 20000000)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        help="folder for interactions.parquet, items.parquet and synth.json",
    )


def config_from_args(args: argparse.Namespace, env: Environment) -> Config:
    dataset = MovieLensLikeConfig(
        n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=args.seed
    )
    return SynthConfig(output=args.output, dataset=dataset)


def prepare_command(output: Path) -> str:
    """The ``metarec data prepare`` line that reads a folder this command wrote."""
    words = [
        "metarec", "data", "prepare", "--dataset", "custom",
        "--interactions", str(output / "interactions.parquet"),
        "--items", str(output / "items.parquet"),
        "--user-col", "user_id", "--item-col", "item_id",
        "--time-col", "timestamp", "--rating-col", "rating",
        "--item-text-cols", "title,genres",
    ]  # fmt: skip
    return shlex.join(words)


def run(config: Config) -> None:
    output, dataset = config.output, config.dataset
    synth = movielens_like(dataset)
    with atomic_file(output / "items.parquet") as temporary:
        pq.write_table(synth.items(), temporary)
    tally = ShapeTally(dataset.n_users, dataset.n_items)
    with (
        atomic_file(output / "interactions.parquet") as temporary,
        pq.ParquetWriter(temporary, INTERACTION_SCHEMA) as writer,
    ):
        for table in tqdm(synth.interactions(), total=synth.n_chunks, desc="data synth"):
            writer.write_table(table, row_group_size=table.num_rows)  # a row group each
            tally.add(table)
    shape = tally.shape()
    prepare = prepare_command(output)
    arguments = {
        "users": dataset.n_users,
        "items": dataset.n_items,
        "interactions": dataset.n_interactions,
        "seed": dataset.seed,
    }
    summary = {"arguments": arguments, "generator": asdict(dataset), "shape": shape}
    write_json(output / "synth.json", {**summary, "prepare": prepare})
    for key, value in shape.items():
        print(f"{key:28s} {value:.6g}" if isinstance(value, float) else f"{key:28s} {value}")
    print(f"wrote {output}; read it with:\n{prepare}")
