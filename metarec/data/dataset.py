"""A preprocessed dataset: contiguous ids, time-ordered histories, item text, and a report.

Users are numbered 0..n_users-1 in order of their raw id, items 0..n_items-1 likewise,
so the protocols' "users sorted by id" is simply the index order. The mappings back to
raw ids travel with the dataset, are saved beside it and are part of its fingerprint. Raw
ids are integers (an int64 array) or text (an object array of str), as the source had them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.atomic import atomic_dir
from metarec.errors import DataError


def _id_bytes(ids: np.ndarray) -> bytes:
    """Raw ids as bytes to hash: int64 ids as their values (as fingerprints always were),
    text ids as UTF-8 with each id's length, so no two id lists give the same bytes."""
    if ids.dtype.kind in "iu":
        return np.ascontiguousarray(ids).tobytes()
    encoded = [str(raw).encode() for raw in ids]
    lengths = np.array([len(text) for text in encoded], dtype=np.int64)
    return b"text ids\0" + lengths.tobytes() + b"".join(encoded)


def _raw_ids(column: pd.Series) -> np.ndarray:
    """Saved raw ids as the dataset holds them: int64, or an object array of str."""
    return column.to_numpy(dtype=None if pd.api.types.is_integer_dtype(column) else object)


@dataclass
class Dataset:
    """Interactions sorted by ``(user, timestamp, item)`` plus id maps and item text.

    ``interactions`` columns: ``user``, ``item`` (int64 indices), ``timestamp`` (int64
    seconds, or positions in the file for a source without timestamps), ``rating``
    (float64, NaN when the source has none). ``user_ids`` (n_users,) and ``item_ids``
    (n_items,): raw id by index, int64 or str objects, sorted. ``report``: what
    preprocessing did (counts, the dedup policy, where timestamps came from).
    """

    name: str
    interactions: pd.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_text: list[str]
    report: dict[str, int | str] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def item_positions(self) -> dict[int | str, int]:
        """Raw item id (a Python int or str) -> contiguous item index."""
        return {raw: position for position, raw in enumerate(self.item_ids.tolist())}

    def titles(self) -> list[str]:
        """Each item's text up to its first " | " (the title of "title | genres")."""
        return [text.split(" | ")[0] for text in self.item_text]

    def _per_user(self, column: str) -> list[np.ndarray]:
        starts = np.searchsorted(self.interactions["user"].to_numpy(), np.arange(self.n_users + 1))
        values = self.interactions[column].to_numpy()
        return [values[starts[u] : starts[u + 1]] for u in range(self.n_users)]

    def sequences(self) -> list[np.ndarray]:
        """Each user's items in time order: a list of ``n_users`` int64 arrays."""
        return self._per_user("item")

    def rating_sequences(self) -> list[np.ndarray]:
        """Each user's ratings in the order of `sequences` (NaN where the source has none)."""
        return self._per_user("rating")

    def fingerprint(self) -> dict[str, str]:
        """SHA-256 prefixes of the interactions and of the items table (ids and text).

        A run records them when it is trained; jobs compare them to refuse other data.
        """
        interactions = hashlib.sha256()
        for column in ("user", "item", "timestamp"):
            interactions.update(np.ascontiguousarray(self.interactions[column].to_numpy()))
        interactions.update(_id_bytes(self.user_ids))
        items = hashlib.sha256(_id_bytes(self.item_ids))
        for text in self.item_text:
            items.update(text.encode() + b"\0")
        return {"interactions": interactions.hexdigest()[:16], "items": items.hexdigest()[:16]}

    def stats(self) -> dict[str, float | str]:
        """Size and shape of the dataset, plus what preprocessing removed."""
        lengths = np.diff(
            np.searchsorted(self.interactions["user"].to_numpy(), np.arange(self.n_users + 1))
        )
        n = len(self.interactions)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n,
            "density": n / max(1, self.n_users * self.n_items),
            "history_min": int(lengths.min()),
            "history_median": float(np.median(lengths)),
            "history_max": int(lengths.max()),
            **self.report,
        }

    def save(self, folder: Path) -> None:
        """Write the dataset to ``folder`` atomically (a crash never leaves half of it)."""
        with atomic_dir(folder) as staging:
            self.interactions.to_parquet(staging / "interactions.parquet", index=False)
            pd.DataFrame({"user_id": self.user_ids}).to_parquet(staging / "users.parquet")
            pd.DataFrame({"item_id": self.item_ids, "text": self.item_text}).to_parquet(
                staging / "items.parquet"
            )
            meta = {"name": self.name, "report": self.report}
            (staging / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> Dataset:
        """Read a dataset written by `save`."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
            items = pd.read_parquet(folder / "items.parquet")
            return cls(
                name=meta["name"],
                interactions=pd.read_parquet(folder / "interactions.parquet"),
                user_ids=_raw_ids(pd.read_parquet(folder / "users.parquet")["user_id"]),
                item_ids=_raw_ids(items["item_id"]),
                item_text=items["text"].tolist(),
                report=meta["report"],
            )
        except (OSError, KeyError, ValueError) as err:
            raise DataError(folder, f"not a readable prepared dataset ({err})") from None
