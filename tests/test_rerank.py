"""The index build and batch rerank jobs on a tiny trained run over synthetic users.

The references are independent paths: full-catalogue scores from `LLMRecommender.score`,
every user adapted in one batch on the training loss's whole softmax, a stock peft model
adapted user by user, and an uninterrupted single-process run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from metarec.cli import main
from metarec.data.episodes import collate
from metarec.data.prepare import load_dataset
from metarec.data.splits import coldstart_split
from metarec.meta import personalise
from metarec.meta.algorithms import inner_loop_settings
from metarec.meta.inner_loop import adapt
from metarec.meta.peft_loop import PeftUserLoop
from metarec.meta.personalise import last_states, support_loss_fn
from metarec.models.lora import initial_fast_weights
from metarec.trained_run import TrainedRun
from retrieval.index import load_index
from retrieval.rerank import rerank_batch
from retrieval.shards import ShardStore

REPO = Path(__file__).resolve().parents[1]
SUPPORT, TOP_K = 5, 5


def rerank_command(trained_run, output_dir, *extra):
    folder, _, data_options = trained_run
    return [
        "rerank", "--checkpoint", str(folder / "run"), "--index", str(folder / "index"),
        "--output-dir", str(output_dir), "--support-size", str(SUPPORT), "--top-k", str(TOP_K),
        "--candidates", "20", "--batch-size", "4", "--shard-users", "5", *data_options, *extra,
    ]  # fmt: skip


def output_rows(output_dir: Path) -> pd.DataFrame:
    manifest = json.loads((output_dir / "manifest.json").read_text())
    return ShardStore(output_dir / "shards", manifest["users"], 5).read()


@pytest.fixture(scope="module")
def uninterrupted(trained_run, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("whole") / "out"
    assert main(rerank_command(trained_run, output_dir)) == 0
    return output_dir


def test_two_stage_top_k_equals_full_catalogue_ranking(trained_run, uninterrupted):
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    method, dataset = run.recommender(), run.dataset
    split = coldstart_split(dataset.sequences(), dataset.n_items, SUPPORT, 10, 0)
    scores = method.score([case.history for case in split.test])
    rows = output_rows(uninterrupted)
    assert rows["user_id"].nunique() == len(split.test) > 10
    for case, user_scores in zip(split.test, scores, strict=True):
        user_scores[case.history] = -np.inf
        expected = np.lexsort((np.arange(len(user_scores)), -user_scores))[:TOP_K]
        got = rows[rows["user_id"] == dataset.user_ids[case.user]].sort_values("rank")
        np.testing.assert_array_equal(got["item_id"], dataset.item_ids[expected])
        np.testing.assert_allclose(got["score"], user_scores[expected], rtol=0, atol=1e-5)


def test_streamed_job_equals_adapting_every_user_at_once_on_the_whole_softmax(
    trained_run, tmp_path, monkeypatch
):
    # the job: users 4 at a time in shards of 5, the support softmax 7 items at a time
    monkeypatch.setattr(personalise, "SOFTMAX_CHUNK_ITEMS", 7)
    assert main(rerank_command(trained_run, tmp_path / "out")) == 0
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    method, dataset = run.recommender(), run.dataset
    model = method.model
    cases = coldstart_split(dataset.sequences(), dataset.n_items, SUPPORT, 10, 0).test
    histories = [case.history for case in cases]
    # the reference: one batch of every user, the training loss over (U, T, N) scores
    batch = collate(histories, [np.empty(0, dtype=np.int64)] * len(histories))
    start = {
        name: (a.detach().requires_grad_(), b.detach().requires_grad_())
        for name, (a, b) in initial_fast_weights(model.lora_layers, len(histories)).items()
    }
    lr, proximal = inner_loop_settings(method.meta, method.rates)
    fast = adapt(support_loss_fn(model, batch), start, method.inner_steps, lr, False, proximal)
    with torch.no_grad():
        scores = model.scores(last_states(model, batch, fast)).numpy()
    rows = output_rows(tmp_path / "out")
    assert rows["user_id"].nunique() == len(cases) > 10
    for case, user_scores in zip(cases, scores, strict=True):
        user_scores[case.history] = -np.inf
        expected = np.lexsort((np.arange(len(user_scores)), -user_scores))[:TOP_K]
        got = rows[rows["user_id"] == dataset.user_ids[case.user]].sort_values("rank")
        np.testing.assert_array_equal(got["item_id"], dataset.item_ids[expected])
        np.testing.assert_allclose(got["score"], user_scores[expected], rtol=0, atol=1e-5)


def test_batched_rerank_scores_equal_a_per_user_peft_loop(trained_run):
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    method, dataset = run.recommender(), run.dataset
    index = load_index(folder / "index")
    histories = [sequence[:SUPPORT] for sequence in dataset.sequences()[:12]]
    with method.model.frozen_item_vectors():
        items, scores = rerank_batch(method, index, histories, 20, TOP_K)
    loop = PeftUserLoop(method.model, folder / "run" / "checkpoint" / "adapter", method.meta)
    unadapted = []
    for history, user_items, user_scores in zip(histories, items, scores, strict=True):
        state = loop.adapted_state(history, method.inner_steps)
        np.testing.assert_allclose(loop.scores(state, user_items), user_scores, atol=1e-4)
        unadapted.append(loop.scores(loop.adapted_state(history, 0), user_items))
    assert np.abs(np.array(unadapted) - scores).max() > 1e-3  # adaptation changed the scores


def test_killed_job_reruns_to_the_uninterrupted_output(trained_run, uninterrupted, tmp_path):
    output_dir = tmp_path / "out"
    command = [sys.executable, "-m", "metarec.cli", *rerank_command(trained_run, output_dir)]
    killed = subprocess.run([*command, "--kill-after-shards", "2"], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (output_dir / "manifest.json").exists()
    assert len(list((output_dir / "shards").glob("part-*.json"))) == 2
    first_shard = output_dir / "shards" / "part-00000.parquet"
    written = first_shard.stat().st_mtime_ns
    # a damaged finished shard is redone too, not trusted
    (output_dir / "shards" / "part-00001.parquet").write_bytes(b"truncated")
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert first_shard.stat().st_mtime_ns == written  # the intact shard was skipped
    pd.testing.assert_frame_equal(output_rows(output_dir), output_rows(uninterrupted))


def test_unknown_items_fail_their_user_by_name_and_keep_the_rest(trained_run, tmp_path, capsys):
    folder, data, _ = trained_run
    dataset = load_dataset(data)
    sequences = dataset.sequences()
    histories = pd.DataFrame(
        [
            {"user_id": int(dataset.user_ids[user]), "item_id": int(dataset.item_ids[item]),
             "timestamp": position}
            for user in range(3) for position, item in enumerate(sequences[user][:SUPPORT])
        ]
        + [{"user_id": 999_999, "item_id": 888_888, "timestamp": 0}]
    )  # fmt: skip
    path = tmp_path / "histories.csv"
    histories.to_csv(path, index=False)
    output_dir = tmp_path / "out"
    assert main([*rerank_command(trained_run, output_dir), "--histories", str(path)]) == 2
    assert "1 of 4 users failed" in capsys.readouterr().err
    manifest = json.loads((output_dir / "manifest.json").read_text())
    assert manifest["failed"] == {"999999": f"unknown item ids [888888] in {path}"}
    assert output_rows(output_dir)["user_id"].nunique() == 3
    # the same output dir with other settings is another job, refused
    assert main([*rerank_command(trained_run, output_dir, "--top-k", "3")]) == 2
    assert "holds another job" in capsys.readouterr().err


def test_index_from_another_checkpoint_is_refused(trained_run, tmp_path, capsys):
    folder, _, data_options = trained_run
    vectors = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    build = ["index", "build", "--vectors", str(tmp_path / "vectors.npy"), "--output"]
    assert main([*build, str(tmp_path / "index"), *data_options]) == 0
    command = rerank_command(trained_run, tmp_path / "out")
    command[command.index("--index") + 1] = str(tmp_path / "index")
    assert main(command) == 2
    assert "built with encoder 'external'" in capsys.readouterr().err


@pytest.mark.distributed
def test_two_ranks_write_the_single_process_output(trained_run, uninterrupted, tmp_path):
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
        "-m", "metarec.cli",
        *rerank_command(trained_run, tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    pd.testing.assert_frame_equal(output_rows(tmp_path / "out"), output_rows(uninterrupted))


def test_index_search_for_a_history_lists_the_full_catalogue_top_k(trained_run, tmp_path):
    folder, data, data_options = trained_run
    run = TrainedRun(folder / "run", data)
    method, dataset = run.recommender(), run.dataset
    history = dataset.sequences()[7][:SUPPORT]
    raw_history = ",".join(str(dataset.item_ids[item]) for item in history)
    command = ["index", "search", "--index", str(folder / "index"), "--checkpoint",
               str(folder / "run"), "--history", raw_history, "--k", "4",
               "--output", str(tmp_path / "answers.json"), *data_options]  # fmt: skip
    assert main(command) == 0
    answers = json.loads((tmp_path / "answers.json").read_text())
    scores = method.score([history])[0]
    scores[history] = -np.inf
    expected = np.lexsort((np.arange(len(scores)), -scores))[:4]
    assert [hit["item_id"] for hit in answers[0]] == dataset.item_ids[expected].tolist()


def test_items_older_than_the_model_window_are_still_excluded(trained_run):
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    method, dataset = run.recommender(), run.dataset
    method.model.config.max_len = 3  # the model reads 3 items; all 12 are the user's past
    index = load_index(folder / "index")
    histories = [sequence[:12] for sequence in dataset.sequences()[:8]]
    with method.model.frozen_item_vectors():
        items, _ = rerank_batch(method, index, histories, 40, 20)
    for history, recommended in zip(histories, items, strict=True):
        assert not set(history) & set(recommended[recommended >= 0])
