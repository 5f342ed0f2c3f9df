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

    def write_csv(self, folder: Path) -> tuple[Path, Path | None]:
        """Write ``interactions.csv`` (and ``items.csv`` when there is an items table) into
        ``folder`` as ``--dataset custom`` reads them; the paths written."""
        folder.mkdir(parents=True, exist_ok=True)
        interactions = folder / "interactions.csv"
        self.interactions.drop(columns="line").to_csv(interactions, index=False)
        if self.items is None:
            return interactions, None
        items = folder / "items.csv"
        self.items.drop(columns="line").to_csv(items, index=False)
        return interactions, items
