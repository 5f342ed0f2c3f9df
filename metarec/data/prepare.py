"""One entry point from a `DataConfig` to a `Dataset`, cached on disk.

The cache key is the SHA-256 of the source files plus the preprocessing options, so an
edited source file or a different filter never reuses a stale prepared copy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from metarec.data.custom import load_custom
from metarec.data.dataset import Dataset
from metarec.data.movielens import RELEASES, load_movielens, locate
from metarec.data.preprocess import PreprocessOptions, preprocess
from metarec.data.raw import RawData
from metarec.errors import ConfigError
from metarec.hashing import sha256_of


@dataclass
class DataConfig:
    """Which dataset to read and how to preprocess it.

    ``dataset`` is a MovieLens release (``ml-100k``, ``ml-1m``) or ``custom``, which reads
    ``interactions`` (and optionally ``items``) tables. ``data_dir`` points at a local copy
    of a release; without it the release is downloaded into ``cache_dir``.
    """

    dataset: str = "ml-100k"
    data_dir: Path | None = None
    interactions: Path | None = None
    items: Path | None = None
    min_rating: float | None = None
    k_core: int = 0
    cache_dir: Path = Path("~/.cache/metarec")


def _source_files(config: DataConfig, cache_dir: Path) -> tuple[str, list[Path]]:
    if config.dataset == "custom":
        if config.interactions is None:
            raise ConfigError("dataset 'custom' needs an interactions file (--interactions)")
        files = [config.interactions] + ([config.items] if config.items else [])
        return config.interactions.stem, files
    if config.dataset not in RELEASES:
        known = ", ".join([*RELEASES, "custom"])
        raise ConfigError(f"unknown dataset {config.dataset!r}; expected one of {known}")
    release = RELEASES[config.dataset]
    folder = locate(config.dataset, config.data_dir, cache_dir / "downloads")
    return config.dataset, [folder / release.ratings_file, folder / release.items_file]


def _read_raw(config: DataConfig, files: list[Path]) -> RawData:
    if config.dataset == "custom":
        return load_custom(config.interactions, config.items, name=config.interactions.stem)
    return load_movielens(config.dataset, files[0].parent)


def load_dataset(config: DataConfig, use_cache: bool = True) -> Dataset:
    """Read, validate and preprocess the configured dataset, reusing a cached copy."""
    cache_dir = config.cache_dir.expanduser()
    name, files = _source_files(config, cache_dir)
    options = PreprocessOptions(min_rating=config.min_rating, k_core=config.k_core)
    key_material = {
        "files": [sha256_of(path) if path.is_file() else str(path) for path in files],
        "options": asdict(options),
        "format": 1,
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_dir / "prepared" / f"{name}-{key}"
    if use_cache and (cached / "meta.json").is_file():
        return Dataset.load(cached)
    dataset = preprocess(_read_raw(config, files), options)
    if use_cache:
        dataset.save(cached)
    return dataset
