"""Users' own data: string ids, ISO times, Parquet folders, saved `datasets` splits, TSV,
column names, dedup policies, and the one-line errors of each new kind of bad input."""

import csv
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metarec.cli import main
from metarec.config import from_mapping
from metarec.data.custom import ColumnNames, load_custom
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.preprocess import PreprocessOptions
from metarec.data.tables import Column, read_csv_with_header
from metarec.errors import ConfigError

ROWS = [  # user, item, seconds, ISO form of the same instant, rating
    ("u2", "B0003", 1_577_836_800, "2020-01-01", 4.0),
    ("u1", "B0001", 1_577_880_000, "2020-01-01T12:00:00Z", 5.0),
    ("u1", "B0002", 1_577_872_800, "2020-01-01T12:00:00+02:00", 3.0),
    ("u2", "B0001", 1_577_923_200, "2020-01-02 00:00:00", 2.0),
    ("u1", "B0003", 1_577_872_800, "2020-01-01T10:00:00", 1.0),
]


def write_interactions(path: Path, rows=ROWS, time: str = "seconds") -> Path:
    """``rows`` as a CSV (or TSV, by suffix) with the seconds or their ISO 8601 form."""
    separator = "\t" if path.suffix == ".tsv" else ","
    lines = ["user_id,item_id,timestamp,rating".replace(",", separator)]
    for user, item, seconds, iso, rating in rows:
        when = seconds if time == "seconds" else iso
        lines.append(separator.join([user, item, str(when), str(rating)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def prepared(path: Path, tmp_path: Path, **options) -> Dataset:
    config = DataConfig(
        dataset="custom", interactions=path, cache_dir=tmp_path / "cache", **options
    )
    return load_dataset(config)


def raw_histories(dataset: Dataset) -> list[tuple]:
    """Each interaction as (raw user, raw item, timestamp), in the dataset's order."""
    frame = dataset.interactions
    users = dataset.user_ids[frame["user"]]
    items = dataset.item_ids[frame["item"]]
    return list(zip(users.tolist(), items.tolist(), frame["timestamp"].tolist(), strict=True))


def test_string_ids_round_trip_through_prepare_save_and_load(tmp_path):
    dataset = prepared(write_interactions(tmp_path / "s.csv"), tmp_path)
    expected = sorted((user, item, seconds) for user, item, seconds, _, _ in ROWS)
    # sorted by (user, time, item): the reference orders the same tuples in plain Python
    assert raw_histories(dataset) == sorted(expected, key=lambda row: (row[0], row[2], row[1]))
    assert dataset.user_ids.tolist() == ["u1", "u2"] and dataset.user_ids.dtype == object
    assert dataset.item_ids.tolist() == ["B0001", "B0002", "B0003"]
    assert dataset.item_positions() == {"B0001": 0, "B0002": 1, "B0003": 2}

    dataset.save(tmp_path / "saved")
    loaded = Dataset.load(tmp_path / "saved")
    pd.testing.assert_frame_equal(loaded.interactions, dataset.interactions)
    assert loaded.user_ids.dtype == object and loaded.user_ids.tolist() == ["u1", "u2"]
    assert loaded.item_ids.tolist() == dataset.item_ids.tolist()
    assert loaded.fingerprint() == dataset.fingerprint()

    renamed = [("u2x" if user == "u2" else user, *rest) for user, *rest in ROWS]
    other = prepared(write_interactions(tmp_path / "renamed.csv", renamed), tmp_path)
    pd.testing.assert_frame_equal(other.interactions, dataset.interactions)  # same indices
    assert other.fingerprint()["interactions"] != dataset.fingerprint()["interactions"]
    assert other.fingerprint()["items"] == dataset.fingerprint()["items"]


def test_text_id_fingerprints_do_not_run_ids_together(tmp_path):
    def fingerprint(user_ids):
        interactions = pd.DataFrame({"user": [0, 1], "item": [0, 0], "timestamp": [1, 2]})
        ids = np.array(user_ids, dtype=object)
        return Dataset("d", interactions, ids, np.array(["i"], dtype=object), ["i"]).fingerprint()

    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])
    assert fingerprint(["ab", "c"]) == fingerprint(["ab", "c"])


@pytest.mark.integration
def test_ml100k_integer_ids_give_the_dataset_they_always_did(ml100k_dir, tmp_path):
    dataset = load_dataset(DataConfig(data_dir=ml100k_dir, cache_dir=tmp_path))
    # an independent reading of the release with pandas, ordered and numbered by hand
    ratings = pd.read_csv(
        ml100k_dir / "ml-100k" / "u.data", sep="\t", names=["u", "i", "r", "t"], dtype=np.int64
    )
    ratings = ratings.sort_values(["u", "t", "i"], kind="stable")
    user_ids, users = np.unique(ratings["u"].to_numpy(), return_inverse=True)
    items = pd.read_csv(
        ml100k_dir / "ml-100k" / "u.item", sep="|", header=None, encoding="iso-8859-1"
    )
    item_ids = items[0].to_numpy()
    expected = pd.DataFrame(
        {
            "user": users.astype(np.int64),
            "item": np.searchsorted(item_ids, ratings["i"].to_numpy()).astype(np.int64),
            "timestamp": ratings["t"].to_numpy(),
            "rating": ratings["r"].to_numpy(dtype=np.float64),
        }
    )
    pd.testing.assert_frame_equal(dataset.interactions, expected)
    assert dataset.user_ids.dtype == np.int64 and dataset.item_ids.dtype == np.int64
    np.testing.assert_array_equal(dataset.user_ids, user_ids)
    np.testing.assert_array_equal(dataset.item_ids, item_ids)
    # integer ids are fingerprinted as their int64 bytes, as runs trained before recorded
    digest = hashlib.sha256()
    for column in ("user", "item", "timestamp"):
        digest.update(expected[column].to_numpy().tobytes())
    digest.update(user_ids.astype(np.int64).tobytes())
    assert dataset.fingerprint()["interactions"] == digest.hexdigest()[:16]
    assert dataset.report["dedup"] == "first" and dataset.report["timestamps"] == "timestamp"


def test_iso_dates_and_epoch_seconds_give_the_same_dataset(tmp_path):
    seconds = prepared(write_interactions(tmp_path / "seconds.csv"), tmp_path)
    iso = prepared(write_interactions(tmp_path / "iso.csv", time="iso"), tmp_path)
    pd.testing.assert_frame_equal(iso.interactions, seconds.interactions)
    assert raw_histories(iso) == raw_histories(seconds)


def test_parquet_datetimes_read_as_utc_seconds():
    path = Path(__file__).parent / "bad_inputs" / "datetime_timestamp.parquet"  # once refused
    assert load_custom(path).interactions["timestamp"].tolist() == [1_577_836_800, 1_577_923_200]


@pytest.mark.parametrize(
    "times",
    [
        ["1.7", "1.2", "3"],
        ["1970-01-01T00:00:01.7", "1970-01-01T00:00:01.2Z", "1970-01-01T00:00:03"],
    ],
)
def test_fractions_of_a_second_order_histories_then_become_whole_seconds(tmp_path, times):
    rows = "\n".join(f"1,{item},{time}" for item, time in zip((10, 20, 30), times, strict=True))
    path = tmp_path / "t.csv"
    path.write_text(f"user_id,item_id,timestamp\n{rows}\n")
    dataset = prepared(path, tmp_path)
    # 1.2 s before 1.7 s, although item 10 < item 20 would win a tie of whole seconds
    assert raw_histories(dataset) == [(1, 20, 1), (1, 10, 1), (1, 30, 3)]


def test_tsv_and_csv_give_the_same_dataset(tmp_path):
    from_csv = prepared(write_interactions(tmp_path / "s.csv"), tmp_path)
    from_tsv = prepared(write_interactions(tmp_path / "s.tsv"), tmp_path)
    pd.testing.assert_frame_equal(from_tsv.interactions, from_csv.interactions)
    assert from_tsv.user_ids.tolist() == from_csv.user_ids.tolist()


def as_table(rows=ROWS) -> pa.Table:
    return pa.table(
        {
            "reviewer": [row[0] for row in rows],
            "asin": [row[1] for row in rows],
            "unix_time": pa.array([row[2] for row in rows], pa.int64()),
            "overall": [row[4] for row in rows],
        }
    )


MAPPED = {
    "user_col": "reviewer",
    "item_col": "asin",
    "time_col": "unix_time",
    "rating_col": "overall",
}


def test_parquet_folder_of_parts_reads_as_one_table_and_errors_name_the_part(tmp_path):
    table = as_table()
    folder = tmp_path / "parts"
    (folder / "day=2").mkdir(parents=True)
    pq.write_table(table.slice(0, 2), folder / "part-00000.parquet")
    pq.write_table(table.slice(2), folder / "day=2" / "part-00001.parquet")
    from_parts = prepared(folder, tmp_path, **MAPPED)
    reference = prepared(write_interactions(tmp_path / "s.csv"), tmp_path)
    pd.testing.assert_frame_equal(from_parts.interactions, reference.interactions)
    assert load_custom(folder, names=ColumnNames("reviewer", "asin")).interactions[
        "line"
    ].tolist() == [1, 2, 3, 4, 5]  # rows numbered across the parts


def save_like_datasets(table: pa.Table, folder: Path, shards: int = 1, split: str = "train"):
    """``table`` as `datasets`' ``Dataset.save_to_disk`` lays it out (datasets 5.2): Arrow
    IPC stream shards ``data-XXXXX-of-NNNNN.arrow``, state.json, dataset_info.json."""
    folder.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    files = [f"data-{index:05d}-of-{shards:05d}.arrow" for index in range(shards)]
    for name, start, stop in zip(files, bounds[:-1], bounds[1:], strict=True):
        with pa.ipc.new_stream(folder / name, table.schema) as writer:
            writer.write_table(table.slice(start, stop - start))
    state = {
        "_data_files": [{"filename": name} for name in files],
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": split,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "features": {}}))


def test_saved_datasets_split_and_dataset_dict_read_like_the_csv(tmp_path):
    reference = prepared(write_interactions(tmp_path / "s.csv"), tmp_path)
    save_like_datasets(as_table(), tmp_path / "saved", shards=2)
    from_saved = prepared(tmp_path / "saved", tmp_path, **MAPPED)
    pd.testing.assert_frame_equal(from_saved.interactions, reference.interactions)

    save_like_datasets(as_table(), tmp_path / "dict" / "train")
    save_like_datasets(as_table(ROWS[:1]), tmp_path / "dict" / "test", split="test")
    (tmp_path / "dict" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    from_split = prepared(tmp_path / "dict" / "train", tmp_path, **MAPPED)
    pd.testing.assert_frame_equal(from_split.interactions, reference.interactions)


def test_column_names_map_the_users_own_columns_and_item_text(tmp_path):
    items = tmp_path / "meta.csv"
    items.write_text(
        "asin,brand,title,price\nB0001,Acme,Anvil,9\nB0002,Acme,Rope,2\nB0003,Zed,Kite,4\n"
    )
    interactions = tmp_path / "reviews.parquet"
    pq.write_table(as_table(), interactions)
    config = DataConfig(
        dataset="custom",
        interactions=interactions,
        items=items,
        cache_dir=tmp_path / "cache",
        item_text_cols=["title", "brand"],
        **MAPPED,
    )
    dataset = load_dataset(config)
    assert dataset.item_text == ["Anvil | Acme", "Rope | Acme", "Kite | Zed"]
    assert dataset.interactions["rating"].tolist() == [3.0, 1.0, 5.0, 4.0, 2.0]
    assert from_mapping(DataConfig, json.loads(json.dumps(config.__dict__, default=str))) == config


DUPLICATES = [("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3), ("u2", "a", 4), ("u1", "a", 5)]


@pytest.mark.parametrize(
    ("policy", "kept_times"), [("first", [1, 2, 4]), ("last", [2, 5, 4]), ("all", [1, 2, 3, 5, 4])]
)
def test_dedup_policies_keep_and_count_what_they_say(tmp_path, policy, kept_times):
    rows = "\n".join(f"{user},{item},{time}" for user, item, time in DUPLICATES)
    path = tmp_path / "d.csv"
    path.write_text(f"user_id,item_id,timestamp\n{rows}\n")
    dataset = prepared(path, tmp_path, dedup=policy)
    assert dataset.interactions["timestamp"].tolist() == kept_times
    stats = dataset.stats()
    assert stats["dedup"] == policy
    assert stats["removed_duplicates"] == len(DUPLICATES) - len(kept_times)


def test_a_table_without_timestamps_keeps_file_order_and_says_so_once(tmp_path, caplog):
    path = tmp_path / "no_time.csv"
    path.write_text("user_id,item_id\n7,30\n7,10\n8,20\n7,20\n")
    with caplog.at_level(logging.WARNING, logger="metarec.data.custom"):
        dataset = prepared(path, tmp_path)
        prepared(path, tmp_path)  # from the cache: nothing read, nothing said
    assert [item for _, item, _ in raw_histories(dataset)] == [30, 10, 20, 20]
    assert dataset.stats()["timestamps"] == "file order"
    assert [record.getMessage() for record in caplog.records] == [
        f"{path} has no timestamp column: each user's history is taken in file order"
    ]


def test_cache_follows_the_parts_of_a_folder_source(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(as_table(), folder / "part-0.parquet")
    assert prepared(folder, tmp_path, **MAPPED).n_users == 2
    pq.write_table(as_table(ROWS[:1]), folder / "part-0.parquet")
    assert prepared(folder, tmp_path, **MAPPED).n_users == 1


def random_csv(rng: np.random.Generator, rows: int) -> str:
    """A CSV as Python's csv module writes it: quoted fields with commas, line breaks and
    quotes, and a field that needs none."""
    pieces = ["a", "b c", ",", "\n", "\r\n", '"', "é", " ", "7"]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["item_id", "title", "note"])
    for index in range(rows):
        texts = ["".join(rng.choice(pieces, size=rng.integers(1, 5))) for _ in range(2)]
        writer.writerow([index, *texts])
    return buffer.getvalue()


@pytest.mark.parametrize("seed", range(5))
def test_csv_reader_agrees_with_pythons_csv_module(tmp_path, seed):
    rng = np.random.default_rng(seed)
    text = random_csv(rng, 40)
    if seed % 2:  # a quote inside an unquoted field: the file is read the csv module's way
        text += '40,5" floppy,x\r\n'
    path = tmp_path / "items.csv"
    path.write_bytes(text.encode())
    frame = read_csv_with_header(path, [Column("item_id", "int")])
    reader = csv.reader(io.StringIO(text, newline=""))
    header, lines, rows = next(reader), [], []
    while True:
        lines.append(reader.line_num + 1)
        row = next(reader, None)
        if row is None:
            break
        rows.append(row)
    expected = pd.DataFrame(rows, columns=header).apply(lambda column: column.str.strip())
    assert frame["item_id"].tolist() == [int(value) for value in expected["item_id"]]
    assert frame["title"].tolist() == expected["title"].tolist()
    assert frame["note"].tolist() == expected["note"].tolist()
    assert frame["line"].tolist() == lines[:-1]


def hf_empty_split(tmp_path: Path) -> list[str]:
    save_like_datasets(as_table(ROWS[:0]), tmp_path / "hf" / "test", split="test")
    mapped = [f"--{name.replace('_', '-')}={column}" for name, column in MAPPED.items()]
    return ["--interactions", str(tmp_path / "hf" / "test"), *mapped]


def hf_two_splits(tmp_path: Path) -> list[str]:
    save_like_datasets(as_table(), tmp_path / "hf" / "train")
    save_like_datasets(as_table(), tmp_path / "hf" / "test", split="test")
    (tmp_path / "hf" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    return ["--interactions", str(tmp_path / "hf")]


def text_file(name: str, content: str):
    def write(tmp_path: Path) -> list[str]:
        (tmp_path / name).write_text(content)
        return ["--interactions", str(tmp_path / name)]

    return write


def parquet_part_with_inf(tmp_path: Path) -> list[str]:
    (tmp_path / "parts").mkdir()
    for part, items in enumerate(([1.0, 2.0], [3.0, float("inf")])):
        frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": items, "timestamp": [1, 2]})
        frame.to_parquet(tmp_path / "parts" / f"part-{part:05d}.parquet")
    return ["--interactions", str(tmp_path / "parts")]


# name -> (writes the input and gives its options, the exact message after "{tmp_path}/")
BAD = {
    "mixed_id_kinds": (
        text_file("m.csv", "user_id,item_id,timestamp\n1,10,5\n1,B0001,6\n"),
        "m.csv:3: field 'item_id': mixed id kinds: 'B0001' is text but the column's first id "
        "'10' is an integer; a column holds integer ids (written plainly, like 10) or text ids "
        "(like 'B0001'), or all ids are read as text with --id-type str",
    ),
    "leading_zero_id": (
        text_file("z.csv", "user_id,item_id,timestamp\n0012,10,5\n12,11,6\n"),
        "z.csv:3: field 'user_id': mixed id kinds: '12' is an integer but the column's first "
        "id '0012' is text; a column holds integer ids (written plainly, like 12) or text ids "
        "(like '0012'), or all ids are read as text with --id-type str",
    ),
    "unparsable_date": (
        text_file("d.csv", "user_id,item_id,timestamp\n1,10,2020-01-31\n1,11,2020-02-30\n"),
        "d.csv:3: field 'timestamp': expected a time (seconds since 1970 or an ISO 8601 "
        "date/time), got '2020-02-30'",
    ),
    "mixed_time_kinds": (
        text_file("t.csv", "user_id,item_id,timestamp\n1,10,1580428800\n1,11,2020-01-31\n"),
        "t.csv:3: field 'timestamp': mixed time kinds: '2020-01-31' is an ISO 8601 date/time "
        "but the column's first time '1580428800' is seconds; one column, one kind",
    ),
    "missing_mapped_column": (
        lambda tmp: (
            text_file("c.csv", "user,item_id,timestamp\n1,10,5\n")(tmp) + ["--user-col", "customer"]
        ),
        "c.csv:1: missing column(s) customer; header has user, item_id, timestamp",
    ),
    "missing_mapped_parquet_column": (
        lambda tmp: parquet_part_with_inf(tmp) + ["--rating-col", "stars"],
        "parts: missing column(s) stars; table has user_id, item_id, timestamp",
    ),
    "inf_in_a_parquet_part": (
        parquet_part_with_inf,
        "parts/part-00001.parquet:2: field 'item_id': expected an id (an integer or text), got inf",
    ),
    "empty_datasets_split": (hf_empty_split, "hf/test: split 'test' has no rows"),
    "dataset_dict_without_a_split": (
        hf_two_splits,
        "hf: a DatasetDict with splits train, test: give the folder of the one to read, "
        "e.g. {tmp_path}/hf/train",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_own_data_gives_one_exact_line(name, tmp_path, capsys):
    write, message = BAD[name]
    options = write(tmp_path)
    status = main(["data", "prepare", "--dataset", "custom", "--cache-dir", str(tmp_path / "c"),
                   *options])  # fmt: skip
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error == f"metarec: error: {tmp_path}/" + message.format(tmp_path=tmp_path)


def test_mixed_looking_ids_read_as_text_when_asked(tmp_path):
    path = tmp_path / "isbn.csv"
    path.write_text("user_id,item_id,timestamp\n1,0439064872,5\n1,B00005N5PF,6\n2,439064872,7\n")
    dataset = prepared(path, tmp_path, id_type="str")
    assert dataset.item_ids.tolist() == ["0439064872", "439064872", "B00005N5PF"]
    assert dataset.user_ids.tolist() == ["1", "2"]


def test_bad_data_options_are_config_errors():
    with pytest.raises(ConfigError, match="dedup 'newest': expected one of first, last, all"):
        DataConfig(dedup="newest")
    with pytest.raises(ConfigError, match="id_type 'uuid'"):
        DataConfig(id_type="uuid")
    with pytest.raises(ConfigError, match="for --dataset custom"):
        load_dataset(DataConfig(user_col="customer"))
    with pytest.raises(ConfigError, match="dedup 'only'"):
        PreprocessOptions(dedup="only")
