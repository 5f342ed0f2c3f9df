"""The validated, not yet preprocessed, content of a dataset's files, and where rows came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.errors import DataError


@dataclass(frozen=True)
class Origin:
    """Where a table's rows come from, so that a row's ``line`` names its file and place.

    ``line`` is the source line for a text file and the 1-based row for other tables. A
    table of several part files (a Parquet folder, a saved `datasets` split) numbers its
    rows across ``parts`` in order, ``part_rows`` of them in each; errors then name the part
    file and the row within it. Without parts, ``path`` itself holds every row.
    """

    path: Path
    parts: tuple[Path, ...] = ()
    part_rows: tuple[int, ...] = ()

    def error(self, message: str, line: int | None = None, field: str | None = None) -> DataError:
        """A DataError about ``line`` (as the table numbers its rows) and ``field``."""
        if line is None or not self.parts:
            return DataError(self.path, message, line, field)
        ends = np.cumsum(self.part_rows)
        part = int(np.searchsorted(ends, line))
        return DataError(
            self.parts[part], message, line - int(ends[part]) + self.part_rows[part], field
        )


@dataclass
class RawData:
    """Interactions and item metadata exactly as read, with where they came from.

    ``interactions`` has ``user_id``, ``item_id`` (both int64, or both kinds as str when
    the source's ids are text), ``timestamp`` (int64 seconds, or float64 seconds when the
    source has fractions of a second), float64 ``rating`` (NaN when the source has none)
    and ``line`` (source line, for error messages). ``items`` has ``item_id``, str ``text``
    and ``line``, or is None when the source has no items table (the catalogue is then the
    items seen in interactions). ``time_column`` names the column timestamps came from, or
    is None when the table had none and ``timestamp`` is the row's position in the file.
    """

    name: str
    interactions: pd.DataFrame
    interactions_path: Path
    items: pd.DataFrame | None = None
    items_path: Path | None = None
    time_column: str | None = "timestamp"
    interactions_origin: Origin | None = None
    items_origin: Origin | None = None

    def error(
        self, table: str, message: str, line: int | None = None, field: str | None = None
    ) -> DataError:
        """A DataError about ``line`` of the ``interactions`` or ``items`` table."""
        path = self.interactions_path if table == "interactions" else self.items_path
        origin = self.interactions_origin if table == "interactions" else self.items_origin
        return (origin or Origin(path)).error(message, line, field)

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
