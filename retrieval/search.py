"""``metarec index search``: ad-hoc queries against an index folder.

Either query vectors from a ``.npy`` file, or a trained run adapted to one ``--history``
(raw item ids, oldest first) whose adapted state queries the index and whose model rescores
the candidates, as the batch rerank job does for each user. Answers name items by the ids
the index (or the run's dataset) holds, integers or strings as they are.

    metarec index search --index runs/tiny/index --queries queries.npy --k 10
    metarec index search --index runs/tiny/index --checkpoint runs/tiny --history 50,172,133
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metarec.data.prepare import DataConfig
from metarec.errors import MetarecError
from metarec.eval.report import write_json
from metarec.options import (
    Environment,
    add_data_options,
    add_device_option,
    add_remote_code_option,
    check_writable,
    history_indices,
    job_config,
    name_list,
)
from metarec.trained_run import TrainedRun
from retrieval.index import load_index
from retrieval.rerank import rerank_batch


@dataclass
class SearchConfig:
    """An index and what queries it: vectors from a file, or a run adapted to a history."""

    index: Path
    queries: Path | None = None  # (Q, d) float32 .npy
    run: Path | None = None  # a metarec train run dir, with history
    history: list[str] | None = None  # raw item ids, oldest first
    data: DataConfig | None = None  # None: the run's own data, as it was trained
    k: int = 10
    output: Path | None = None  # answers as JSON
    trust_remote_code: bool = False
    device: str = "cpu"  # where the model computes and FAISS searches when it can (--device)


def _hits(item_ids: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> list[dict]:
    """One query's answer: the raw id (from ``item_ids`` by row) and score of each found
    row of ``rows`` (k,) with ``scores`` (k,), best first; rows of -1 (no item) are left out."""
    found = rows >= 0
    ids = item_ids[rows[found]].tolist()
    return [{"item_id": i, "score": float(v)} for i, v in zip(ids, scores[found], strict=True)]


def vector_answers(config: SearchConfig) -> list[list[dict]]:
    """The index's top ``k`` item ids and scores for each query vector of the file."""
    index = load_index(config.index, device=config.device)
    try:
        queries = np.load(config.queries, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise MetarecError(f"{config.queries}: cannot read queries ({err})") from None
    rows, scores = index.search_rows(np.atleast_2d(queries), config.k)
    return [_hits(index.item_ids, row, values) for row, values in zip(rows, scores, strict=True)]


def history_answer(config: SearchConfig) -> list[dict]:
    """The run's top ``k`` items, with text, for a user adapted to ``config.history``."""
    if not config.history:
        raise MetarecError("index search --checkpoint needs --history ITEM,ITEM,...")
    run = TrainedRun(config.run, config.data, config.trust_remote_code, config.device)
    index = load_index(config.index, encoder=run.fingerprint, device=config.device)
    dataset = run.dataset
    history = history_indices(dataset, config.history)
    method = run.recommender()
    with method.model.frozen_item_vectors():
        items, scores = rerank_batch(method, index, [history], config.k, config.k)
    hits = _hits(dataset.item_ids, items[0], scores[0])
    found = items[0][items[0] >= 0]
    return [{**hit, "text": dataset.item_text[i]} for hit, i in zip(hits, found, strict=True)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_options(parser)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=Path, help="(Q, d) float32 .npy of query vectors")
    parser.add_argument("--checkpoint", type=Path, help="run dir: adapt to --history and search")
    parser.add_argument("--history", type=name_list, help="raw item ids, oldest first")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--output", type=Path, help="answers as JSON")
    add_remote_code_option(parser)
    add_device_option(parser)


def config_from_args(args: argparse.Namespace, env: Environment) -> SearchConfig:
    return job_config(SearchConfig, args, env)


def run(config: SearchConfig) -> None:
    if (config.queries is None) == (config.run is None):
        raise MetarecError("index search: give --queries, or --checkpoint with --history")
    answers = vector_answers(config) if config.queries is not None else [history_answer(config)]
    for number, answer in enumerate(answers):
        print(f"query {number}:")
        for rank, hit in enumerate(answer, start=1):
            text = f"  {hit['text']}" if "text" in hit else ""
            print(f"  {rank:3d}  {hit['item_id']:>10}  {hit['score']:9.4f}{text}")
    if config.output:
        check_writable(config.output)
        write_json(config.output, answers)
