"""Online replay: each strategy's ranks against an independent per-event computation."""

import json

import numpy as np
import pytest

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from metarec.cli import main
from metarec.eval.metrics import relevant_ranks
from metarec.meta.online import OnlineConfig, replay
from metarec.trained_run import TrainedRun

CONFIG = OnlineConfig(start=4, events=5, window=3, batch_size=8)


@pytest.fixture(scope="module")
def streams_and_method(trained_run):
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    method, dataset = run.recommender(), run.dataset
    return [s for s in dataset.sequences()[:12]], method


def expected_ranks(method, streams):
    """Re-adapt from the initialisation on every prefix with `LLMRecommender.score`."""
    ranks = np.zeros((len(streams), CONFIG.events))
    for column, t in enumerate(range(CONFIG.start, CONFIG.start + CONFIG.events)):
        histories = [s[:t] for s in streams]
        scores = method.score(histories)
        excluded = np.zeros(scores.shape, dtype=bool)
        for row, history in enumerate(histories):
            excluded[row, history] = True
        targets = np.array([[s[t]] for s in streams])
        ranks[:, column] = relevant_ranks(scores, targets, excluded)[:, 0]
    return ranks


def test_full_readaptation_equals_scoring_each_prefix_from_scratch(streams_and_method):
    streams, method = streams_and_method
    summary, ranks = replay(method, streams, "full", CONFIG)
    np.testing.assert_array_equal(ranks, expected_ranks(method, streams))
    assert summary["adaptation_token_steps"] == len(streams) * method.inner_steps * sum(
        range(CONFIG.start, CONFIG.start + CONFIG.events + 1)
    )


def test_strategies_differ_and_count_their_compute(streams_and_method):
    streams, method = streams_and_method
    none, none_ranks = replay(method, streams, "none", CONFIG)
    incremental, incremental_ranks = replay(method, streams, "incremental", CONFIG)
    full, full_ranks = replay(method, streams, "full", CONFIG)
    initial = len(streams) * CONFIG.start * method.inner_steps
    assert none["adaptation_token_steps"] == initial
    assert (
        incremental["adaptation_token_steps"]
        == initial + len(streams) * CONFIG.window * CONFIG.events
    )
    assert (
        none["adaptation_token_steps"]
        < incremental["adaptation_token_steps"]
        < full["adaptation_token_steps"]
    )
    np.testing.assert_array_equal(none_ranks[:, 0], full_ranks[:, 0])  # same weights at event 1
    assert (incremental_ranks != none_ranks).any()  # the updates changed some ranks


def test_online_command_writes_every_strategy(trained_run, tmp_path):
    folder, _, data_options = trained_run
    output = tmp_path / "online.json"
    status = main(["online", "--checkpoint", str(folder / "run"), *data_options, "--start", "4",
                   "--events", "5", "--window", "3", "--output", str(output)])  # fmt: skip
    assert status == 0
    results = json.loads(output.read_text())["strategies"]
    assert list(results) == ["none", "full", "incremental"]
    assert all(
        0 <= row["ndcg@10"] <= 1 and row["events"] == 5 * row["users"] for row in results.values()
    )
