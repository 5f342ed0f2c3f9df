"""One entry point from a `DataConfig` to a `Dataset`, cached on disk.

The cache key is the SHA-256 of the source files (every part of a folder source) plus the
preprocessing options and column names, so an edited source file, a different filter or
another column never reuses a stale prepared copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from metarec.data.custom import ColumnNames, load_custom
from metarec.data.dataset import Dataset
from metarec.data.movielens import RELEASES, load_movielens, locate
from metarec.data.preprocess import PreprocessOptions, preprocess
from metarec.data.raw import RawData
from metarec.data.sources import find_source
from metarec.errors import ConfigError
from metarec.hashing import sha256_of

CACHE_FORMAT = 2  # 2: reports name the dedup policy and the timestamps' source


@dataclass
class DataConfig:
    """Which dataset to read and how to preprocess it.

    ``dataset`` is a MovieLens release (``ml-100k``, ``ml-1m``, ``ml-20m``, ``ml-25m``) or
    ``custom``, which reads ``interactions`` (and optionally ``items``) tables: CSV, TSV,
    Parquet files or folders, saved `datasets` splits (`metarec.data.sources`). ``data_dir``
    points at a local copy of a release; without it the release is downloaded into
    ``cache_dir``. The column names and ``id_type`` say how custom tables are read
    (`ColumnNames`); ``dedup`` which of a repeated (user, item) pair's interactions are kept
    (`PreprocessOptions`).
    """

    dataset: str = "ml-100k"
    data_dir: Path | None = None
    interactions: Path | None = None
    items: Path | None = None
    min_rating: float | None = None
    k_core: int = 0
    cache_dir: Path = Path("~/.cache/metarec")
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = None
    rating_col: str | None = None
    item_text_cols: list[str] | None = None
    id_type: str = "auto"
    dedup: str = "first"

    def __post_init__(self) -> None:
        self.column_names()
        self.preprocess_options()

    def column_names(self) -> ColumnNames:
        """How the custom tables' columns are read."""
        return ColumnNames(
            user=self.user_col,
            item=self.item_col,
            time=self.time_col,
            rating=self.rating_col,
            item_text=tuple(self.item_text_cols) if self.item_text_cols else None,
            id_type=self.id_type,
        )

    def preprocess_options(self) -> PreprocessOptions:
        return PreprocessOptions(min_rating=self.min_rating, k_core=self.k_core, dedup=self.dedup)


def _source_files(config: DataConfig, cache_dir: Path) -> tuple[str, list[Path]]:
    if config.dataset == "custom":
        if config.interactions is None:
            raise ConfigError("dataset 'custom' needs an interactions file (--interactions)")
        tables = [config.interactions] + ([config.items] if config.items else [])
        return config.interactions.stem, [f for table in tables for f in find_source(table).files]
    if config.dataset not in RELEASES:
        known = ", ".join([*RELEASES, "custom"])
        raise ConfigError(f"unknown dataset {config.dataset!r}; expected one of {known}")
    if config.column_names() != ColumnNames():
        raise ConfigError(
            f"column options (user/item/time/rating/item text columns, id type) are for "
            f"--dataset custom; {config.dataset} has its own"
        )
    release = RELEASES[config.dataset]
    folder = locate(config.dataset, config.data_dir, cache_dir / "downloads")
    return config.dataset, [folder / release.ratings_file, folder / release.items_file]


def _read_raw(config: DataConfig, files: list[Path]) -> RawData:
    if config.dataset == "custom":
        return load_custom(
            config.interactions,
            config.items,
            name=config.interactions.stem,
            names=config.column_names(),
        )
    return load_movielens(config.dataset, files[0].parent)


def load_dataset(config: DataConfig, use_cache: bool = True) -> Dataset:
    """Read, validate and preprocess the configured dataset, reusing a cached copy."""
    cache_dir = config.cache_dir.expanduser()
    name, files = _source_files(config, cache_dir)
    options = config.preprocess_options()
    key_material = {
        "files": [sha256_of(path) if path.is_file() else str(path) for path in files],
        "options": asdict(options),
        "columns": asdict(config.column_names()),
        "format": CACHE_FORMAT,
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_dir / "prepared" / f"{name}-{key}"
    if use_cache and (cached / "meta.json").is_file():
        return Dataset.load(cached)
    dataset = preprocess(_read_raw(config, files), options)
    if use_cache:
        dataset.save(cached)
    return dataset
