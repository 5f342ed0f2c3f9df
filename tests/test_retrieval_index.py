"""FAISS index folders: search equals brute force, tampered folders are refused, and the
index goes to the job's GPU when FAISS can put it there (else stays on the CPU, saying why)."""

import json

import numpy as np
import pytest

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

import faiss

from metarec.errors import MetarecError
from retrieval.index import IndexConfig, build_index, build_index_on, load_index, save_index

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


# Devices. No GPU here: the fallback runs for real, and the GPU branch runs against a fake
# FAISS GPU API whose "GPU" index is a marked clone of the CPU one (so searches still work).


def assert_same_answers(got, expected):
    """Equal (ids, scores) search answers."""
    for got_part, expected_part in zip(got, expected, strict=True):
        np.testing.assert_array_equal(got_part, expected_part)


class FakeGpu:
    """Spies for the FAISS GPU calls `retrieval.index` makes."""

    def __init__(self):
        self.to_gpu = []  # (resources, device number, CPU index, its rows then)
        self.gpu_indexes = []  # the "GPU" indexes handed out
        self.to_cpu = []  # the "GPU" indexes copied back
        self.cpu_copies = []  # ... and their CPU copies
        self.written = []  # indexes faiss.write_index wrote

    def index_cpu_to_gpu(self, resources, number, index):
        self.to_gpu.append((resources, number, index, index.ntotal))
        placed = faiss.clone_index(index)
        self.gpu_indexes.append(placed)
        return placed

    def index_gpu_to_cpu(self, index):
        assert any(index is gpu for gpu in self.gpu_indexes), "never on the GPU"
        self.to_cpu.append(index)
        copy = faiss.clone_index(index)
        self.cpu_copies.append(copy)
        return copy


class FakeResources:
    pass


@pytest.fixture
def fake_gpu(monkeypatch):
    fake = FakeGpu()
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake.index_cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", fake.index_gpu_to_cpu, raising=False)
    write_index = faiss.write_index
    monkeypatch.setattr(
        faiss,
        "write_index",
        lambda index, path: (fake.written.append(index), write_index(index, path)),
    )
    return fake


def test_cpu_device_leaves_the_index_on_the_cpu_even_when_faiss_sees_a_gpu(
    tmp_path, data, fake_gpu
):
    _, queries, _, exact = data
    folder = saved(tmp_path, data, IndexConfig(kind="flat"))  # build_index's default: cpu
    loaded = load_index(folder, device="cpu")
    assert loaded.placement == "cpu" and loaded.gpu_resources is None
    assert fake_gpu.to_gpu == [] and fake_gpu.to_cpu == []
    np.testing.assert_array_equal(loaded.search(queries, K)[0], exact)


def test_cuda_without_faiss_gpu_falls_back_to_the_cpu_with_the_same_answers(
    tmp_path, data, monkeypatch
):
    monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)  # as with faiss-cpu
    _, queries, _, exact = data
    vectors, _, item_ids, _ = data
    for config in (IndexConfig(kind="flat"), IndexConfig(kind="ivf", nlist=16, nprobe=4)):
        index, built_on = build_index_on(vectors, config, device="cuda:0")
        assert built_on == "cpu (faiss-gpu not installed)"
        reference = build_index(vectors, config, device="cpu")
        assert faiss.serialize_index(index).tobytes() == faiss.serialize_index(reference).tobytes()
        save_index(tmp_path / config.kind, index, item_ids, config, "test-encoder")
        on_cpu = load_index(tmp_path / config.kind, device="cpu")
        asked_cuda = load_index(tmp_path / config.kind, device="cuda:0")
        assert asked_cuda.placement == "cpu (faiss-gpu not installed)"
        assert asked_cuda.gpu_resources is None
        assert_same_answers(asked_cuda.search(queries, K), on_cpu.search(queries, K))
    np.testing.assert_array_equal(
        load_index(tmp_path / "flat", device="cuda:0").search(queries, K)[0], exact
    )


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_gpu_kinds_load_onto_the_asked_gpu(tmp_path, data, fake_gpu, kind):
    _, queries, _, _ = data
    config = IndexConfig(kind=kind, nlist=16, nprobe=16, pq_m=8)
    folder = saved(tmp_path, data, config)
    on_cpu = load_index(folder, device="cpu")
    loaded = load_index(folder, device="cuda:1")
    assert loaded.placement == "cuda:1"
    [(resources, number, cpu_index, _)] = fake_gpu.to_gpu
    assert number == 1 and isinstance(resources, FakeResources)
    assert loaded.gpu_resources is resources  # kept alive as long as the GPU index
    [gpu_index] = fake_gpu.gpu_indexes
    assert loaded.index is gpu_index  # searches run on the "GPU" index
    if kind != "flat":
        assert cpu_index.nprobe == 16  # set before the copy, which carries it over
    assert_same_answers(loaded.search(queries, K), on_cpu.search(queries, K))


def test_hnsw_stays_on_the_cpu_with_the_reason(tmp_path, data, fake_gpu):
    vectors, _, _, _ = data
    config = IndexConfig(kind="hnsw")
    _, built_on = build_index_on(vectors, config, device="cuda:0")
    loaded = load_index(saved(tmp_path, data, config), device="cuda:0")
    assert built_on == loaded.placement == "cpu (hnsw has no GPU version)"
    assert fake_gpu.to_gpu == [] and loaded.gpu_resources is None


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_gpu_build_trains_and_adds_on_the_gpu_and_saves_the_cpu_form(
    tmp_path, data, fake_gpu, kind
):
    vectors, queries, item_ids, _ = data
    config = IndexConfig(kind=kind, nlist=16, nprobe=16)
    index, built_on = build_index_on(vectors, config, device="cuda:2")
    assert built_on == "cuda:2"
    [(_, number, cpu_index, rows_then)] = fake_gpu.to_gpu
    assert number == 2 and rows_then == 0  # moved empty (and untrained): filled on the GPU
    assert kind == "flat" or not cpu_index.is_trained
    [gpu_index] = fake_gpu.to_cpu
    assert gpu_index.ntotal == N_ITEMS and index is fake_gpu.cpu_copies[0]
    save_index(tmp_path / "index", index, item_ids, config, "test-encoder")
    [written] = fake_gpu.written
    assert written is index  # the CPU copy, not the GPU index
    cpu_build = build_index(vectors, config, device="cpu")
    save_index(tmp_path / "cpu", cpu_build, item_ids, config, "test-encoder")
    got = load_index(tmp_path / "index").search(queries, K)
    assert_same_answers(got, load_index(tmp_path / "cpu").search(queries, K))


def test_an_index_the_gpu_refuses_stays_on_the_cpu_with_the_reason(
    tmp_path, data, fake_gpu, monkeypatch
):
    _, queries, _, exact = data
    folder = saved(tmp_path, data, IndexConfig(kind="flat"))

    def refuse(resources, number, index):
        raise RuntimeError("Error in GpuIndexIVFPQ: only pq.nbits == 8 is supported")

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse)
    loaded = load_index(folder, device="cuda:0")
    assert loaded.placement == (
        "cpu (FAISS GPU refused this flat index: "
        "Error in GpuIndexIVFPQ: only pq.nbits == 8 is supported)"
    )
    assert loaded.gpu_resources is None
    np.testing.assert_array_equal(loaded.search(queries, K)[0], exact)


def test_index_build_search_and_rerank_jobs_pass_their_device(
    tmp_path, data, fake_gpu, monkeypatch, trained_run
):
    import retrieval.rerank
    from retrieval.build import IndexBuildConfig, build_catalogue_index
    from retrieval.rerank import RerankConfig, run_rerank
    from retrieval.search import SearchConfig, vector_answers

    vectors, queries, item_ids, exact = data
    np.save(tmp_path / "vectors.npy", vectors)
    np.save(tmp_path / "item_ids.npy", item_ids)
    np.save(tmp_path / "queries.npy", queries)
    built = build_catalogue_index(
        IndexBuildConfig(
            tmp_path / "index",
            vectors=tmp_path / "vectors.npy",
            item_ids=tmp_path / "item_ids.npy",
            device="cuda:0",
        )
    )
    assert built["built_on"] == "cuda:0"
    assert [number for _, number, _, _ in fake_gpu.to_gpu] == [0]
    [written] = fake_gpu.written
    assert written is fake_gpu.cpu_copies[0]  # the folder holds the CPU form

    answers = vector_answers(
        SearchConfig(tmp_path / "index", tmp_path / "queries.npy", device="cuda:1")
    )
    assert fake_gpu.to_gpu[-1][1] == 1
    np.testing.assert_array_equal([[hit["item_id"] for hit in row] for row in answers], exact)

    # the rerank job's model stays on the CPU here (no CUDA); its index goes to its device
    real_trained_run = retrieval.rerank.TrainedRun
    monkeypatch.setattr(
        retrieval.rerank,
        "TrainedRun",
        lambda run, data, remote, device: real_trained_run(run, data, remote, "cpu"),
    )
    folder, run_data, _ = trained_run
    config = RerankConfig(
        folder / "run", folder / "index", tmp_path / "rerank", run_data, top_k=5, candidates=20,
        device="cuda:3",
    )  # fmt: skip
    manifest = run_rerank(config)
    assert fake_gpu.to_gpu[-1][1] == 3 and manifest["users"] > 0 and not manifest["failed"]
