"""Users' own ids in every output, integers or strings, and the report's titles as written.

A tiny run is trained twice on the synthetic dataset, prepared from CSV files: with its
integer ids, and with every id a string (``user-001``, ``sku-001-é``). Per-user evaluation,
index search (by vector and by history), the rerank shards (the run's users, or a
``--histories`` file of raw ids), ``explain`` and the report's sample users must all speak
those ids back in their kind, and a run must refuse data whose ids differ from its own by
one. References are independent: the run's split and full-catalogue scores, mapped to raw
ids by plain indexing.
"""

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from conftest import train_tiny_run

from metarec.cli import main
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.synthetic import synthetic_raw
from metarec.errors import MetarecError
from metarec.jobs.pipeline import PipelineConfig, sample_users
from metarec.jobs.report import RunReport, SampleUser, write_report
from metarec.trained_run import TrainedRun
from retrieval.index import IndexConfig, build_index, load_index, save_index
from retrieval.shards import ShardStore
from train.meta_train import TrainConfig

SUPPORT, TOP_K = 5, 5
RAW_IDS = {  # raw id of the synthetic dataset -> the id the test gives it
    "int": (lambda user: user, lambda item: item),
    "str": (lambda user: f"user-{user:03d}", lambda item: f"sku-{item:03d}-é"),
}
UNKNOWN = {"int": (999_999, 888_888), "str": ("new-user", "sku-none")}  # (user, item)


@dataclass
class IdRun:
    kind: str  # "int" or "str"
    folder: Path
    data: DataConfig
    config: TrainConfig

    @property
    def options(self) -> list[str]:
        return data_options(self.data)

    def dataset(self) -> Dataset:
        return load_dataset(self.data)


def data_options(data: DataConfig) -> list[str]:
    return ["--dataset", "custom", "--interactions", str(data.interactions),
            "--items", str(data.items), "--cache-dir", str(data.cache_dir)]  # fmt: skip


def prepared(folder: Path, user_id, item_id) -> DataConfig:
    """The synthetic dataset with each raw id renamed by ``user_id`` and ``item_id``,
    written as ``--dataset custom`` CSV files into ``folder``; the config that prepares it."""
    raw = synthetic_raw(n_users=80, n_items=60, seed=5)
    for table, rename in ((raw.interactions, {"user_id": user_id, "item_id": item_id}),
                          (raw.items, {"item_id": item_id})):  # fmt: skip
        for column, new_id in rename.items():
            table[column] = [new_id(raw_id) for raw_id in table[column].tolist()]
    interactions, items = raw.write_csv(folder)
    return DataConfig(
        dataset="custom", interactions=interactions, items=items, cache_dir=folder / "cache"
    )


@pytest.fixture(scope="module", params=["int", "str"])
def id_run(request, tmp_path_factory) -> IdRun:
    """A tiny meta-trained run and its flat index, on integer or on string ids."""
    folder = tmp_path_factory.mktemp(f"ids-{request.param}")
    data = prepared(folder, *RAW_IDS[request.param])
    config = train_tiny_run(folder, data, support_sizes=(SUPPORT, 10))
    return IdRun(request.param, folder, data, config)


def check_kind(ids: list, kind: str) -> None:
    """Every id is a Python int (integer ids) or str (string ids), as JSON and Parquet keep it."""
    assert {type(value) for value in ids} == {int if kind == "int" else str}


def top_items(run: TrainedRun, history: np.ndarray, k: int) -> np.ndarray:
    """Full-catalogue top ``k`` item indices after adapting to ``history``; ties to the lower."""
    scores = run.recommender().score([history])[0]
    scores[history] = -np.inf
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


def test_per_user_evaluation_rows_carry_the_users_raw_ids(id_run, tmp_path):
    output = tmp_path / "per_user.parquet"
    command = ["evaluate", *id_run.options, "--methods", "pop,meta-lora", "--checkpoint",
               str(id_run.folder / "run"), "--support-size", str(SUPPORT),
               "--bootstrap-resamples", "10", "--per-user-output", str(output)]  # fmt: skip
    assert main(command) == 0
    run = TrainedRun(id_run.folder / "run", id_run.data)
    expected = run.dataset.user_ids[[case.user for case in run.split(SUPPORT).test]].tolist()
    table = pd.read_parquet(output)
    for method in ("pop", "meta-lora"):
        assert table.loc[table["method"] == method, "user_id"].tolist() == expected
    check_kind(table["user_id"].tolist(), id_run.kind)


@pytest.fixture(scope="module")
def reranked(id_run, tmp_path_factory) -> pd.DataFrame:
    """The rerank job's rows for the run's coldstart test users."""
    output_dir = tmp_path_factory.mktemp("rerank") / "out"
    assert main(rerank_command(id_run, output_dir)) == 0
    manifest = json.loads((output_dir / "manifest.json").read_text())
    return ShardStore(output_dir / "shards", manifest["users"], 4).read()


def rerank_command(id_run: IdRun, output_dir: Path, *extra: str) -> list[str]:
    return ["rerank", "--checkpoint", str(id_run.folder / "run"), "--index",
            str(id_run.folder / "index"), "--output-dir", str(output_dir), "--support-size",
            str(SUPPORT), "--top-k", str(TOP_K), "--candidates", "20", "--shard-users", "4",
            *id_run.options, *extra]  # fmt: skip


def test_rerank_shards_name_users_and_items_by_raw_id(id_run, reranked):
    run = TrainedRun(id_run.folder / "run", id_run.data)
    dataset, cases = run.dataset, run.split(SUPPORT).test
    assert (
        pd.unique(reranked["user_id"]).tolist()
        == dataset.user_ids[[case.user for case in cases]].tolist()
    )
    for case in cases:
        (user_id,) = dataset.user_ids[[case.user]].tolist()
        got = reranked[reranked["user_id"] == user_id].sort_values("rank")["item_id"].tolist()
        assert got == dataset.item_ids[top_items(run, case.history, TOP_K)].tolist()
    check_kind(reranked["item_id"].tolist(), id_run.kind)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_rerank_reads_a_histories_file_of_raw_ids(id_run, tmp_path, capsys, suffix):
    dataset = id_run.dataset()
    position_of = {raw: position for position, raw in enumerate(dataset.item_ids.tolist())}
    new_user, unknown_item = UNKNOWN[id_run.kind]
    histories = {  # raw user id -> raw item ids, oldest first
        **{
            raw: dataset.item_ids[dataset.sequences()[user][:SUPPORT]].tolist()
            for user, raw in zip([3, 1, 7], dataset.user_ids[[3, 1, 7]].tolist(), strict=True)
        },
        new_user: [*dataset.item_ids[[0]].tolist(), unknown_item],
    }
    table = pd.DataFrame(
        [
            (user, item, step)
            for user, items in histories.items()
            for step, item in enumerate(items)
        ],
        columns=["user_id", "item_id", "timestamp"],
    )
    path = tmp_path / f"histories{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path)
    output_dir = tmp_path / "out"
    assert main([*rerank_command(id_run, output_dir), "--histories", str(path)]) == 2
    assert "1 of 4 users failed" in capsys.readouterr().err
    manifest = json.loads((output_dir / "manifest.json").read_text())
    assert manifest["failed"] == {str(new_user): f"unknown item ids {[unknown_item]} in {path}"}
    rows = ShardStore(output_dir / "shards", 4, 4).read()
    run = TrainedRun(id_run.folder / "run", id_run.data)
    for user, items in list(histories.items())[:3]:
        history = np.array([position_of[item] for item in items])
        got = rows[rows["user_id"] == user].sort_values("rank")["item_id"].tolist()
        assert got == dataset.item_ids[top_items(run, history, TOP_K)].tolist()
    check_kind(rows["user_id"].tolist(), id_run.kind)


def test_a_histories_file_with_an_empty_id_names_its_line(id_run, tmp_path, capsys):
    user, item = UNKNOWN[id_run.kind]
    path = tmp_path / "histories.csv"
    path.write_text(f"user_id,item_id\n{user},{item}\n{user},\n")
    assert main([*rerank_command(id_run, tmp_path / "out"), "--histories", str(path)]) == 2
    assert f"{path}:3: field 'item_id': expected an id" in capsys.readouterr().err


def test_index_search_answers_with_raw_item_ids(id_run, tmp_path):
    run = TrainedRun(id_run.folder / "run", id_run.data)
    dataset = run.dataset
    history = dataset.sequences()[5][:SUPPORT]
    search = ["index", "search", "--index", str(id_run.folder / "index"), "--k", "4",
              *id_run.options]  # fmt: skip
    raw_history = ",".join(str(item) for item in dataset.item_ids[history].tolist())
    by_history = [*search, "--checkpoint", str(id_run.folder / "run"), "--history", raw_history]
    assert main([*by_history, "--output", str(tmp_path / "history.json")]) == 0
    (answer,) = json.loads((tmp_path / "history.json").read_text())
    assert [hit["item_id"] for hit in answer] == dataset.item_ids[
        top_items(run, history, 4)
    ].tolist()
    vectors = run.model.item_vectors().detach().numpy()
    np.save(tmp_path / "queries.npy", vectors[[2, 9]])
    by_vector = [*search, "--queries", str(tmp_path / "queries.npy")]
    assert main([*by_vector, "--output", str(tmp_path / "vectors.json")]) == 0
    answers = json.loads((tmp_path / "vectors.json").read_text())
    expected = dataset.item_ids[np.argsort(-(vectors[[2, 9]] @ vectors.T), axis=1)[:, :4]]
    assert [[hit["item_id"] for hit in hits] for hits in answers] == expected.tolist()
    check_kind([hit["item_id"] for hit in answers[0]], id_run.kind)


def test_explain_takes_and_gives_raw_ids(id_run, tmp_path, capsys):
    run = TrainedRun(id_run.folder / "run", id_run.data)
    dataset = run.dataset
    (user_id,) = dataset.user_ids[[4]].tolist()
    history = dataset.sequences()[4][:6]
    explain = ["explain", "--checkpoint", str(id_run.folder / "run"), "--k", "3", *id_run.options]
    output = tmp_path / "by_user.json"
    assert (
        main([*explain, "--user", str(user_id), "--support-size", "6", "--output", str(output)])
        == 0
    )
    answer = json.loads(output.read_text())
    assert answer["user_id"] == user_id
    assert [row["item_id"] for row in answer["history"]] == dataset.item_ids[history].tolist()
    top = dataset.item_ids[top_items(run, history, 3)].tolist()
    assert [row["item_id"] for row in answer["recommendations"]] == top
    contributors = {c["item_id"] for row in answer["recommendations"] for c in row["contributors"]}
    assert contributors == set(dataset.item_ids[history].tolist())
    raw_history = ",".join(str(row["item_id"]) for row in answer["history"])
    output = tmp_path / "by_history.json"
    assert main([*explain, "--history", raw_history, "--output", str(output)]) == 0
    assert json.loads(output.read_text())["recommendations"] == answer["recommendations"]
    assert main([*explain, "--user", "nobody"]) == 2
    assert f"--user nobody: no such user in {dataset.name}" in capsys.readouterr().err


def test_the_reports_sample_users_are_the_reranks_by_raw_id(id_run, reranked):
    config = PipelineConfig(train=id_run.config, support_sizes=[SUPPORT], sample_users=2,
                            rerank_support_size=SUPPORT)  # fmt: skip
    users = sample_users(config, reranked)
    run = TrainedRun(id_run.folder / "run", id_run.data)
    dataset, cases = run.dataset, run.split(SUPPORT).test[:2]
    titles = dataset.titles()
    for user, case in zip(users, cases, strict=True):
        (user_id,) = dataset.user_ids[[case.user]].tolist()
        assert user.user_id == user_id
        top = top_items(run, case.history, TOP_K)
        assert [title for title, *_ in user.recommendations] == [titles[i] for i in top]


def test_a_run_refuses_data_whose_ids_differ_by_one(id_run, tmp_path, capsys):
    user_id, item_id = RAW_IDS[id_run.kind]
    renamed = {"int": lambda raw: raw + 10_000, "str": lambda raw: f"{raw}-b"}[id_run.kind]
    original = id_run.dataset().fingerprint()
    # user 2 is renamed: the interactions' fingerprint changes, the items' does not
    users_differ = prepared(
        tmp_path / "users",
        lambda user: renamed(user_id(user)) if user == 2 else user_id(user),
        item_id,
    )
    changed = load_dataset(users_differ).fingerprint()
    assert changed["items"] == original["items"]
    assert main(rerank_command(id_run, tmp_path / "out", *data_options(users_differ))) == 2
    assert (
        f"interactions fingerprint {original['interactions']} (given {changed['interactions']})"
        in capsys.readouterr().err
    )
    # item 3 is renamed: the items' fingerprint changes
    items_differ = prepared(
        tmp_path / "items",
        user_id,
        lambda item: renamed(item_id(item)) if item == 3 else item_id(item),
    )
    changed = load_dataset(items_differ).fingerprint()
    explain = ["explain", "--checkpoint", str(id_run.folder / "run"), "--user", "1"]
    assert main([*explain, *data_options(items_differ)]) == 2
    assert (
        f"trained on another items table (fingerprint {original['items']}, the data's is "
        f"{changed['items']})" in capsys.readouterr().err
    )


def test_an_index_folder_keeps_string_ids_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((30, 8)).astype(np.float32)
    item_ids = np.array([f"sku-{i:02d}-ü" for i in rng.permutation(30)], dtype=object)
    config = IndexConfig(kind="flat")
    save_index(tmp_path / "index", build_index(vectors, config), item_ids, config, "test")
    stored = np.load(tmp_path / "index" / "item_ids.npy", allow_pickle=False)
    assert stored.tolist() == item_ids.tolist()
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    ids, _ = load_index(tmp_path / "index").search(queries, 5)
    expected = item_ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :5]]
    assert ids.tolist() == expected.tolist()
    mixed = np.array([1, "sku-01"] + ["x"] * 28, dtype=object)
    with pytest.raises(
        MetarecError, match="item ids must be all integers or all strings, not mixed-integer values"
    ):
        save_index(tmp_path / "mixed", build_index(vectors, config), mixed, config, "test")
    np.save(tmp_path / "ids.npy", item_ids.astype(str))
    np.save(tmp_path / "vectors.npy", vectors)
    build = ["index", "build", "--vectors", str(tmp_path / "vectors.npy"), "--item-ids",
             str(tmp_path / "ids.npy"), "--output", str(tmp_path / "built")]  # fmt: skip
    assert main(build) == 0
    assert load_index(tmp_path / "built").search(queries, 5)[0].tolist() == expected.tolist()


def test_the_markdown_report_shows_titles_as_written(tmp_path):
    titles = ["Devil's Advocate", "Tom & Jerry <uncut>", "Left | Right", "Two\nlines"]
    user = SampleUser(
        user_id="u'1",
        history=titles[:2],
        recommendations=[(titles[2], 1.5, 0.25, [(titles[0], 0.5), (titles[1], -0.1)])],
        relevant_hits=[titles[3]],
    )
    report = RunReport("run", "intro", "| m |\n|---|", {"step": 1.0}, {}, [user], {})
    write_report(tmp_path, report)
    markdown = (tmp_path / "report.md").read_text()
    assert "### User u'1" in markdown
    assert "History (2 items, oldest first): Devil's Advocate; Tom & Jerry <uncut>" in markdown
    reasons = "Devil's Advocate (+0.50), Tom & Jerry <uncut> (-0.10)"
    assert f"| 1 | Left \\| Right | 1.50 | +0.25 | {reasons} |" in markdown
    assert "held out): Two lines." in markdown
    page = (tmp_path / "report.html").read_text()
    assert "<uncut>" not in page  # escaped for HTML, so never markup
    (row,) = [row for row in re.findall(r"<tr>(.*?)</tr>", page, re.S) if "Right" in row]
    cells = [html.unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", row, re.S)]
    assert cells == ["1", "Left | Right", "1.50", "+0.25", reasons]
