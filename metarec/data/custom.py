"""Users' own data: an interactions table and an optional items table, CSV or Parquet.

Interactions need ``user_id, item_id, timestamp`` (integers) and may have ``rating``.
Items need ``item_id``; their text is the ``text`` column if there is one, otherwise the
other columns joined with `` | `` (e.g. ``title | genres``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metarec.data.raw import RawData
from metarec.data.tables import Column, read_csv_with_header, read_parquet_table
from metarec.errors import DataError

INTERACTION_COLUMNS = [
    Column("user_id", "int"),
    Column("item_id", "int"),
    Column("timestamp", "int"),
    Column("rating", "float", required=False),
]
ITEM_COLUMNS = [Column("item_id", "int")]


def read_table(path: Path, columns: list[Column]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "file does not exist")
    if path.suffix.lower() in {".parquet", ".pq"}:
        return read_parquet_table(path, columns)
    if path.suffix.lower() in {".csv", ".txt"}:
        return read_csv_with_header(path, columns)
    raise DataError(path, f"unsupported file type {path.suffix!r}: expected .csv or .parquet")


def _items_text(frame: pd.DataFrame) -> pd.Series:
    if "text" in frame.columns:
        return frame["text"].astype(str)
    text_columns = [c for c in frame.columns if c not in {"item_id", "line"}]
    if not text_columns:
        return frame["item_id"].map(lambda item: f"item {item}")
    return frame[text_columns].astype(str).agg(" | ".join, axis=1)


def load_custom(interactions_path: Path, items_path: Path | None = None, name: str = "custom"):
    """Read and validate a user's interactions (and items) tables into RawData."""
    interactions = read_table(interactions_path, INTERACTION_COLUMNS)
    if "rating" not in interactions.columns:
        interactions["rating"] = float("nan")
    interactions = interactions[["user_id", "item_id", "timestamp", "rating", "line"]]
    items = None
    if items_path is not None:
        table = read_table(items_path, ITEM_COLUMNS)
        items = pd.DataFrame(
            {"item_id": table["item_id"], "text": _items_text(table), "line": table["line"]}
        )
    return RawData(
        name=name,
        interactions=interactions,
        interactions_path=interactions_path,
        items=items,
        items_path=items_path,
    )
