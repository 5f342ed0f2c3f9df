"""The batch rerank job: adapt each user, retrieve candidates from the index, rescore them.

For every batch of users: the batched inner loop adapts their fast weights on their
histories (`metarec.meta.personalise.adapted_states`); the adapted state after the last
history item queries the FAISS index for candidates; the history's own items are dropped;
the remaining ``candidates`` are rescored exactly with the adapted model and the top
``top_k`` written as ``(user_id, rank, item_id, score)`` Parquet rows (raw ids).

Ids are the user's own, integers or strings. A ``--histories`` file's user ids are kept as
they come (integer ids or text ids, as the data layer reads an id column) and its item ids
are read in the kind of the run's (`metarec.options.id_positions` matches them); without a
file, the users are the run's own, under their dataset ids.

Scoring reuses each user's encoded history: a candidate's score is the dot product of the
state after the history with the candidate's vector, so the history runs through the
backbone once per user (per inner step) however many candidates are scored, the way a KV
cache serves a shared prefix. The rescoring matters with a lossy index (``ivfpq``), whose
own scores are approximate.

Memory does not grow with the number of users beyond their input: histories are held as
arrays (`UserInputs`), not an object per user, and only one shard's users and rows exist
as objects before the shard is written. Nor with the catalogue beyond the item side and the
index: adaptation estimates its softmax on the run's ``meta.support_negatives`` sampled
items (one fixed draw for every user), or, without them, streams it over the catalogue
(`metarec.meta.personalise.streamed_support_loss_fn`), whose time grows with the catalogue.

Under ``torchrun`` the fixed shards of `retrieval.shards` are dealt round-robin to the
ranks; a rerun skips finished shards, and rank 0 ends the job with the exactly-once check.
`metarec rerank` is the command (plain, or under ``torchrun --nproc_per_node N``):

    metarec rerank --checkpoint runs/tiny --index runs/tiny/index --output-dir runs/tiny/rerank
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from metarec.atomic import atomic_file
from metarec.data.custom import read_table
from metarec.data.dataset import Dataset
from metarec.data.episodes import collate
from metarec.data.prepare import DataConfig
from metarec.data.sources import source_sha256
from metarec.data.tables import Column
from metarec.device import model_device, to_numpy
from metarec.distributed.engine import DistributedConfig, init_process_group
from metarec.errors import ConfigError, MetarecError
from metarec.hashing import sha256_of
from metarec.meta.personalise import adapted_states
from metarec.meta.recommender import LLMRecommender
from metarec.options import (
    Environment,
    add_run_options,
    check_writable,
    id_positions,
    job_config,
)
from metarec.trained_run import TrainedRun
from retrieval.index import LoadedIndex, load_index
from retrieval.shards import ShardStore

SPLIT_PARTS = ("test", "valid")


@dataclass
class RerankConfig:
    """Which users, which model and index, and how the job is cut up."""

    run: Path  # a metarec train run dir
    index: Path  # an index folder built from that run (metarec index build)
    output_dir: Path
    data: DataConfig | None = None  # None: the run's own data, as it was trained
    histories: Path | None = None  # CSV/Parquet user_id, item_id[, timestamp] (raw ids)
    split_users: str = "test"  # without histories: these users of the run's coldstart split
    support_size: int = 10  # ... each given its first support_size items
    candidates: int = 100  # retrieved from the index per user
    top_k: int = 10  # written per user
    batch_size: int = 32  # users adapted together
    shard_users: int = 256  # users per output shard
    inner_steps: int | None = None  # default: the run's meta.inner_steps
    trust_remote_code: bool = False  # let the run's backbone run code from its model folder
    device: str = "cpu"  # where the model computes (--device, resolved by config_from_args)
    kill_after_shards: int | None = None  # tests: SIGKILL after writing this many shards
    launched_world_size: int = 1  # processes the launcher started (torchrun)

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.candidates:
            raise ConfigError(f"top_k={self.top_k} must be between 1 and candidates")
        if self.split_users not in SPLIT_PARTS:
            raise ConfigError(f"split_users {self.split_users!r}: expected test or valid")


@dataclass
class UserInput:
    """One user to rerank: raw id, history as item indices, and why it cannot be, if so."""

    user_id: int | str
    history: np.ndarray
    problem: str | None = None


@dataclass
class UserInputs:
    """Every user of the job, held as a few arrays rather than an object per user: user
    ``j``'s history is ``items[offsets[j]:offsets[j + 1]]``. `users` builds the
    `UserInput` objects of one shard's users only."""

    user_ids: np.ndarray  # (U,) raw ids, integers or strings
    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (offsets[-1],) int64 item indices, -1 for an item the run lacks
    problems: dict[int, str]  # position -> why that user cannot be scored

    def __len__(self) -> int:
        return len(self.user_ids)

    def users(self, positions: range) -> list[UserInput]:
        """The users at ``positions`` (in input order)."""
        return [
            UserInput(
                self.user_ids[j],
                self.items[self.offsets[j] : self.offsets[j + 1]],
                self.problems.get(j),
            )
            for j in positions
        ]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """(U + 1,) int64 start of each of U consecutive runs of ``lengths``, then the end."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _history_columns(dataset: Dataset) -> list[Column]:
    """A histories table's columns: user ids as they come, item ids in the kind of the
    run's (a run with text ids reads every item id as text, so ``0012`` stays ``0012``)."""
    integer_items = dataset.item_ids.dtype.kind in "iu"
    return [
        Column("user_id", "id"),
        Column("item_id", "id" if integer_items else "text_id"),
        Column("timestamp", "time", required=False),
    ]


def file_inputs(path: Path, dataset: Dataset) -> UserInputs:
    """Users of a histories table, items in time order (file order without timestamps);
    users in order of their first row after that sort. A user whose history holds item
    ids the run does not know is not scored: its problem names the first five."""
    table = read_table(path, _history_columns(dataset))
    if "timestamp" in table.columns:
        table = table.sort_values(["timestamp", "line"], kind="stable")
    users, user_ids = pd.factorize(table["user_id"], sort=False)  # by first appearance
    by_user = np.argsort(users, kind="stable")  # each user's rows together, in time order
    items = id_positions(dataset.item_ids, table["item_id"])[by_user]
    offsets = _offsets(np.bincount(users, minlength=len(user_ids)))
    raw_items = table["item_id"].to_numpy()[by_user]
    problems = {}
    for j in np.unique(users[by_user][items < 0]):  # only the users with unknown items
        history = slice(offsets[j], offsets[j + 1])
        unknown = raw_items[history][items[history] < 0][:5].tolist()
        problems[int(j)] = f"unknown item ids {unknown} in {path}"
    return UserInputs(np.asarray(user_ids), offsets, items, problems)


def split_inputs(config: RerankConfig, run: TrainedRun) -> UserInputs:
    """The run's own coldstart test (or validation) users, each with its support."""
    run.check_compatible("coldstart")
    split = run.split(config.support_size)
    cases = split.test if config.split_users == "test" else split.valid
    histories = [case.history for case in cases]
    return UserInputs(
        run.dataset.user_ids[[case.user for case in cases]],
        _offsets(np.array([len(history) for history in histories], dtype=np.int64)),
        np.concatenate(histories) if histories else np.empty(0, dtype=np.int64),
        {},
    )


def rerank_batch(
    method: LLMRecommender,
    index: LoadedIndex,
    histories: list[np.ndarray],
    n_candidates: int,
    top_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` item indices (U, k) and scores (U, k) of adapted users; -1 = none.

    The model reads each history's most recent ``max_len`` items; every item of the
    history is excluded. Ties in score go to the lower item index, as in evaluation.
    """
    model = method.model
    device = model_device(model)
    recent = [history[-model.config.max_len :] for history in histories]
    batch = collate(recent, [np.empty(0, dtype=np.int64)] * len(histories), device)
    states = adapted_states(model, batch, method.meta, method.rates, method.inner_steps)
    widest = max(len(history) for history in histories)
    found, _ = index.search_rows(to_numpy(states), n_candidates + widest)  # item indices
    candidates = np.full((len(histories), n_candidates), -1, dtype=np.int64)
    for row, (items, history) in enumerate(zip(found, histories, strict=True)):
        kept = items[(items >= 0) & ~np.isin(items, history)][:n_candidates]
        candidates[row, : len(kept)] = kept
    with torch.no_grad():
        vectors = model.item_vectors(torch.from_numpy(candidates.clip(min=0)).to(device))
        scores = to_numpy(torch.einsum("ud,und->un", states, vectors))
    scores[candidates < 0] = -np.inf
    order = np.lexsort((candidates, -scores), axis=1)[:, :top_k]
    return np.take_along_axis(candidates, order, 1), np.take_along_axis(scores, order, 1)


def _shard_rows(
    method: LLMRecommender,
    index: LoadedIndex,
    users: list[UserInput],
    dataset: Dataset,
    config: RerankConfig,
    progress: tqdm,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """One shard's output rows, and its users that could not be scored with the reason."""
    failures = {str(user.user_id): user.problem for user in users if user.problem}
    scorable = [user for user in users if str(user.user_id) not in failures]
    frames = []
    for start in range(0, len(scorable), config.batch_size):
        part = scorable[start : start + config.batch_size]
        histories = [user.history for user in part]
        items, scores = rerank_batch(method, index, histories, config.candidates, config.top_k)
        for user, user_items, user_scores in zip(part, items, scores, strict=True):
            real = user_items >= 0
            if not real.any() or not np.isfinite(user_scores[real]).all():
                failures[str(user.user_id)] = "no finite candidate scores after adaptation"
                continue
            frames.append(
                pd.DataFrame(
                    {
                        "user_id": user.user_id,
                        "rank": np.arange(1, real.sum() + 1, dtype=np.int32),
                        "item_id": dataset.item_ids[user_items[real]],
                        "score": user_scores[real].astype(np.float32),
                    }
                )
            )
        progress.update(len(part))
    progress.update(len(users) - len(scorable))
    empty = pd.DataFrame({"user_id": [], "rank": [], "item_id": [], "score": []})
    return (pd.concat(frames, ignore_index=True) if frames else empty), failures


def _claim_output_dir(config: RerankConfig, job: dict, rank: int) -> None:
    """Record the job in ``job.json``; a rerun must be the same job, not another one."""
    path = config.output_dir / "job.json"
    if path.is_file():  # every rank reads it, so every rank stops together
        previous = json.loads(path.read_text())
        if previous != job:
            changed = sorted(k for k in job if previous.get(k) != job[k])
            raise MetarecError(
                f"{config.output_dir} holds another job (differs in {changed}); "
                "use a new --output-dir"
            )
    elif rank == 0:
        with atomic_file(path) as temporary:
            temporary.write_text(json.dumps(job, indent=2))
    if dist.is_initialized():
        dist.barrier()


def run_rerank(config: RerankConfig) -> dict:
    """Run (or finish) the job; returns the manifest (on rank 0; others return {})."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    run = TrainedRun(config.run, config.data, config.trust_remote_code, config.device)
    method, dataset, fingerprint = run.recommender(config.inner_steps), run.dataset, run.fingerprint
    index = load_index(config.index, encoder=fingerprint, device=config.device)
    if config.histories is not None:
        inputs = file_inputs(config.histories, dataset)
        source = {"histories": str(config.histories), "sha256": source_sha256(config.histories)}
    else:
        inputs = split_inputs(config, run)
        source = {"split_users": config.split_users, "support_size": config.support_size}
    settings = asdict(config)
    job = {
        **{key: settings[key] for key in ("candidates", "top_k", "batch_size", "shard_users")},
        "checkpoint": fingerprint,
        "index_metadata": sha256_of(config.index / "metadata.json"),
        "inner_steps": method.inner_steps,
        "input": source,
        "users": len(inputs),
    }
    _claim_output_dir(config, job, rank)
    store = ShardStore(config.output_dir / "shards", len(inputs), config.shard_users)
    mine = [s for s in range(rank, store.n_shards, world_size) if store.marker(s) is None]
    started = time.perf_counter()
    progress = tqdm(
        total=sum(len(store.users_of(shard)) for shard in mine),
        desc="rerank",
        unit="user",
        disable=rank != 0,
    )
    with method.model.frozen_item_vectors():
        for done, shard in enumerate(mine, start=1):
            users = inputs.users(store.users_of(shard))
            rows, failures = _shard_rows(method, index, users, dataset, config, progress)
            store.write(shard, rows, failures)
            if config.kill_after_shards == done:
                os.kill(os.getpid(), signal.SIGKILL)
    progress.close()
    seconds = time.perf_counter() - started
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        return {}
    manifest = store.verify(inputs.user_ids)
    manifest["job"] = job
    with atomic_file(config.output_dir / "manifest.json") as temporary:
        temporary.write_text(json.dumps(manifest, indent=2))
    manifest["seconds_this_run"] = seconds
    manifest["users_this_run"] = progress.n
    if manifest["failed"]:
        named = "; ".join(f"{u}: {why}" for u, why in list(manifest["failed"].items())[:5])
        raise MetarecError(
            f"{len(manifest['failed'])} of {len(inputs)} users failed (all listed in "
            f"{config.output_dir / 'manifest.json'}): {named}"
        )
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, "metarec train run dir")
    parser.add_argument("--index", type=Path, required=True, help="built from that run")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument(
        "--histories", type=Path, help="CSV/Parquet: user_id, item_id[, timestamp] (raw ids)"
    )
    parser.add_argument(
        "--split-users",
        choices=SPLIT_PARTS,
        default="test",
        help="without --histories: these users of the run's coldstart split",
    )
    parser.add_argument("--support-size", type=int, default=10, help="with --split-users")
    parser.add_argument("--candidates", type=int, default=100, help="retrieved per user")
    parser.add_argument("--top-k", type=int, default=10, help="written per user")
    parser.add_argument("--batch-size", type=int, default=32, help="users adapted together")
    parser.add_argument("--shard-users", type=int, default=256, help="users per output shard")
    parser.add_argument("--inner-steps", type=int, help="default: the run's meta.inner_steps")
    # fault injection for the exactly-once tests: SIGKILL after writing N shards
    parser.add_argument("--kill-after-shards", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace, env: Environment) -> RerankConfig:
    return job_config(RerankConfig, args, env, launched_world_size=env.world_size)


def run(config: RerankConfig) -> None:
    """The job in this process (one of ``launched_world_size``); rank 0 prints the summary."""
    check_writable(config.output_dir / "job.json")
    init_process_group(DistributedConfig(device=config.device), config.launched_world_size)
    manifest = run_rerank(config)
    if manifest:
        seconds = manifest["seconds_this_run"]
        users = manifest["users_this_run"]
        print(
            f"{manifest['users']} users in {len(manifest['shards'])} shards, each once; "
            f"this run scored {users} users in {seconds:.1f} s "
            f"({users / max(seconds, 1e-9):.1f} users/s); "
            f"wrote {config.output_dir / 'manifest.json'}"
        )
