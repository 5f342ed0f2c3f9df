"""The index build job: a trained run's item side encodes the catalogue, FAISS indexes it.

Vectors are encoded ``chunk_rows`` items at a time into a memory-mapped ``.npy`` beside
the output, so a catalogue larger than RAM never has to be held whole; the index is then
built from that file (`retrieval.index.build_index`) and the file removed. The index is
tagged with the checkpoint's fingerprint, and jobs that query it with another
checkpoint's users are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from metarec.checkpoint import checkpoint_fingerprint
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig, load_dataset
from metarec.errors import ConfigError, MetarecError
from metarec.meta.recommender import LLMRecommender
from metarec.models.user_model import UserModel
from retrieval.index import IndexConfig, build_index, save_index


def load_run(
    run: Path, data: DataConfig, trust_remote_code: bool = False
) -> tuple[LLMRecommender, Dataset, str]:
    """A ``metarec train`` run's model for ``data``'s catalogue, and its fingerprint."""
    dataset = load_dataset(data)
    folder = run / "checkpoint"
    method = LLMRecommender.from_checkpoint(
        folder, dataset.item_text, data.cache_dir.expanduser(), trust_remote_code=trust_remote_code
    )
    method.fit([], dataset.n_items, [])  # refuses a checkpoint trained on another catalogue
    return method, dataset, checkpoint_fingerprint(folder)


def encode_catalogue(model: UserModel, path: Path, chunk_rows: int = 65536) -> np.ndarray:
    """Write every item's (N, item_dim) float32 vector to ``path`` (.npy) and map it."""
    n_items = model.id_embedding.num_embeddings
    vectors = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(n_items, model.config.item_dim)
    )
    with torch.no_grad():
        for start in tqdm(range(0, n_items, chunk_rows), desc="encode items", unit="chunk"):
            rows = torch.arange(start, min(n_items, start + chunk_rows))
            vectors[start : start + len(rows)] = model.item_vectors(rows).float().numpy()
    vectors.flush()
    return vectors


@dataclass
class IndexBuildConfig:
    """Where the vectors come from (a run, or a ``.npy`` file) and which index to build."""

    output: Path
    index: IndexConfig = field(default_factory=IndexConfig)
    run: Path | None = None  # a metarec train run dir; its checkpoint encodes the catalogue
    data: DataConfig = field(default_factory=DataConfig)
    vectors: Path | None = None  # (N, d) float32 .npy, instead of a run
    item_ids: Path | None = None  # (N,) int64 .npy row -> item id; default 0..N-1
    encoder: str = "external"  # names the vectors' encoder when they come from a file
    chunk_rows: int = 65536
    trust_remote_code: bool = False  # let the run's backbone run code from its model folder


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
    if item_ids.shape != (len(vectors),) or item_ids.dtype.kind not in "iu":
        raise MetarecError(
            f"{config.item_ids}: expected {len(vectors)} integer item ids, got {item_ids.shape}"
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
        index = build_index(vectors, config.index, config.chunk_rows)
        encoder = config.encoder
    else:
        method, dataset, encoder = load_run(config.run, config.data, config.trust_remote_code)
        config.output.parent.mkdir(parents=True, exist_ok=True)
        scratch = config.output.with_name(f".{config.output.name}.vectors.npy")
        try:
            vectors = encode_catalogue(method.model, scratch, config.chunk_rows)
            index = build_index(vectors, config.index, config.chunk_rows)
        finally:
            scratch.unlink(missing_ok=True)
        item_ids = np.arange(dataset.n_items, dtype=np.int64)
    save_index(config.output, index, item_ids, config.index, encoder)
    return {"output": str(config.output), "items": int(index.ntotal), "encoder": encoder}
