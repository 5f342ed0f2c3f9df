"""The validated, not yet preprocessed, content of a dataset's files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class RawData:
    """Interactions and item metadata exactly as read, with where they came from.

    ``interactions`` has int64 ``user_id``, ``item_id``, ``timestamp``, float64 ``rating``
    (NaN when the source has none) and ``line`` (source line, for error messages).
    ``items`` has int64 ``item_id``, str ``text`` and ``line``, or is None when the source
    has no items table (the catalogue is then the items seen in interactions).
    """

    name: str
    interactions: pd.DataFrame
    interactions_path: Path
    items: pd.DataFrame | None = None
    items_path: Path | None = None
