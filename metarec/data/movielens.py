"""MovieLens 100K, 1M, 20M and 25M: find (or download) the official release, read it strictly.

The GroupLens licence forbids redistribution, so metarec never ships the files: it reads a
local folder or zip the user points at, or downloads the official zip and checks its
SHA-256. The 100K and 1M text files are header-less and ISO-8859-1, not UTF-8 (accented
titles). The 20M and 25M files are CSV with a header row, titles holding commas quoted
(quotes inside doubled), in UTF-8, as their READMEs say; with 20-25 million ratings they
are read by the vectorised CSV reader of `metarec.data.tables`, which has no per-row loop.
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from metarec.atomic import atomic_dir
from metarec.data.download import download_verified
from metarec.data.raw import RawData
from metarec.data.tables import Column, read_csv_with_header, read_separated
from metarec.errors import DataError, MetarecError
from metarec.hashing import sha256_of


@dataclass(frozen=True)
class Release:
    """Where a MovieLens release lives and how its files are laid out.

    ``separator`` splits the fields of a header-less file; None means CSV with a header row.
    ``encoding`` is its text files' (``utf-8-sig`` reads UTF-8 and ignores the byte-order
    mark a spreadsheet program adds when it re-saves a file).
    """

    name: str
    url: str
    sha256: str
    ratings_file: str
    items_file: str
    separator: str | None
    encoding: str


RELEASES = {
    "ml-100k": Release(
        name="ml-100k",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        ratings_file="u.data",
        items_file="u.item",
        separator="\t",
        encoding="iso-8859-1",
    ),
    "ml-1m": Release(
        name="ml-1m",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        ratings_file="ratings.dat",
        items_file="movies.dat",
        separator="::",
        encoding="iso-8859-1",
    ),
    # SHA-256 of the 20M and 25M zips as pinned by TensorFlow Datasets
    # (tensorflow_datasets/url_checksums/movielens.txt, which lists the 100K and 1M values
    # above too); other projects pinning these zips give the same digests.
    "ml-20m": Release(
        name="ml-20m",
        url="https://files.grouplens.org/datasets/movielens/ml-20m.zip",
        sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
        ratings_file="ratings.csv",
        items_file="movies.csv",
        separator=None,
        encoding="utf-8-sig",
    ),
    "ml-25m": Release(
        name="ml-25m",
        url="https://files.grouplens.org/datasets/movielens/ml-25m.zip",
        sha256="8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
        ratings_file="ratings.csv",
        items_file="movies.csv",
        separator=None,
        encoding="utf-8-sig",
    ),
}

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip

RATING_COLUMNS = [
    Column("user_id", "int"),
    Column("item_id", "int"),
    Column("rating", "float"),
    Column("timestamp", "int"),
]
# the CSV releases' header names, so that errors name the field as the file spells it
CSV_RATING_COLUMNS = [
    Column("userId", "int"),
    Column("movieId", "int"),
    Column("rating", "float"),
    Column("timestamp", "int"),
]
CSV_MOVIE_COLUMNS = [Column("movieId", "int"), Column("title", "str"), Column("genres", "str")]
CSV_NAMES = {"userId": "user_id", "movieId": "item_id"}


def _extract(archive: Path, release: Release, cache_dir: Path) -> Path:
    """Extract a release's ratings and items files into the cache (once, atomically) and
    return their folder.

    They are taken from the folder holding the ratings file inside the zip (``ml-100k/`` or
    the zip's root). Only those two are extracted: the 20M and 25M zips also hold tag-genome
    tables of several hundred MB that metarec does not read.
    """
    target = cache_dir / f"{release.name}-{sha256_of(archive)[:12]}"
    if (target / release.ratings_file).exists():
        return target
    with atomic_dir(target) as staging:
        try:
            with zipfile.ZipFile(archive) as bundle:
                names = bundle.namelist()
                ratings = [n for n in names if PurePosixPath(n).name == release.ratings_file]
                if not ratings:
                    raise DataError(archive, f"zip has no {release.ratings_file}")
                prefix = PurePosixPath(ratings[0]).parent
                wanted = (release.ratings_file, release.items_file)
                for name in names:
                    member = PurePosixPath(name)
                    if name.endswith("/") or member.parent != prefix or member.name not in wanted:
                        continue
                    # streamed: the 25M ratings file alone is over 600 MB
                    with bundle.open(name) as source, (staging / member.name).open("wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error,
                OSError) as err:  # fmt: skip
            raise DataError(archive, f"not a valid zip file ({err})") from None
    return target


def locate(name: str, data_dir: Path | None, cache_dir: Path) -> Path:
    """Return the folder holding release ``name``'s files.

    With ``data_dir`` given, it may be the release folder itself, a folder holding
    ``<name>/`` or ``<name>.zip``, or the zip; nothing is downloaded. Without it, the
    official zip is downloaded into ``cache_dir`` (checked against its SHA-256).
    """
    if name not in RELEASES:
        raise MetarecError(f"unknown MovieLens release {name!r}; known: {', '.join(RELEASES)}")
    release = RELEASES[name]
    if data_dir is None:
        archive = download_verified(release.url, release.sha256, cache_dir / f"{name}.zip")
        return _extract(archive, release, cache_dir)
    if not data_dir.exists():
        raise DataError(data_dir, f"data dir does not exist (looked for {name})")
    if data_dir.is_file():
        return _extract(data_dir, release, cache_dir)
    for folder in (data_dir, data_dir / name):
        if (folder / release.ratings_file).is_file():
            return folder
    if (data_dir / f"{name}.zip").is_file():
        return _extract(data_dir / f"{name}.zip", release, cache_dir)
    raise DataError(
        data_dir,
        f"no {name} here: expected {release.ratings_file}, {name}/{release.ratings_file} "
        f"or {name}.zip",
    )


def _read_items_100k(path: Path) -> pd.DataFrame:
    columns = [
        Column("item_id", "int"),
        Column("title", "str"),
        Column("release_date", "str"),
        Column("video_release_date", "str"),
        Column("imdb_url", "str"),
    ]
    columns += [Column(f"genre_{genre}", "int") for genre in ML100K_GENRES]
    frame = read_separated(path, columns, "|", RELEASES["ml-100k"].encoding)
    flags = frame[[f"genre_{genre}" for genre in ML100K_GENRES]].to_numpy()
    genres = [", ".join(g for g, on in zip(ML100K_GENRES, row, strict=True) if on) for row in flags]
    return _with_text(frame, genres)


def _read_items_1m(path: Path) -> pd.DataFrame:
    columns = [Column("item_id", "int"), Column("title", "str"), Column("genres", "str")]
    frame = read_separated(path, columns, "::", RELEASES["ml-1m"].encoding)
    return _with_text(frame, [g.replace("|", ", ") for g in frame["genres"]])


def _read_items_csv(path: Path, release: Release) -> pd.DataFrame:
    """movies.csv of the 20M and 25M releases; ``(no genres listed)`` is kept as written,
    as the 100K release's ``unknown`` genre is."""
    frame = read_csv_with_header(path, CSV_MOVIE_COLUMNS, release.encoding, others=False)
    frame = frame.rename(columns=CSV_NAMES)
    return _with_text(frame, [g.replace("|", ", ") for g in frame["genres"]])


def _read_ratings(path: Path, release: Release) -> pd.DataFrame:
    if release.separator is not None:
        return read_separated(path, RATING_COLUMNS, release.separator, release.encoding)
    frame = read_csv_with_header(path, CSV_RATING_COLUMNS, release.encoding, others=False)
    return frame.rename(columns=CSV_NAMES)


def _with_text(frame: pd.DataFrame, genres: list[str]) -> pd.DataFrame:
    """Item text as metarec embeds it: ``Title (Year) | Genre, Genre``."""
    text = [
        f"{title.strip()} | {genre}" for title, genre in zip(frame["title"], genres, strict=True)
    ]
    return pd.DataFrame({"item_id": frame["item_id"], "text": text, "line": frame["line"]})


def load_movielens(name: str, folder: Path) -> RawData:
    """Read a MovieLens release folder into validated RawData."""
    release = RELEASES[name]
    ratings_path = folder / release.ratings_file
    items_path = folder / release.items_file
    for path in (ratings_path, items_path):
        if not path.is_file():
            raise DataError(
                path, f"missing file: {name} needs {release.ratings_file} and {release.items_file}"
            )
    interactions = _read_ratings(ratings_path, release)
    if release.separator is None:
        items = _read_items_csv(items_path, release)
    elif name == "ml-100k":
        items = _read_items_100k(items_path)
    else:
        items = _read_items_1m(items_path)
    return RawData(
        name=name,
        interactions=interactions,
        interactions_path=ratings_path,
        items=items,
        items_path=items_path,
    )
