"""The `metarec` command: a registry of commands, and the only reader of argv and environment.

Each command is one module with ``add_arguments(parser)``, ``config_from_args(args, env)``
(a typed config) and ``run(config)``; a new command is a new module and one line in
`COMMANDS`. Only the chosen command's module is imported. User-facing errors
(`MetarecError`) become a one-line message and exit status 2.

    metarec data prepare --dataset ml-100k --data-dir ../shared/data
    metarec evaluate --dataset ml-100k --protocol coldstart --support-size 10 \\
        --methods pop,itemknn,sasrec --output results.json
    metarec train --config configs/tiny.yaml --output-dir runs/tiny --set meta.inner_lr=0.1
    metarec index build --checkpoint runs/tiny --output runs/tiny/index --kind ivf
    metarec rerank --checkpoint runs/tiny --index runs/tiny/index --output-dir runs/tiny/rerank
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from metarec.errors import MetarecError
from metarec.options import Environment

# command name -> (module, one-line help); "group sub" names are nested (metarec index build)
COMMANDS: dict[str, tuple[str, str]] = {
    "data prepare": ("metarec.jobs.data_prepare", "validate, preprocess and cache a dataset"),
    "data synth": ("metarec.jobs.data_synth", "write a synthetic dataset shaped like ml-20m"),
    "evaluate": ("metarec.jobs.evaluate", "evaluate methods on a protocol"),
    "train": ("train.meta_train", "meta-train the LLM user model's LoRA init"),
    "tune-baselines": (
        "metarec.jobs.tune_baselines",
        "search the classical baselines' hyper-parameters on validation users",
    ),
    "pipeline": (
        "metarec.jobs.pipeline",
        "the main job end to end: data, encoding, training, index, evaluation, rerank, report",
    ),
    "config show": (
        "metarec.jobs.config_show",
        "print the resolved training config (defaults, YAML, --set overrides)",
    ),
    "index build": (
        "retrieval.build",
        "encode the catalogue with a run's item side (or take --vectors) and index it",
    ),
    "index search": ("retrieval.search", "ad-hoc queries against an index folder"),
    "rerank": (
        "retrieval.rerank",
        "batch job: adapt users, retrieve, rescore, write top-K Parquet shards",
    ),
    "explain": (
        "metarec.jobs.explain",
        "why a run recommends what it does to one user (leave-one-out)",
    ),
    "online": (
        "metarec.jobs.online",
        "replay test users' streams: no updates vs full re-adaptation vs incremental",
    ),
    "tune": (
        "train.tune",
        "hyper-parameter search (Optuna: grid, random, TPE) on validation users",
    ),
    "bandit": (
        "metarec.jobs.bandit",
        "replay evaluation of exploration policies over adapted candidates",
    ),
    "distill": (
        "train.distill",
        "distil a meta-trained teacher run into a smaller student, then meta-train it",
    ),
    "rl train": (
        "train.rl_policy",
        "fit the simulator, train the policy, evaluate on test users",
    ),
    "rl evaluate": ("metarec.jobs.rl_evaluate", "re-evaluate a trained RL run"),
}
GROUPS = {
    "data": "dataset commands",
    "config": "training configs",
    "index": "FAISS index over the catalogue",
    "rl": "a slate policy for long-term reward (REINFORCE)",
}


def chosen_command(argv: list[str]) -> str | None:
    """The registry name that ``argv`` starts with, if any (``["index", "build", ...]``)."""
    words = [word for word in argv[:2] if not word.startswith("-")]
    for length in (2, 1):
        name = " ".join(words[:length])
        if len(words) >= length and name in COMMANDS:
            return name
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, just that command's options are added (and its
    module imported), the others are listed by name."""
    parser = argparse.ArgumentParser(prog="metarec", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="command", required=True)
    nested: dict[str, argparse._SubParsersAction] = {}
    for name, (module, help_text) in COMMANDS.items():
        group, _, sub = name.partition(" ")
        if sub and group not in nested:
            nested[group] = top.add_parser(group, help=GROUPS[group]).add_subparsers(
                dest=f"{group}_command", required=True
            )
        siblings = nested[group] if sub else top
        command = siblings.add_parser(sub or name, help=help_text)
        command.set_defaults(module=module)
        if only in (None, name):
            importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=chosen_command(argv) or "").parse_args(argv)
    command = importlib.import_module(args.module)
    try:
        command.run(command.config_from_args(args, Environment.from_variables(os.environ)))
    except MetarecError as err:
        print(f"metarec: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
