"""FAISS index folders: search equals brute force, and tampered folders are refused."""

import json

import numpy as np
import pytest

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from metarec.errors import MetarecError
from retrieval.index import IndexConfig, build_index, load_index, save_index

N_ITEMS, DIMENSION, K = 2000, 32, 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N_ITEMS, DIMENSION)).astype(np.float32)
    queries = rng.standard_normal((50, DIMENSION)).astype(np.float32)
    item_ids = rng.permutation(N_ITEMS) + 1000  # raw ids, not row numbers
    exact = item_ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :K]]
    return vectors, queries, item_ids, exact


def saved(tmp_path, data, config):
    vectors, _, item_ids, _ = data
    save_index(tmp_path / "index", build_index(vectors, config), item_ids, config, "test-encoder")
    return tmp_path / "index"


def test_flat_round_trip_equals_brute_force(tmp_path, data):
    _, queries, _, exact = data
    loaded = load_index(saved(tmp_path, data, IndexConfig(kind="flat")), "test-encoder")
    ids, scores = loaded.search(queries, K)
    np.testing.assert_array_equal(ids, exact)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize(
    "config",
    [IndexConfig(kind="ivf", nlist=16, nprobe=16), IndexConfig(kind="hnsw", ef_search=256),
     IndexConfig(kind="ivfpq", nlist=16, nprobe=16, pq_m=8, pq_bits=8)],
    ids=["ivf", "hnsw", "ivfpq"],
)  # fmt: skip
def test_approximate_indexes_recall_the_exact_neighbours(tmp_path, data, config):
    _, queries, _, exact = data
    ids, _ = load_index(saved(tmp_path, data, config)).search(queries, K)
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, exact, strict=True)])
    floor = 0.5 if config.kind == "ivfpq" else 0.95  # PQ codes are lossy at 32 dims
    assert recall >= floor, recall


def test_tampered_or_mismatched_folders_are_refused(tmp_path, data):
    _, queries, _, _ = data
    folder = saved(tmp_path, data, IndexConfig(kind="flat"))
    with pytest.raises(MetarecError, match="expects \\(Q, 32\\)"):
        load_index(folder).search(queries[:, :16], K)
    with pytest.raises(MetarecError, match="built with encoder 'test-encoder'"):
        load_index(folder, "another-encoder")
    metadata = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "dimension": 64}))
    with pytest.raises(MetarecError, match="dimension is 64, the index has 32"):
        load_index(folder)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    ids_file = folder / "item_ids.npy"
    ids_file.write_bytes(ids_file.read_bytes()[:-8])
    with pytest.raises(MetarecError, match="item_ids.npy: missing or does not match its SHA-256"):
        load_index(folder)
