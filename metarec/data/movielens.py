"""MovieLens 100K and 1M: find (or download) the official release and read it strictly.

The GroupLens licence forbids redistribution, so metarec never ships the files: it reads a
local folder or zip the user points at, or downloads the official zip and checks its
SHA-256. MovieLens text files are ISO-8859-1, not UTF-8 (accented titles).
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from metarec.atomic import atomic_dir
from metarec.data.download import download_verified
from metarec.data.raw import RawData
from metarec.data.tables import Column, read_separated
from metarec.errors import DataError, MetarecError
from metarec.hashing import sha256_of

ENCODING = "iso-8859-1"


@dataclass(frozen=True)
class Release:
    """Where a MovieLens release lives and how its files are laid out."""

    name: str
    url: str
    sha256: str
    ratings_file: str
    items_file: str
    separator: str


RELEASES = {
    "ml-100k": Release(
        name="ml-100k",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        ratings_file="u.data",
        items_file="u.item",
        separator="\t",
    ),
    "ml-1m": Release(
        name="ml-1m",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        ratings_file="ratings.dat",
        items_file="movies.dat",
        separator="::",
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


def _extract(archive: Path, release: Release, cache_dir: Path) -> Path:
    """Extract a release zip into the cache (once, atomically) and return its folder.

    The folder holding the ratings file inside the zip (``ml-100k/`` or the zip's root)
    becomes the cache folder.
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
                for name in names:
                    member = PurePosixPath(name)
                    if name.endswith("/") or member.parent != prefix:
                        continue
                    (staging / member.name).write_bytes(bundle.read(name))
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
    frame = read_separated(path, columns, "|", ENCODING)
    flags = frame[[f"genre_{genre}" for genre in ML100K_GENRES]].to_numpy()
    genres = [", ".join(g for g, on in zip(ML100K_GENRES, row, strict=True) if on) for row in flags]
    return _with_text(frame, genres)


def _read_items_1m(path: Path) -> pd.DataFrame:
    columns = [Column("item_id", "int"), Column("title", "str"), Column("genres", "str")]
    frame = read_separated(path, columns, "::", ENCODING)
    return _with_text(frame, [g.replace("|", ", ") for g in frame["genres"]])


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
    interactions = read_separated(ratings_path, RATING_COLUMNS, release.separator, ENCODING)
    items = _read_items_100k(items_path) if name == "ml-100k" else _read_items_1m(items_path)
    return RawData(
        name=name,
        interactions=interactions,
        interactions_path=ratings_path,
        items=items,
        items_path=items_path,
    )
