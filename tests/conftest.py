"""Shared fixtures: the real ml-100k folder (CI provides it) and a small synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metarec.data.preprocess import PreprocessOptions, preprocess
from metarec.data.synthetic import synthetic_raw

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The folder holding ml-100k: $METAREC_DATA_DIR, else ../shared/data beside the repo."""
    root = Path(os.environ.get("METAREC_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (root / "ml-100k" / "u.data").is_file():
        pytest.skip(f"ml-100k not found under {root}; set METAREC_DATA_DIR")
    return root


@pytest.fixture(scope="session")
def synthetic_dataset():
    return preprocess(synthetic_raw(), PreprocessOptions())
