"""Explanations: the planted history item is found, and `metarec explain` reports them."""

import json

import numpy as np
import pytest

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from metarec.cli import main
from metarec.meta.explain import explain
from metarec.trained_run import TrainedRun

N_TOPICS = 6  # synthetic items: topic = id mod 6, and a user usually goes from i to i + 6


def test_the_planted_item_explains_its_successor(trained_run):
    """Five items of one topic, then one planted item of another: the planted item's usual
    successor is explained above all by the planted item."""
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    method, dataset = run.recommender(), run.dataset
    index_of = {int(raw): position for position, raw in enumerate(dataset.item_ids)}
    cases = 0
    for base in range(N_TOPICS):
        for planted in set(range(N_TOPICS)) - {base}:
            raw = [base + N_TOPICS * k + 1 for k in range(5)] + [planted + N_TOPICS * 7 + 1]
            history = np.array([index_of[item] for item in raw])
            successor = index_of[raw[-1] + N_TOPICS]
            (explanation,) = explain(method, history, np.array([successor]))
            assert int(np.argmax(explanation.contributions)) == len(raw) - 1, (base, planted)
            cases += 1
    assert cases == 30


def test_explain_command_lists_the_top_items_with_their_contributions(trained_run, tmp_path):
    folder, data, data_options = trained_run
    run = TrainedRun(folder / "run", data)
    method, dataset = run.recommender(), run.dataset
    history = dataset.sequences()[11][:6]
    raw = ",".join(str(dataset.item_ids[i]) for i in history)
    output = tmp_path / "explain.json"
    status = main(["explain", "--checkpoint", str(folder / "run"), "--history", raw, "--k", "3",
                   "--output", str(output), *data_options])  # fmt: skip
    assert status == 0
    answer = json.loads(output.read_text())
    scores = method.score([history])[0]
    scores[history] = -np.inf
    top = np.argsort(-scores, kind="stable")[:3]
    assert [row["item_id"] for row in answer["recommendations"]] == list(dataset.item_ids[top])
    for row, explanation in zip(
        answer["recommendations"], explain(method, history, top), strict=True
    ):
        by_item = {c["item_id"]: c["contribution"] for c in row["contributors"]}
        expected = dict(
            zip(dataset.item_ids[history].tolist(), explanation.contributions, strict=True)
        )
        assert by_item == pytest.approx(expected)
        assert [c["contribution"] for c in row["contributors"]] == sorted(
            by_item.values(), reverse=True
        )


def test_a_run_job_without_data_options_reads_the_runs_own_data(trained_run, tmp_path):
    """The run was trained on custom files: given no data option, explain reads those (the
    default used to be ml-100k, whose catalogue the run does not score)."""
    folder, _, data_options = trained_run
    answers = []
    for options in (data_options, []):
        output = tmp_path / f"explain{len(options)}.json"
        argv = ["explain", "--checkpoint", str(folder / "run"), "--user", "12", "--k", "3",
                "--output", str(output), *options]  # fmt: skip
        assert main(argv) == 0
        answers.append(json.loads(output.read_text()))
    assert answers[0] == answers[1]
    assert answers[0]["user_id"] == 12


def test_leave_one_out_scores_come_a_batch_at_a_time(trained_run):
    """Variants scored a few at a time, only the explained columns kept, give the scores
    of all (1 + T, n_items) variants scored at once."""
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    method, history = run.recommender(), run.dataset.sequences()[3][:7]
    items = np.array([0, 5, 9])
    variants = [history] + [np.delete(history, j) for j in range(len(history))]
    whole = method.score(variants)[:, items]
    method.batch_size = 3  # 8 variants: batches of 3, 3 and 2
    for column, explanation in enumerate(explain(method, history, items)):
        assert explanation.score == pytest.approx(whole[0, column], abs=1e-5)
        np.testing.assert_allclose(
            explanation.contributions, whole[0, column] - whole[1:, column], atol=1e-5
        )
