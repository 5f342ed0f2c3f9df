"""Each bad input exits non-zero with one line naming the file, line or field at fault."""

from pathlib import Path

import pytest

from metarec.cli import main
from metarec.eval.report import write_json

BAD = Path(__file__).parent / "bad_inputs"


def custom(interactions: str, items: str | None = None) -> list[str]:
    args = ["--dataset", "custom", "--interactions", str(BAD / interactions)]
    return args + (["--items", str(BAD / items)] if items else [])


# name -> (arguments after `evaluate`, substrings the one-line message must contain)
CASES = {
    "malformed_line": (
        ["--data-dir", str(BAD / "malformed_line")],
        ["u.data:3:", "expected 4 fields", "found 3"],
    ),
    "missing_column": (
        custom("missing_column.csv"),
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
    "datetime_timestamp_in_parquet": (
        custom("datetime_timestamp.parquet"),
        ["datetime_timestamp.parquet:", "field 'timestamp'", "datetime64"],
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
