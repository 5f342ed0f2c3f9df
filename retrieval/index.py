"""FAISS indexes over item vectors: build, save as a validated folder, load, search.

An index folder holds::

    index.faiss      the FAISS index (inner product over the vectors as given)
    item_ids.npy     row -> item id: int64, or fixed-width unicode for string ids (both
                     load without pickle); an index built from a run holds the dataset's
                     raw ids, and its row is the run's item index
    metadata.json    kind, options, dimension, metric, item count, encoder, and the
                     SHA-256 of the two files above

`load_index` checks every field against the files and refuses a mismatch, so a folder
that was truncated, edited, or built for another encoder never answers queries.

Vectors may be a memory-mapped ``.npy`` larger than RAM: quantisers train on a sample
and rows are added chunk by chunk (only an ``ivfpq`` index is then smaller than the
vectors).

Devices: building and loading take the job's device (``"cpu"`` or ``"cuda:N"``, from
``--device``). `place_index` puts an index on GPU ``N`` when the device asks for one, the
FAISS build has GPU support (``faiss-gpu``, seeing a GPU) and the kind has a GPU version
(flat, ivf, ivfpq; not hnsw); otherwise it stays on the CPU and the placement records why.
A build trains and adds where it was placed and hands back the CPU form, so a saved folder
is always a CPU index and loads anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from metarec.atomic import atomic_dir
from metarec.errors import ConfigError, MetarecError
from metarec.hashing import sha256_of

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
GPU_KINDS = ("flat", "ivf", "ivfpq")  # FAISS has no GPU HNSW


@dataclass
class IndexConfig:
    """Which FAISS index to build and its knobs (unused ones are ignored by a kind)."""

    kind: str = "flat"
    nlist: int = 1024  # ivf, ivfpq: number of coarse clusters
    nprobe: int = 32  # ivf, ivfpq: clusters visited per query
    pq_m: int = 16  # ivfpq: sub-quantisers (must divide the dimension)
    pq_bits: int = 8  # ivfpq: bits per sub-quantiser code
    hnsw_m: int = 32  # hnsw: neighbours per node
    ef_search: int = 128  # hnsw: search breadth
    train_size: int = 100_000  # ivf, ivfpq: vectors sampled to train the quantisers
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind {self.kind!r}: expected one of {', '.join(KINDS)}")


def _checked_rows(vectors: np.ndarray, start: int, stop: int) -> np.ndarray:
    rows = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
    if not np.isfinite(rows).all():
        bad = start + int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        raise MetarecError(f"item vector of row {bad} is not finite (NaN or infinite)")
    return rows


@dataclass
class Placement:
    """An index on the device it searches on, and why it is there."""

    index: faiss.Index
    where: str  # "cuda:N", "cpu", or "cpu (<why not the GPU asked for>)"
    resources: Any = None  # the GPU's faiss.StandardGpuResources, kept alive with the index

    @property
    def on_gpu(self) -> bool:
        return self.resources is not None


def place_index(index: faiss.Index, kind: str, device: str) -> Placement:
    """The CPU ``index`` of ``kind`` placed on ``device`` (``"cpu"`` or ``"cuda:N"``).

    On GPU ``N`` when FAISS can put it there; otherwise ``index`` itself, unchanged, with the
    reason in `Placement.where`.
    """
    kind_of_device, _, number = device.partition(":")
    if kind_of_device != "cuda":
        return Placement(index, "cpu")
    if not hasattr(faiss, "StandardGpuResources"):
        return Placement(index, "cpu (faiss-gpu not installed)")
    if faiss.get_num_gpus() == 0:
        return Placement(index, "cpu (FAISS sees no GPU)")
    if kind not in GPU_KINDS:
        return Placement(index, f"cpu ({kind} has no GPU version)")
    gpu = int(number or 0)
    resources = faiss.StandardGpuResources()
    try:
        placed = faiss.index_cpu_to_gpu(resources, gpu, index)
    except RuntimeError as err:  # e.g. an ivfpq code size the GPU kernels lack
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        return Placement(index, f"cpu (FAISS GPU refused this {kind} index: {reason})")
    return Placement(placed, f"cuda:{gpu}", resources)


def build_index(
    vectors: np.ndarray, config: IndexConfig, chunk_rows: int = 65536, device: str = "cpu"
) -> faiss.Index:
    """An inner-product index over ``vectors`` (N, d), trained if the kind needs it; always
    the CPU form, whatever ``device`` it was trained and filled on (`build_index_on`)."""
    return build_index_on(vectors, config, device, chunk_rows)[0]


def build_index_on(
    vectors: np.ndarray, config: IndexConfig, device: str = "cpu", chunk_rows: int = 65536
) -> tuple[faiss.Index, str]:
    """`build_index`, and where it was built (`Placement.where`).

    ``vectors`` may be a memory map: it is read ``chunk_rows`` rows at a time. The empty
    index is placed on ``device`` (`place_index`) before training and adding; one built on
    a GPU is copied back to the CPU (``faiss.index_gpu_to_cpu``) before it is returned.
    """
    if vectors.ndim != 2 or len(vectors) == 0:
        raise MetarecError(f"item vectors of shape {vectors.shape}: expected a non-empty (N, d)")
    n, dimension = vectors.shape
    if config.kind == "flat":
        index = faiss.IndexFlatIP(dimension)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = config.ef_search
    else:
        quantizer = faiss.IndexFlatIP(dimension)
        nlist = min(config.nlist, n)
        if config.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if dimension % config.pq_m:
                raise ConfigError(f"pq_m={config.pq_m} must divide the dimension {dimension}")
            index = faiss.IndexIVFPQ(
                quantizer, dimension, nlist, config.pq_m, config.pq_bits,
                faiss.METRIC_INNER_PRODUCT,
            )  # fmt: skip
        index.nprobe = config.nprobe
    placement = place_index(index, config.kind, device)
    if not index.is_trained:
        rng = np.random.default_rng(config.seed)
        sample_rows = np.sort(rng.choice(n, size=min(config.train_size, n), replace=False))
        sample = np.ascontiguousarray(vectors[sample_rows], dtype=np.float32)
        if not np.isfinite(sample).all():
            raise MetarecError("item vectors hold NaN or infinite values")
        placement.index.train(sample)
    for start in range(0, n, chunk_rows):
        placement.index.add(_checked_rows(vectors, start, start + chunk_rows))
    if placement.on_gpu:
        return faiss.index_gpu_to_cpu(placement.index), placement.where
    return placement.index, placement.where


def _storable_ids(item_ids: np.ndarray) -> np.ndarray:
    """``item_ids`` (N,) as an array `np.load` reads back without pickle: int64 for
    integer ids, fixed-width unicode for string ids; a mix of kinds is refused."""
    kind = pd.api.types.infer_dtype(item_ids, skipna=False)
    if kind == "integer":
        return np.asarray(item_ids, dtype=np.int64)
    if kind == "string":
        return np.asarray(item_ids, dtype=str)
    raise MetarecError(f"item ids must be all integers or all strings, not {kind} values")


def save_index(
    folder: Path,
    index: faiss.Index,
    item_ids: np.ndarray,
    config: IndexConfig,
    encoder: str,
) -> None:
    """Write ``folder`` atomically: index, row -> item id map and checked metadata.

    The folder always holds a CPU index (`build_index` returns one; a GPU index handed in
    is copied to the CPU first), so it loads on any machine.
    """
    if len(item_ids) != index.ntotal:
        raise MetarecError(f"{len(item_ids)} item ids for an index of {index.ntotal} rows")
    if hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex):
        index = faiss.index_gpu_to_cpu(index)
    with atomic_dir(folder) as staging:
        faiss.write_index(index, str(staging / "index.faiss"))
        np.save(staging / "item_ids.npy", _storable_ids(item_ids))
        metadata = {
            "config": asdict(config),
            "dimension": index.d,
            "metric": "inner_product",
            "items": int(index.ntotal),
            "encoder": encoder,
            "sha256": {name: sha256_of(staging / name) for name in ("index.faiss", "item_ids.npy")},
        }
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2))


@dataclass
class LoadedIndex:
    index: faiss.Index  # on `placement` (a GPU index when that is "cuda:N")
    item_ids: np.ndarray
    metadata: dict
    placement: str = "cpu"  # where searches run: "cuda:N", "cpu" or "cpu (<why not GPU>)"
    gpu_resources: Any = None  # the GPU index's faiss.StandardGpuResources, kept alive here

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows (Q, k) int64 and scores (Q, k) for ``queries`` (Q, d); -1 = no item.

        A row is the vector's position in what the index was built from: for a run's
        index, the run's item index.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise MetarecError(
                f"queries of shape {queries.shape}: this index expects (Q, {self.index.d})"
            )
        scores, rows = self.index.search(queries, k)
        return rows, scores

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item ids (Q, k) and scores (Q, k) for ``queries`` (Q, d); where there
        is no item, -1 (integer ids) or "" (string ids)."""
        rows, scores = self.search_rows(queries, k)
        missing = -1 if self.item_ids.dtype.kind in "iu" else ""
        return np.where(rows >= 0, self.item_ids[np.clip(rows, 0, None)], missing), scores


def load_index(folder: Path, encoder: str | None = None, device: str = "cpu") -> LoadedIndex:
    """Load an index folder, refusing any file or field that does not match the metadata,
    and place it on ``device`` (`place_index`: a GPU when FAISS can, else the CPU)."""
    try:
        metadata = json.loads((folder / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MetarecError(f"{folder / 'metadata.json'}: unreadable ({err})") from None
    for name, expected in metadata.get("sha256", {}).items():
        path = folder / name
        if not path.is_file() or sha256_of(path) != expected:
            raise MetarecError(f"{path}: missing or does not match its SHA-256 in metadata.json")
    if set(metadata.get("sha256", {})) != {"index.faiss", "item_ids.npy"}:
        raise MetarecError(
            f"{folder / 'metadata.json'}: sha256 must list index.faiss and item_ids.npy"
        )
    index = faiss.read_index(str(folder / "index.faiss"))
    item_ids = np.load(folder / "item_ids.npy", allow_pickle=False)
    checks = {
        "dimension": index.d,
        "items": int(index.ntotal),
        "metric": "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "other",
    }
    for field, actual in checks.items():
        if metadata.get(field) != actual:
            raise MetarecError(
                f"{folder / 'metadata.json'}: {field} is {metadata.get(field)!r}, "
                f"the index has {actual!r}"
            )
    if len(item_ids) != index.ntotal:
        raise MetarecError(f"{folder}: {len(item_ids)} item ids for {index.ntotal} rows")
    if encoder is not None and metadata.get("encoder") != encoder:
        raise MetarecError(
            f"{folder}: built with encoder {metadata.get('encoder')!r}, queries come from "
            f"{encoder!r}"
        )
    config = IndexConfig(**metadata["config"])
    if hasattr(index, "nprobe"):
        index.nprobe = config.nprobe
    if config.kind == "hnsw":
        index.hnsw.efSearch = config.ef_search
    placement = place_index(index, config.kind, device)  # the cloner carries nprobe over
    return LoadedIndex(placement.index, item_ids, metadata, placement.where, placement.resources)
