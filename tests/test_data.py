"""Data layer: real MovieLens files, encodings, preprocessing, cache and downloads."""

import hashlib
import zipfile

import numpy as np
import pandas as pd
import pytest

from metarec.data.custom import load_custom
from metarec.data.dataset import Dataset
from metarec.data.download import download_verified
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.preprocess import PreprocessOptions, preprocess
from metarec.data.synthetic import synthetic_raw
from metarec.errors import DataError


def write_ml1m(folder):
    """A tiny ml-1m-shaped folder with an ISO-8859-1 title."""
    folder.mkdir(parents=True)
    ratings = ["1::10::5::300", "1::20::3::100", "2::10::4::50", "2::20::1::50", "1::30::4::100"]
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n")
    movies = ["10::Café Society (1995)::Drama|Romance", "20::Heat (1995)::Action", "30::X::Drama"]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("iso-8859-1"))


@pytest.mark.integration
def test_ml100k_statistics(ml100k_dir, tmp_path):
    dataset = load_dataset(DataConfig(data_dir=ml100k_dir, cache_dir=tmp_path))
    stats = dataset.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    assert stats["history_min"] == 20
    assert dataset.item_text[0] == "Toy Story (1995) | Animation, Children's, Comedy"


def test_ml1m_decodes_latin1_orders_stably_and_reads_zip(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    dataset = load_dataset(DataConfig("ml-1m", data_dir=tmp_path, cache_dir=tmp_path / "c"))
    assert dataset.item_text[0] == "Café Society (1995) | Drama, Romance"
    # user 1: (100, 20), (100, 30), (300, 10): the timestamp tie is broken by item id
    assert [dataset.item_ids[i] for i in dataset.sequences()[0]] == [20, 30, 10]
    with zipfile.ZipFile(tmp_path / "ml-1m.zip", "w") as bundle:
        for name in ("ratings.dat", "movies.dat"):
            bundle.write(tmp_path / "ml-1m" / name, f"ml-1m/{name}")
    zipped = load_dataset(
        DataConfig("ml-1m", data_dir=tmp_path / "ml-1m.zip", cache_dir=tmp_path / "z")
    )
    pd.testing.assert_frame_equal(zipped.interactions, dataset.interactions)


def slow_k_core(rows, k):
    rows = list(rows)
    while True:
        users = pd.Series([u for u, _ in rows]).value_counts()
        items = pd.Series([i for _, i in rows]).value_counts()
        kept = [(u, i) for u, i in rows if users[u] >= k and items[i] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def test_preprocess_filters_dedups_and_k_cores(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, 40, n),
            "item_id": rng.integers(100, 160, n),
            "timestamp": rng.integers(0, 50, n),
            "rating": rng.integers(1, 6, n).astype(float),
        }
    )
    path = tmp_path / "interactions.csv"
    frame.to_csv(path, index=False)
    raw = load_custom(path)
    dataset = preprocess(raw, PreprocessOptions(min_rating=3, k_core=3))
    kept = frame[frame["rating"] >= 3].sort_values(
        ["user_id", "timestamp", "item_id"], kind="stable"
    )
    deduped = kept.drop_duplicates(["user_id", "item_id"])
    expected = slow_k_core(zip(deduped["user_id"], deduped["item_id"], strict=True), 3)
    got = list(
        zip(
            dataset.user_ids[dataset.interactions["user"]],
            dataset.item_ids[dataset.interactions["item"]],
            strict=True,
        )
    )
    assert got == expected
    report = dataset.report
    assert report["removed_below_min_rating"] == int((frame["rating"] < 3).sum())
    assert report["removed_duplicates"] == len(kept) - len(deduped)
    assert report["removed_by_k_core"] == len(deduped) - len(expected)
    assert list(dataset.user_ids) == sorted(dataset.user_ids)


def test_csv_and_parquet_load_identically_and_cache_round_trips(tmp_path):
    frame = pd.DataFrame(
        {"user_id": [3, 3, 1, 1, 1], "item_id": [7, 8, 7, 9, 8], "timestamp": [5, 5, 1, 2, 3]}
    )
    items = pd.DataFrame(
        {"item_id": [7, 8, 9, 10], "title": ["A", "B", "C", "D"], "genres": ["x", "y", "z", "w"]}
    )
    frame.to_csv(tmp_path / "i.csv", index=False)
    frame.to_parquet(tmp_path / "i.parquet")
    items.to_csv(tmp_path / "items.csv", index=False)
    from_csv = preprocess(
        load_custom(tmp_path / "i.csv", tmp_path / "items.csv"), PreprocessOptions()
    )
    from_parquet = preprocess(
        load_custom(tmp_path / "i.parquet", tmp_path / "items.csv"), PreprocessOptions()
    )
    pd.testing.assert_frame_equal(from_csv.interactions, from_parquet.interactions)
    assert from_csv.item_text == ["A | x", "B | y", "C | z", "D | w"]
    assert from_csv.report["items_without_interactions"] == 1  # item 10: new, text only
    from_csv.save(tmp_path / "saved")
    loaded = Dataset.load(tmp_path / "saved")
    pd.testing.assert_frame_equal(loaded.interactions, from_csv.interactions)
    np.testing.assert_array_equal(loaded.item_ids, from_csv.item_ids)
    assert loaded.item_text == from_csv.item_text


def test_download_checks_sha256_and_never_leaves_a_bad_file(tmp_path):
    source = tmp_path / "release.zip"
    source.write_bytes(b"release bytes")
    digest = hashlib.sha256(b"release bytes").hexdigest()
    target = tmp_path / "cache" / "release.zip"
    assert download_verified(source.as_uri(), digest, target).read_bytes() == b"release bytes"
    target.unlink()
    with pytest.raises(DataError, match="SHA-256"):
        download_verified(source.as_uri(), "0" * 64, target)
    assert list(target.parent.iterdir()) == []


def test_csv_quoted_newlines_bom_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "items.csv"
    path.write_bytes(
        '\ufeffitem_id,title\n1,"Heat,\nthe director\'s cut"\n2,Alien\n\n'.encode("utf-8")
    )
    raw = load_custom(_interactions(tmp_path, [1, 2]), path)
    assert raw.items["text"].tolist() == ["Heat,\nthe director's cut", "Alien"]
    assert raw.items["line"].tolist() == [2, 4]  # a row is numbered by the line it starts on
    path.write_text("item_id,title\n1,Heat\n2,Ali\ren\n")  # a stray carriage return
    with pytest.raises(DataError, match=r"items.csv:4: expected 2 fields"):
        load_custom(_interactions(tmp_path, [1, 2]), path)


def _interactions(folder, items):
    path = folder / "interactions.csv"
    rows = "\n".join(f"1,{item},{10 + item}" for item in items)
    path.write_text(f"user_id,item_id,timestamp\n{rows}\n")
    return path


def test_zip_with_files_at_its_root(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as bundle:
        for name in ("ratings.dat", "movies.dat"):
            bundle.write(tmp_path / "ml-1m" / name, name)
    dataset = load_dataset(
        DataConfig("ml-1m", data_dir=tmp_path / "flat.zip", cache_dir=tmp_path / "c")
    )
    assert dataset.n_items == 3 and len(dataset.interactions) == 5


def test_raw_data_written_as_csv_reads_back_equal(tmp_path):
    raw = synthetic_raw(n_users=20, n_items=30, seed=5)
    interactions, items = raw.write_csv(tmp_path / "custom")
    again = load_custom(interactions, items)
    columns = ["user_id", "item_id", "timestamp", "rating"]
    pd.testing.assert_frame_equal(again.interactions[columns], raw.interactions[columns])
    pd.testing.assert_frame_equal(again.items[["item_id", "text"]], raw.items[["item_id", "text"]])
