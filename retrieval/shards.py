"""Exactly-once output of a sharded batch job: shard files, done markers and a manifest.

Input users are cut into fixed shards of ``shard_users`` (the same cut whatever the
number of processes, so outputs do not depend on it). A shard's Parquet file is written
under a temporary name and renamed, then its marker ``part-NNNNN.json`` (users, rows,
failures, the file's SHA-256). A shard is done only when its marker exists and the file
still matches it, so a rerun after a crash redoes exactly the unfinished shards.
`ShardStore.verify` ends the job: every input user must appear exactly once, in a shard's
rows or in its failures, before ``manifest.json`` is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.atomic import atomic_file
from metarec.errors import MetarecError
from metarec.hashing import sha256_of

COLUMNS = ("user_id", "rank", "item_id", "score")


class ShardStore:
    """The shard files of one job under ``folder``, for ``n_users`` users."""

    def __init__(self, folder: Path, n_users: int, shard_users: int) -> None:
        if shard_users < 1:
            raise MetarecError(f"shard_users={shard_users}: must be at least 1")
        self.folder = folder
        self.n_users = n_users
        self.shard_users = shard_users
        self.n_shards = max(1, -(-n_users // shard_users))

    def users_of(self, shard: int) -> range:
        """Positions (in the input order) of the users of ``shard``."""
        return range(shard * self.shard_users, min(self.n_users, (shard + 1) * self.shard_users))

    def _paths(self, shard: int) -> tuple[Path, Path]:
        stem = self.folder / f"part-{shard:05d}"
        return stem.with_suffix(".parquet"), stem.with_suffix(".json")

    def marker(self, shard: int) -> dict | None:
        """The shard's marker if the shard is complete and intact, else None."""
        data_path, marker_path = self._paths(shard)
        try:
            marker = json.loads(marker_path.read_text())
            intact = data_path.is_file() and sha256_of(data_path) == marker["sha256"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None
        return marker if intact else None

    def write(self, shard: int, rows: pd.DataFrame, failures: dict[str, str]) -> None:
        """Store a finished shard: ``rows`` with `COLUMNS`, ``failures`` user id -> why."""
        data_path, marker_path = self._paths(shard)
        with atomic_file(data_path) as temporary:
            rows.loc[:, list(COLUMNS)].to_parquet(temporary, index=False)
            digest = sha256_of(temporary)
        marker = {
            "shard": shard,
            "users": len(self.users_of(shard)),
            "rows": len(rows),
            "failures": failures,
            "sha256": digest,
        }
        with atomic_file(marker_path) as temporary:
            temporary.write_text(json.dumps(marker, indent=2))

    def read(self) -> pd.DataFrame:
        """Every done shard's rows, in shard order."""
        frames = [
            pd.read_parquet(self._paths(shard)[0])
            for shard in range(self.n_shards)
            if self.marker(shard) is not None
        ]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)

    def verify(self, user_ids: Sequence | np.ndarray) -> dict:
        """Check that each of ``user_ids`` (input order) is in exactly one place; the manifest.

        Raises when a shard is missing or damaged, or a user is absent, repeated or in
        the wrong shard: nothing else can explain that but a bug or a changed input.
        """
        missing = [shard for shard in range(self.n_shards) if self.marker(shard) is None]
        if missing:
            names = ", ".join(self._paths(shard)[0].name for shard in missing[:5])
            raise MetarecError(
                f"{self.folder}: {len(missing)} shard(s) missing or damaged ({names}); "
                "run the same command again to finish them"
            )
        shards, failed = [], {}
        for shard in range(self.n_shards):
            marker = self.marker(shard)
            rows = pd.read_parquet(self._paths(shard)[0], columns=["user_id", "rank"])
            expected = [str(user_ids[i]) for i in self.users_of(shard)]
            _check_shard(self._paths(shard)[0], rows, marker["failures"], expected)
            failed.update(marker["failures"])
            shards.append({key: marker[key] for key in ("shard", "users", "rows", "sha256")})
        return {
            "users": self.n_users,
            "users_with_rows": self.n_users - len(failed),
            "failed": failed,
            "shards": shards,
        }


def _check_shard(path: Path, rows: pd.DataFrame, failures: dict, expected: list[str]) -> None:
    """Users in ``rows`` plus ``failures`` are ``expected``, each once; ranks are 1..n."""
    users = rows["user_id"].astype(str).to_numpy()
    ranked = set(users)
    if ranked & set(failures) or ranked | set(failures) != set(expected):
        extra = sorted((ranked | set(failures)) ^ set(expected))[:5]
        raise MetarecError(f"{path}: users do not match the shard's input (e.g. {extra})")
    for user, group in rows.groupby(users, sort=False)["rank"]:
        if not np.array_equal(np.sort(group.to_numpy()), np.arange(1, len(group) + 1)):
            raise MetarecError(f"{path}: user {user} appears more than once (ranks {list(group)})")
