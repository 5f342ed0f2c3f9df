"""Turn validated RawData into a Dataset: check ids, filter, de-duplicate, order, remap.

Steps, in order, each counted in the report so nothing disappears unannounced:
1. item ids must be unique in the items table and every interaction's item must be in it;
2. optional ``min_rating`` filter (rows below it are dropped);
3. de-duplication: a repeated (user, item) pair keeps its earliest interaction;
4. optional k-core: users and items with fewer than k interactions are removed,
   repeatedly, until none is left;
5. stable order by ``(user, timestamp, item_id)`` and contiguous ids in raw-id order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from metarec.data.dataset import Dataset
from metarec.data.raw import RawData
from metarec.errors import ConfigError, DataError


@dataclass(frozen=True)
class PreprocessOptions:
    """``min_rating``: keep rows rated at least this (None keeps all); ``k_core``: 0 is off."""

    min_rating: float | None = None
    k_core: int = 0


def _check_items(raw: RawData) -> None:
    items = raw.items
    if items is None:
        return
    repeated = items["item_id"].duplicated()
    if repeated.any():
        row = items[repeated].iloc[0]
        first = items.loc[items["item_id"] == row["item_id"], "line"].iloc[0]
        raise DataError(
            raw.items_path,
            f"duplicate item id {row['item_id']} (first at line {first})",
            line=int(row["line"]),
            field="item_id",
        )
    unknown = ~raw.interactions["item_id"].isin(items["item_id"])
    if unknown.any():
        row = raw.interactions[unknown].iloc[0]
        raise DataError(
            raw.interactions_path,
            f"unknown item id {row['item_id']}: not in items table {raw.items_path} "
            f"({int(unknown.sum())} rows like this)",
            line=int(row["line"]),
            field="item_id",
        )


def _k_core(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    while True:
        user_counts = frame["user_id"].map(frame["user_id"].value_counts())
        item_counts = frame["item_id"].map(frame["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return frame
        frame = frame[keep]


def preprocess(raw: RawData, options: PreprocessOptions) -> Dataset:
    """Validate ids, filter, de-duplicate, order and remap ``raw`` into a Dataset."""
    _check_items(raw)
    frame = raw.interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    report = {"rows_read": len(frame)}

    if options.min_rating is not None:
        if frame["rating"].isna().all():
            raise ConfigError(
                f"min_rating={options.min_rating} but {raw.interactions_path} has no rating column"
            )
        kept = frame["rating"] >= options.min_rating
        report["removed_below_min_rating"] = int((~kept).sum())
        frame = frame[kept]

    repeated = frame.duplicated(["user_id", "item_id"], keep="first")
    report["removed_duplicates"] = int(repeated.sum())
    frame = frame[~repeated]

    catalogue = raw.items["item_id"] if raw.items is not None else frame["item_id"]
    catalogue = np.unique(catalogue.to_numpy())
    if options.k_core > 0:
        before = frame
        frame = _k_core(frame, options.k_core)
        report["removed_by_k_core"] = len(before) - len(frame)
        report["users_removed_by_k_core"] = before["user_id"].nunique() - frame["user_id"].nunique()
        report["items_removed_by_k_core"] = len(catalogue) - frame["item_id"].nunique()
        catalogue = np.unique(frame["item_id"].to_numpy())
    if frame.empty:
        raise DataError(
            raw.interactions_path, f"no interactions left after preprocessing ({report})"
        )

    user_ids = np.unique(frame["user_id"].to_numpy())
    interactions = pd.DataFrame(
        {
            "user": np.searchsorted(user_ids, frame["user_id"].to_numpy()),
            "item": np.searchsorted(catalogue, frame["item_id"].to_numpy()),
            "timestamp": frame["timestamp"].to_numpy(),
            "rating": frame["rating"].to_numpy(dtype=np.float64),
        }
    )
    if raw.items is not None:
        text_by_id = dict(zip(raw.items["item_id"], raw.items["text"], strict=True))
        item_text = [text_by_id[item] for item in catalogue]
    else:
        item_text = [f"item {item}" for item in catalogue]
    report["items_without_interactions"] = int(len(catalogue) - frame["item_id"].nunique())
    return Dataset(
        name=raw.name,
        interactions=interactions.reset_index(drop=True),
        user_ids=user_ids,
        item_ids=catalogue,
        item_text=item_text,
        report=report,
    )
