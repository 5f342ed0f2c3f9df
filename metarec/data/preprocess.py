"""Turn validated RawData into a Dataset: check ids, filter, de-duplicate, order, remap.

Steps, in order, each counted in the report so nothing disappears unannounced:
1. item ids must be unique in the items table and every interaction's item must be in it;
2. optional ``min_rating`` filter (rows below it are dropped);
3. de-duplication of a repeated (user, item) pair, by the ``dedup`` policy: ``first``
   keeps its earliest interaction, ``last`` its latest, ``all`` keeps every one;
4. optional k-core: users and items with fewer than k interactions are removed,
   repeatedly, until none is left;
5. stable order by ``(user, timestamp, item_id)`` and contiguous ids in raw-id order
   (integers by value, text ids by code point).

Ids work as integer codes in raw-id order from the start, so the steps cost the same for
text ids as for integers. Timestamps with fractions of a second order the histories, then
become whole seconds (so two interactions in one second keep their order, whatever their
item ids). The report also says where timestamps came from and the dedup policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from metarec.data.dataset import Dataset
from metarec.data.raw import RawData
from metarec.errors import ConfigError

DEDUP_POLICIES = ("first", "last", "all")


@dataclass(frozen=True)
class PreprocessOptions:
    """``min_rating``: keep rows rated at least this (None keeps all); ``k_core``: 0 is off;
    ``dedup``: which of a repeated (user, item) pair's interactions to keep (`DEDUP_POLICIES`)."""

    min_rating: float | None = None
    k_core: int = 0
    dedup: str = "first"

    def __post_init__(self) -> None:
        if self.dedup not in DEDUP_POLICIES:
            raise ConfigError(f"dedup {self.dedup!r}: expected one of {', '.join(DEDUP_POLICIES)}")


def _shown(raw_id: object) -> str:
    """An id as a message shows it: ``99`` or ``'B0001'``."""
    value = raw_id.item() if isinstance(raw_id, np.generic) else raw_id
    return repr(value)


def _is_text(ids: pd.Series) -> bool:
    return not pd.api.types.is_integer_dtype(ids)


def _check_items(raw: RawData) -> None:
    items = raw.items
    if items is None:
        return
    repeated = items["item_id"].duplicated()
    if repeated.any():
        row = items.loc[repeated, ["item_id", "line"]].iloc[0]
        first = items.loc[items["item_id"] == row["item_id"], "line"].iloc[0]
        raise raw.error(
            "items",
            f"duplicate item id {_shown(row['item_id'])} (first at line {first})",
            line=int(row["line"]),
            field="item_id",
        )
    unknown = ~raw.interactions["item_id"].isin(items["item_id"])
    if unknown.any():
        # by column, not .iloc[row]: a row across columns upcasts an integer id next to
        # a float rating to float ("999.0")
        row = raw.interactions.loc[unknown, ["item_id", "line"]].iloc[0]
        kinds = ""
        if _is_text(items["item_id"]) != _is_text(raw.interactions["item_id"]):
            kind = {True: "text", False: "integers"}
            kinds = (
                f"; the items table's ids are {kind[_is_text(items['item_id'])]}, "
                f"the interactions' {kind[_is_text(raw.interactions['item_id'])]}"
            )
        raise raw.error(
            "interactions",
            f"unknown item id {_shown(row['item_id'])}: not in items table {raw.items_path} "
            f"({int(unknown.sum())} rows like this){kinds}",
            line=int(row["line"]),
            field="item_id",
        )


def _codes(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each id's rank among the distinct ids, int64 (n,), and those ids, sorted (u,)."""
    if not _is_text(ids):
        codes, uniques = pd.factorize(ids, sort=True)
        return codes.astype(np.int64), np.asarray(uniques, dtype=np.int64)
    # Arrow sorts text in C++ (by code point, as Python does); pandas sorts Python strings
    encoded = pa.array(ids, type=pa.large_string()).dictionary_encode()
    order = pc.array_sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    uniques = encoded.dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False)
    return rank[encoded.indices.to_numpy()], uniques.astype(object)


def _k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Which interactions (bool (n,)) survive repeatedly removing users and items with
    fewer than ``k`` of them."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=0) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=0) + 1)
        kept = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if (kept == keep).all():
            return keep
        keep = kept


def _present(codes: np.ndarray, size: int) -> np.ndarray:
    """Which of ``size`` codes occur in ``codes``: bool (size,)."""
    return np.bincount(codes, minlength=size) > 0


def preprocess(raw: RawData, options: PreprocessOptions) -> Dataset:
    """Validate ids, filter, de-duplicate, order and remap ``raw`` into a Dataset."""
    _check_items(raw)
    table = raw.interactions
    users, user_ids = _codes(table["user_id"])
    items, item_ids = _codes(table["item_id"])
    times = table["timestamp"].to_numpy()
    ratings = table["rating"].to_numpy(dtype=np.float64)
    order = np.lexsort((items, times, users))
    users, items, times, ratings = users[order], items[order], times[order], ratings[order]
    report: dict[str, int | str] = {
        "rows_read": len(order),
        "timestamps": raw.time_column or "file order",
    }
    keep = np.ones(len(order), dtype=bool)
    if options.min_rating is not None:
        if np.isnan(ratings).all():
            raise ConfigError(
                f"min_rating={options.min_rating} but {raw.interactions_path} has no rating column"
            )
        keep = ratings >= options.min_rating
        report["removed_below_min_rating"] = int((~keep).sum())

    report["dedup"] = options.dedup
    repeated = np.zeros(int(keep.sum()), dtype=bool)  # among the rows kept so far
    if options.dedup != "all":
        pairs = pd.Series(users[keep] * len(item_ids) + items[keep])
        repeated = pairs.duplicated(keep=options.dedup).to_numpy()
    report["removed_duplicates"] = int(repeated.sum())
    keep[np.flatnonzero(keep)[repeated]] = False

    if raw.items is not None:
        _, catalogue = _codes(raw.items["item_id"])
    else:
        catalogue = item_ids[_present(items[keep], len(item_ids))]
    if options.k_core > 0:
        before = keep.copy()
        keep[before] = _k_core(users[before], items[before], options.k_core)
        report["removed_by_k_core"] = int(before.sum() - keep.sum())
        report["users_removed_by_k_core"] = int(
            _present(users[before], len(user_ids)).sum()
            - _present(users[keep], len(user_ids)).sum()
        )
        report["items_removed_by_k_core"] = int(
            len(catalogue) - _present(items[keep], len(item_ids)).sum()
        )
        catalogue = item_ids[_present(items[keep], len(item_ids))]
    if not keep.any():
        raise raw.error("interactions", f"no interactions left after preprocessing ({report})")

    users, items, times, ratings = users[keep], items[keep], times[keep], ratings[keep]
    kept_users = _present(users, len(user_ids))
    user_index = np.cumsum(kept_users) - 1  # code -> contiguous user index
    item_index = pd.Index(catalogue).get_indexer(item_ids)  # code -> catalogue position
    if not np.issubdtype(times.dtype, np.integer):
        times = np.floor(times)
    interactions = pd.DataFrame(
        {
            "user": user_index[users].astype(np.int64),
            "item": item_index[items].astype(np.int64),
            "timestamp": times.astype(np.int64),
            "rating": ratings,
        }
    )
    if raw.items is not None:
        text = raw.items["text"].to_numpy()
        item_text = text[pd.Index(raw.items["item_id"]).get_indexer(catalogue)].tolist()
    else:
        item_text = [f"item {item}" for item in catalogue]
    report["items_without_interactions"] = int(
        len(catalogue) - _present(items, len(item_ids)).sum()
    )
    return Dataset(
        name=raw.name,
        interactions=interactions,
        user_ids=user_ids[kept_users],
        item_ids=catalogue,
        item_text=item_text,
        report=report,
    )
