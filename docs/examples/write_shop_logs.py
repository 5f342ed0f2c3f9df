"""Write a small shop's logs as they usually come, for docs/quickstart.md's own-data example.

    python docs/examples/write_shop_logs.py runs/shop

``logs.csv``: ``customer`` (text ids like ``c-0007``), ``sku`` (text ids like ``SKU-00042``),
``when`` (ISO 8601 datetimes with a zone), ``stars`` (1-5); ``catalogue.csv``: ``sku``,
``name``, ``aisle``. The behaviour underneath is metarec's synthetic dataset (topics that
users walk through), so a model has something to learn; only the ids, times and column
names are what a real export looks like.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.synthetic import synthetic_raw


def main(folder: Path) -> None:
    raw = synthetic_raw(n_users=240, n_items=150, seed=0)
    rng = np.random.default_rng(0)
    moments = pd.to_datetime(raw.interactions["timestamp"], unit="s", utc=True)
    logs = pd.DataFrame(
        {
            "customer": [f"c-{user:04d}" for user in raw.interactions["user_id"]],
            "sku": [f"SKU-{item:05d}" for item in raw.interactions["item_id"]],
            "when": (moments + pd.Timedelta(days=19_000)).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "stars": rng.integers(1, 6, size=len(raw.interactions)),
        }
    )
    names, aisles = zip(*(text.split(" | ") for text in raw.items["text"]), strict=True)
    catalogue = pd.DataFrame(
        {
            "sku": [f"SKU-{item:05d}" for item in raw.items["item_id"]],
            "name": names,
            "aisle": aisles,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    logs.to_csv(folder / "logs.csv", index=False)
    catalogue.to_csv(folder / "catalogue.csv", index=False)
    print(f"wrote {folder / 'logs.csv'} ({len(logs)} rows) and {folder / 'catalogue.csv'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/shop"))
