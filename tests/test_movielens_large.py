"""MovieLens 20M and 25M: header CSV in UTF-8, read from a folder or the release zip.

Small files in the releases' exact format (quoted titles with commas and doubled quotes,
a non-ASCII title, ``(no genres listed)``) are loaded through `load_dataset` and compared
with an independent reading by Python's `csv` module; bad files must fail with one line
naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import pytest

from metarec.data.movielens import RELEASES
from metarec.data.prepare import DataConfig, load_dataset
from metarec.errors import DataError

RELEASE_NAMES = ["ml-20m", "ml-25m"]

MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    '4973,"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)",Comedy|Romance\n'
    '26587,"""Great Performances"" Cats (1998)",Musical\n'
    "131262,Innocence (2014),(no genres listed)\n"
    "200,Unrated (1999),Drama\n"
)
RATINGS = (
    "userId,movieId,rating,timestamp\n"
    "1,1,3.5,1112486027\n"
    "1,4973,4.0,1112484676\n"
    "1,26587,0.5,1112484676\n"
    "2,11,5.0,1094785740\n"
    "2,131262,2.5,1574327703\n"
    "3,1,1.0,1094785741\n"
)


def write_release(folder: Path) -> Path:
    """A tiny release folder in the 20M/25M layout; returns it."""
    folder.mkdir(parents=True)
    (folder / "movies.csv").write_text(MOVIES, encoding="utf-8")
    (folder / "ratings.csv").write_text(RATINGS, encoding="utf-8")
    return folder


def csv_reading(folder: Path) -> tuple[list[tuple[int, int, float, int]], dict[int, str]]:
    """Ratings as sorted (user, item, rating, timestamp) and item text by id, read by `csv`."""
    with (folder / "ratings.csv").open(encoding="utf-8", newline="") as file:
        ratings = sorted(
            (int(row["userId"]), int(row["movieId"]), float(row["rating"]), int(row["timestamp"]))
            for row in csv.DictReader(file)
        )
    with (folder / "movies.csv").open(encoding="utf-8", newline="") as file:
        text = {
            int(row["movieId"]): f"{row['title']} | {row['genres'].replace('|', ', ')}"
            for row in csv.DictReader(file)
        }
    return ratings, text


def assert_matches_csv(dataset, folder: Path) -> None:
    ratings, text = csv_reading(folder)
    frame = dataset.interactions
    loaded = sorted(
        (int(dataset.user_ids[u]), int(dataset.item_ids[i]), float(r), int(t))
        for u, i, r, t in zip(
            frame["user"], frame["item"], frame["rating"], frame["timestamp"], strict=True
        )
    )
    assert loaded == ratings
    assert dict(zip(dataset.item_ids.tolist(), dataset.item_text, strict=True)) == text


@pytest.mark.parametrize("name", RELEASE_NAMES)
def test_folder_reads_like_the_csv_module(name, tmp_path):
    folder = write_release(tmp_path / name)
    for data_dir in (folder, tmp_path):  # the release folder, or a folder holding it
        dataset = load_dataset(
            DataConfig(name, data_dir=data_dir, cache_dir=tmp_path / "cache"), use_cache=False
        )
        assert dataset.name == name
        assert_matches_csv(dataset, folder)
    # spot checks the comparison relies on: quotes, commas and UTF-8 come through as written
    by_id = dict(zip(dataset.item_ids.tolist(), dataset.item_text, strict=True))
    assert by_id[26587] == '"Great Performances" Cats (1998) | Musical'
    assert by_id[4973] == "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001) | Comedy, Romance"
    assert by_id[131262] == "Innocence (2014) | (no genres listed)"
    assert dataset.n_items == 6  # movie 200 has no ratings and stays in the catalogue


@pytest.mark.parametrize("name", RELEASE_NAMES)
def test_release_zip_reads_like_the_folder_and_extracts_two_files(name, tmp_path):
    folder = write_release(tmp_path / "source" / name)
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(f"{name}/", "")
        for file in ("movies.csv", "ratings.csv"):
            bundle.write(folder / file, f"{name}/{file}")
        # the real zips also hold these; metarec does not read them
        bundle.writestr(f"{name}/genome-scores.csv", "movieId,tagId,relevance\n1,1,0.025\n")
        bundle.writestr(f"{name}/README.txt", "Summary\n")
    for data_dir in (archive, tmp_path):  # the zip, or a folder holding it
        cache = tmp_path / f"cache-{data_dir.name}"
        dataset = load_dataset(DataConfig(name, data_dir=data_dir, cache_dir=cache))
        assert_matches_csv(dataset, folder)
        (extracted,) = (cache / "downloads").iterdir()
        assert sorted(p.name for p in extracted.iterdir()) == ["movies.csv", "ratings.csv"]


def test_releases_pin_the_official_zips():
    for name in RELEASE_NAMES:
        release = RELEASES[name]
        assert release.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert re.fullmatch("[0-9a-f]{64}", release.sha256)


def load_error(name: str, tmp_path: Path, file: str, content: str | bytes) -> str:
    """The one-line error loading a release whose ``file`` holds ``content``."""
    folder = write_release(tmp_path / name)
    if isinstance(content, bytes):
        (folder / file).write_bytes(content)
    else:
        (folder / file).write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(name, data_dir=folder, cache_dir=tmp_path / "cache"))
    message = str(caught.value)
    assert "\n" not in message
    return message.removeprefix(f"{folder}/")


BAD_INPUTS = {
    "rating not a number": (
        "ratings.csv",
        RATINGS + "4,1,good,1094785742\n",
        "ratings.csv:8: field 'rating': expected a number, got 'good'",
    ),
    "fractional timestamp": (
        "ratings.csv",
        RATINGS + "4,1,3.0,1094785742.5\n",
        "ratings.csv:8: field 'timestamp': expected an integer, got '1094785742.5'",
    ),
    "empty user id": (
        "ratings.csv",
        RATINGS.replace("\n3,1,", "\n,1,"),
        "ratings.csv:7: field 'userId': expected an integer, got nothing",
    ),
    "column missing from the header": (
        "ratings.csv",
        RATINGS.replace("userId,movieId,rating,timestamp", "userId,movieId,timestamp"),
        "ratings.csv:1: missing column(s) rating; header has userId, movieId, timestamp",
    ),
    "short row": (
        "ratings.csv",
        RATINGS + "4,1,3.0\n",
        "ratings.csv:8: expected 4 fields (userId, movieId, rating, timestamp), found 3",
    ),
    "title with an unquoted comma": (
        "movies.csv",
        MOVIES + "300,Heat, The (1995),Action\n",
        "movies.csv:8: expected 3 fields (movieId, title, genres), found 4",
    ),
    "movie listed twice": (
        "movies.csv",
        MOVIES + "11,Again (2000),Drama\n",
        "movies.csv:8: field 'item_id': duplicate item id 11 (first at line 3)",
    ),
    "not UTF-8": (
        "movies.csv",
        MOVIES.encode("iso-8859-1"),
        "movies.csv:4: byte 0xe9 at column 9 is not valid utf-8-sig text",
    ),
}


@pytest.mark.parametrize("name", RELEASE_NAMES)
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_file_line_and_field(name, case, tmp_path):
    file, content, expected = BAD_INPUTS[case]
    assert load_error(name, tmp_path, file, content) == expected


@pytest.mark.parametrize("name", RELEASE_NAMES)
def test_rating_of_a_movie_missing_from_movies_csv(name, tmp_path):
    message = load_error(name, tmp_path, "ratings.csv", RATINGS + "4,999,3.0,1094785742\n")
    assert message == (
        f"ratings.csv:8: field 'item_id': unknown item id 999: not in items table "
        f"{tmp_path / name / 'movies.csv'} (1 rows like this)"
    )
