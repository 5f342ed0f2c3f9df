"""``metarec index build``: a trained run's item side encodes the catalogue, FAISS indexes it.

    metarec index build --checkpoint runs/tiny --output runs/tiny/index --kind ivf

Vectors are encoded ``chunk_rows`` items at a time into a memory-mapped ``.npy`` beside
the output, so a catalogue larger than RAM never has to be held whole; the index is then
built from that file (`retrieval.index.build_index_on`, on the job's GPU when FAISS can
use it, saved as a CPU index whatever the device) and the file removed. The index is
tagged with the run's fingerprint (`metarec.trained_run.TrainedRun.fingerprint`: its
weight files, adapter included, and the items table), and jobs that query it with
another run, or a run changed since, are refused.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from metarec.data.prepare import DataConfig
from metarec.device import to_numpy
from metarec.errors import ConfigError, MetarecError
from metarec.models.user_model import UserModel
from metarec.options import (
    Environment,
    add_data_options,
    add_device_option,
    add_remote_code_option,
    check_writable,
    from_args,
    job_config,
)
from metarec.trained_run import TrainedRun
from retrieval.index import KINDS, IndexConfig, build_index_on, save_index


def encode_catalogue(model: UserModel, path: Path, chunk_rows: int = 65536) -> np.ndarray:
    """Write every item's (N, item_dim) float32 vector to ``path`` (.npy) and map it."""
    n_items = model.id_embedding.num_embeddings
    vectors = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(n_items, model.config.item_dim)
    )
    chunks = model.catalogue_chunks(chunk_rows)
    total = -(-n_items // chunk_rows)
    for start, chunk in tqdm(chunks, total=total, desc="encode items", unit="chunk"):
        vectors[start : start + len(chunk)] = to_numpy(chunk)
    vectors.flush()
    return vectors


@dataclass
class IndexBuildConfig:
    """Where the vectors come from (a run, or a ``.npy`` file) and which index to build."""

    output: Path
    index: IndexConfig = field(default_factory=IndexConfig)
    run: Path | None = None  # a metarec train run dir; its checkpoint encodes the catalogue
    data: DataConfig | None = None  # None: the run's own data, as it was trained
    vectors: Path | None = None  # (N, d) float32 .npy, instead of a run
    item_ids: Path | None = None  # (N,) int or unicode .npy row -> item id; default 0..N-1
    encoder: str = "external"  # names the vectors' encoder when they come from a file
    chunk_rows: int = 65536
    trust_remote_code: bool = False  # let the run's backbone run code from its model folder
    # where the item side encodes and FAISS trains/adds when it can (--device, resolved by
    # config_from_args); the folder always holds the CPU form of the index
    device: str = "cpu"


def _file_vectors(config: IndexBuildConfig) -> tuple[np.ndarray, np.ndarray]:
    try:
        vectors = np.load(config.vectors, mmap_mode="r", allow_pickle=False)
        item_ids = (
            np.arange(len(vectors), dtype=np.int64)
            if config.item_ids is None
            else np.load(config.item_ids, allow_pickle=False)
        )
    except (OSError, ValueError) as err:
        raise MetarecError(f"cannot read vectors ({err})") from None
    if vectors.ndim != 2 or vectors.dtype.kind != "f":
        raise MetarecError(f"{config.vectors}: expected a float (N, d) array, got {vectors.shape}")
    if item_ids.shape != (len(vectors),) or item_ids.dtype.kind not in "iuU":
        raise MetarecError(
            f"{config.item_ids}: expected {len(vectors)} integer or string item ids, "
            f"got {item_ids.shape} {item_ids.dtype}"
        )
    if len(np.unique(item_ids)) != len(item_ids):
        raise MetarecError(f"{config.item_ids}: item ids repeat")
    return vectors, item_ids


def build_catalogue_index(config: IndexBuildConfig) -> dict:
    """Build and save the index folder ``config.output``; returns its metadata."""
    if (config.run is None) == (config.vectors is None):
        raise ConfigError("index build: give a run (--checkpoint) or --vectors, not both")
    if config.run is None:
        vectors, item_ids = _file_vectors(config)
        index, built_on = build_index_on(vectors, config.index, config.device, config.chunk_rows)
        encoder = config.encoder
    else:
        run = TrainedRun(config.run, config.data, config.trust_remote_code, config.device)
        encoder = run.fingerprint
        config.output.parent.mkdir(parents=True, exist_ok=True)
        scratch = config.output.with_name(f".{config.output.name}.vectors.npy")
        try:
            vectors = encode_catalogue(run.model, scratch, config.chunk_rows)
            index, built_on = build_index_on(
                vectors, config.index, config.device, config.chunk_rows
            )
        finally:
            scratch.unlink(missing_ok=True)
        item_ids = run.dataset.item_ids  # row r is item index r: its raw id
    save_index(config.output, index, item_ids, config.index, encoder)  # always the CPU form
    return {
        "output": str(config.output),
        "items": int(index.ntotal),
        "encoder": encoder,
        "built_on": built_on,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_options(parser)
    parser.add_argument("--checkpoint", type=Path, help="metarec train run dir")
    parser.add_argument("--vectors", type=Path, help="(N, d) float32 .npy instead of a run")
    parser.add_argument("--item-ids", type=Path, help="(N,) integer or unicode .npy for --vectors")
    parser.add_argument("--encoder", default="external", help="name of --vectors' encoder")
    parser.add_argument("--output", type=Path, required=True, help="index folder to write")
    parser.add_argument("--chunk-rows", type=int, default=65536, help="rows encoded/added at once")
    knobs = parser.add_argument_group("index (retrieval/index.py)")
    knobs.add_argument("--kind", choices=KINDS, default="flat")
    knobs.add_argument("--nlist", type=int, default=1024, help="ivf*: coarse clusters")
    knobs.add_argument("--nprobe", type=int, default=32, help="ivf*: clusters searched")
    knobs.add_argument("--pq-m", type=int, default=16, help="ivfpq: sub-quantisers")
    knobs.add_argument("--pq-bits", type=int, default=8, help="ivfpq: bits per code")
    knobs.add_argument("--hnsw-m", type=int, default=32, help="hnsw: neighbours per node")
    knobs.add_argument("--ef-search", type=int, default=128, help="hnsw: search breadth")
    knobs.add_argument("--train-size", type=int, default=100_000, help="ivf*: training sample")
    add_remote_code_option(parser)
    add_device_option(parser)


def config_from_args(args: argparse.Namespace, env: Environment) -> IndexBuildConfig:
    return job_config(IndexBuildConfig, args, env, index=from_args(IndexConfig, args))


def run(config: IndexBuildConfig) -> None:
    check_writable(config.output)
    print(json.dumps(build_catalogue_index(config), indent=2))
