"""Users' own data: an interactions table and an optional items table, in any format
`metarec.data.sources` reads, with their columns named as the user's files name them.

Interactions need a user id and an item id column and may have a timestamp and a rating
(`ColumnNames` says which columns those are). A table without timestamps keeps its file
order: each user's history is in the order of its rows, and a warning says so once. Items
need the item id column; their text is the chosen text columns, else the ``text`` column,
else every other column, joined with `` | `` (e.g. ``title | genres``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.columns import Column
from metarec.data.raw import RawData
from metarec.data.sources import read_source
from metarec.errors import ConfigError

ID_TYPES = ("auto", "str")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColumnNames:
    """Which columns of the user's tables hold what, and how ids are read.

    ``time`` and ``rating``: None reads the ``timestamp`` / ``rating`` column when the table
    has one (no timestamps: file order); a name given must be there. ``item_text``: the
    items table's text columns, in order (None: ``text``, else all others). ``id_type``:
    ``auto`` reads a column of plain integers as integer ids and any other as text ids (a
    mix is an error); ``str`` reads every id as text (see `metarec.data.columns`).
    """

    user: str = "user_id"
    item: str = "item_id"
    time: str | None = None
    rating: str | None = None
    item_text: tuple[str, ...] | None = None
    id_type: str = "auto"

    def __post_init__(self) -> None:
        if self.id_type not in ID_TYPES:
            raise ConfigError(f"id_type {self.id_type!r}: expected one of {', '.join(ID_TYPES)}")
        if self.user == self.item:
            raise ConfigError(f"the user and item id columns are both {self.user!r}")

    @property
    def id_kind(self) -> str:
        return "id" if self.id_type == "auto" else "text_id"


def read_table(path: Path, columns: list[Column]) -> pd.DataFrame:
    """The table at ``path`` as a typed frame with ``line`` (`metarec.data.sources`)."""
    return read_source(path, columns)[0]


def _items_text(table: pd.DataFrame, names: ColumnNames) -> pd.Series:
    """Each item's text (n,): its text columns joined with " | ", or ``item <id>``."""
    if names.item_text:
        chosen = list(names.item_text)
    elif "text" in table.columns:
        chosen = ["text"]
    else:
        chosen = [name for name in table.columns if name not in {names.item, "line"}]
    if not chosen:
        return "item " + table[names.item].astype(str)
    text = table[chosen[0]].astype(str)
    for name in chosen[1:]:
        text = text + " | " + table[name].astype(str)
    return text


def load_custom(
    interactions_path: Path,
    items_path: Path | None = None,
    name: str = "custom",
    names: ColumnNames | None = None,
) -> RawData:
    """Read and validate a user's interactions (and items) tables into RawData; ``names``:
    which columns hold what (default: `ColumnNames`' names)."""
    names = names or ColumnNames()
    time, rating = names.time or "timestamp", names.rating or "rating"
    table, origin = read_source(
        interactions_path,
        [
            Column(names.user, names.id_kind),
            Column(names.item, names.id_kind),
            Column(time, "time", required=names.time is not None),
            Column(rating, "float", required=names.rating is not None),
        ],
        others=False,
    )
    has_time = time in table.columns
    if not has_time:
        log.warning(
            "%s has no %s column: each user's history is taken in file order",
            interactions_path,
            time,
        )
    interactions = pd.DataFrame(
        {
            "user_id": table[names.user],
            "item_id": table[names.item],
            "timestamp": table[time] if has_time else np.arange(len(table)),
            "rating": table[rating] if rating in table.columns else float("nan"),
            "line": table["line"],
        }
    )
    items = items_origin = None
    if items_path is not None:
        text_columns = [Column(column, "str") for column in names.item_text or ()]
        table, items_origin = read_source(
            items_path,
            [Column(names.item, names.id_kind), *text_columns],
            others=names.item_text is None,
        )
        items = pd.DataFrame(
            {
                "item_id": table[names.item],
                "text": _items_text(table, names),
                "line": table["line"],
            }
        )
    return RawData(
        name=name,
        interactions=interactions,
        interactions_path=interactions_path,
        items=items,
        items_path=items_path,
        time_column=time if has_time else None,
        interactions_origin=origin,
        items_origin=items_origin,
    )
