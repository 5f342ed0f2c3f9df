"""``metarec explain``: why a run recommends what it does to one user (leave-one-out).

Adapts the run to one history (a user's first ``support_size`` interactions, or raw item
ids given with ``--history``), ranks the unseen items and, for each of the top ``k``,
measures how much adaptation moved its score and which history items added most
(`metarec.meta.explain`). Ids, given and written, are the dataset's own (integers or
strings, as its files hold them).

    metarec explain --checkpoint runs/demo --user 1 --k 5
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metarec.data.prepare import DataConfig
from metarec.errors import MetarecError
from metarec.eval.report import write_json
from metarec.meta.explain import explained_items
from metarec.options import (
    Environment,
    add_run_options,
    check_writable,
    history_indices,
    id_positions,
    job_config,
    name_list,
)
from metarec.trained_run import TrainedRun


@dataclass
class ExplainConfig:
    """Which run, and whose history: a user of the dataset or raw item ids."""

    run: Path
    data: DataConfig | None = None  # None: the run's own data, as it was trained
    user: str | None = None  # raw user id: explains its first support_size interactions
    support_size: int = 10
    history: list[str] | None = None  # raw item ids, oldest first
    k: int = 5  # recommendations to explain
    output: Path | None = None  # the explanation as JSON
    trust_remote_code: bool = False
    device: str = "cpu"  # where the model computes (--device, resolved by config_from_args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, "metarec train run dir")
    parser.add_argument("--user", help="raw user id: explains its first interactions")
    parser.add_argument("--support-size", type=int, default=10, help="with --user")
    parser.add_argument("--history", type=name_list, help="raw item ids, oldest first")
    parser.add_argument("--k", type=int, default=5, help="recommendations to explain")
    parser.add_argument("--output", type=Path, help="the explanation as JSON")


def config_from_args(args: argparse.Namespace, env: Environment) -> ExplainConfig:
    return job_config(ExplainConfig, args, env)


def run(config: ExplainConfig) -> None:
    trained = TrainedRun(config.run, config.data, config.trust_remote_code, config.device)
    dataset, method = trained.dataset, trained.recommender()
    if (config.user is None) == (config.history is None):
        raise MetarecError("explain: give --user (a user id of the dataset) or --history")
    user_id = None
    if config.history is not None:
        history = history_indices(dataset, config.history)
    else:
        (user,) = id_positions(dataset.user_ids, [config.user])
        if user < 0:
            raise MetarecError(f"--user {config.user}: no such user in {dataset.name}")
        (user_id,) = dataset.user_ids[[user]].tolist()
        history = dataset.sequences()[user][: config.support_size]
    scores = method.score([history])[0]
    scores[history] = -np.inf
    items = np.argsort(-scores, kind="stable")[: config.k]
    title = dataset.titles()
    answer = {
        "user_id": user_id,
        "history": [
            {"item_id": item_id, "title": title[i]}
            for i, item_id in zip(history, dataset.item_ids[history].tolist(), strict=True)
        ],
        "recommendations": explained_items(method, history, items, title, dataset.item_ids),
    }
    print(f"history: {'; '.join(title[i] for i in history)}")
    print("| # | item | score | adaptation Δ | history items that added most |")
    print("|---|---|---|---|---|")
    for row in answer["recommendations"]:
        reasons = ", ".join(
            f"{c['title']} ({c['contribution']:+.3f})" for c in row["contributors"][:3]
        )
        print(
            f"| {row['rank']} | {row['title']} | {row['score']:.3f} | "
            f"{row['adaptation_delta']:+.3f} | {reasons} |"
        )
    if config.output:
        check_writable(config.output)
        write_json(config.output, answer)
