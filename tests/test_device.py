"""Device bugs caught without a GPU: the model on PyTorch's ``meta`` device, a strict guard.

A tensor left on the CPU while the model sits on a GPU is an error on the GPU, yet passes
every CPU test. Here the model moves to the ``meta`` device (shapes, no values, no compute)
and `StrictDevice` refuses any torch call that mixes a tensor on the model's device with a
CPU tensor of one dimension or more (0-dim CPU tensors are allowed, as on a GPU). Host
copies go through `metarec.device.to_numpy`, which the tests replace with zeros of the
right shape for meta tensors (they hold no values). Each case runs a path a GPU job runs:
the meta step of every algorithm under the plain engine, validation, scoring, rerank,
catalogue encoding, online replay and the recipe itself.

The unit tests check the device choice (``--device``, ``LOCAL_RANK``), the process group's
backend (NCCL only for a GPU) and that collectives reduce tensors on the given device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import synthetic_files
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from metarec.data.episodes import EpisodeBatch, collate
from metarec.data.prepare import DataConfig
from metarec.distributed import engine as engine_module
from metarec.distributed.engine import DistributedConfig, LocalEngine, init_process_group
from metarec.errors import ConfigError, MetarecError
from metarec.meta.algorithms import ALGORITHMS, MetaConfig, MetaSGDRates
from metarec.meta.meta_step import MetaStepModule
from metarec.meta.online import OnlineConfig, replay
from metarec.meta.personalise import episode_losses
from metarec.meta.recommender import LLMRecommender
from metarec.models.backbone import BackboneConfig, load_backbone
from metarec.models.lora import LoRAConfig
from metarec.models.user_model import UserModel, UserModelConfig
from metarec.trained_run import TrainConfig

REPO = Path(__file__).resolve().parents[1]
META = torch.device("meta")
N_ITEMS = 50
FAISS_REASON = 'needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")'


class StrictDevice(TorchFunctionMode):
    """Raise when one torch call mixes tensors on ``device`` with CPU tensors of >= 1 dim."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(t.device == self.device for t in tensors):
            stray = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
            if stray:
                name = getattr(func, "__name__", str(func))
                raise RuntimeError(
                    f"device guard: {name} mixes {self.device} tensors with a CPU tensor of "
                    f"shape {tuple(stray[0].shape)}"
                )
        return func(*args, **kwargs)


def meta_host_copies(monkeypatch) -> None:
    """`metarec.device.to_numpy`, wherever it was imported, gives zeros for meta tensors."""
    try:
        from metarec import device as devices
    except ImportError:  # the code before metarec/device.py existed: nothing to replace
        return
    real = devices.to_numpy

    def to_numpy(tensor: torch.Tensor) -> np.ndarray:
        if tensor.device.type != "meta":
            return real(tensor)
        dtype = np.float64 if tensor.dtype == torch.float64 else np.float32
        return np.zeros(tuple(tensor.shape), dtype=dtype if tensor.is_floating_point() else int)

    for module in list(sys.modules.values()):
        if getattr(module, "to_numpy", None) is real:
            monkeypatch.setattr(module, "to_numpy", to_numpy)


def tiny_model_config() -> UserModelConfig:
    return UserModelConfig(
        # eager attention: SDPA's mask checks read values, which the meta device has none of
        backbone=BackboneConfig(name="tiny-llama", attention="eager"),
        lora=LoRAConfig(rank=4, alpha=8.0),
        text_encoder="none",
        id_dim=16,
        item_dim=16,
    )


def meta_model() -> UserModel:
    torch.manual_seed(0)
    config = tiny_model_config()
    return UserModel(config, load_backbone(config.backbone), None, N_ITEMS).to(META)


def histories(*lengths: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, N_ITEMS, size=length) for length in lengths]


def meta_batch(supports: list[np.ndarray], queries: list[np.ndarray]) -> EpisodeBatch:
    """A padded batch moved to the model's device, as the recipe hands the engine."""
    batch = collate(supports, queries)
    return EpisodeBatch(*(t.to(META) for t in (batch.support, batch.support_lengths, batch.query)))


META_CONFIG = MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.5)


# --- the model on the meta device, a guard on every torch call ---


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_meta_step_of_every_algorithm_stays_on_the_model_device(algorithm, monkeypatch):
    meta_host_copies(monkeypatch)
    model = meta_model()
    meta = MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.5)
    rates = MetaSGDRates(model.lora_layers, 0.5) if meta.properties.learned_rates else None
    engine = LocalEngine(MetaStepModule(model, meta, rates), 1e-3, DistributedConfig())
    micro_batches = [  # two micro batches: the engine accumulates their losses
        meta_batch(histories(5, 7, 6), histories(3, 3, 2, seed=1)),
        meta_batch(histories(4, 6, 5, seed=2), histories(2, 3, 3, seed=3)),
    ]
    with StrictDevice(META):
        objective = engine.train_step(micro_batches)
    assert isinstance(objective, float)
    assert all(p.grad is not None and p.grad.device == META for p in engine.params)


def test_validation_losses_stay_on_the_model_device(monkeypatch):
    meta_host_copies(monkeypatch)
    model = meta_model()
    batch = meta_batch(histories(5, 7, 6), histories(3, 3, 2, seed=1))
    with StrictDevice(META):
        losses = episode_losses(model, batch, META_CONFIG, None)
    assert set(losses) == {
        f"{side}_loss_{label}" for side in ("support", "query") for label in ("before", "after")
    }


def test_scoring_users_stays_on_the_model_device(monkeypatch):
    meta_host_copies(monkeypatch)
    method = LLMRecommender(meta_model().eval(), META_CONFIG, batch_size=2)
    with StrictDevice(META):
        scores = method.score(histories(5, 7, 6))
    assert scores.shape == (3, N_ITEMS)


class StubIndex:
    """An index answering every query with rows 0..k-1 (the stub of a FAISS index)."""

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert isinstance(queries, np.ndarray)  # FAISS takes host arrays
        ids = np.tile(np.arange(k, dtype=np.int64), (len(queries), 1))
        return ids, np.zeros((len(queries), k), dtype=np.float32)


def test_a_rerank_batch_stays_on_the_model_device(monkeypatch):
    pytest.importorskip("faiss", reason=FAISS_REASON)
    from retrieval.rerank import rerank_batch

    meta_host_copies(monkeypatch)
    method = LLMRecommender(meta_model().eval(), META_CONFIG)
    with StrictDevice(META), method.model.frozen_item_vectors():
        items, scores = rerank_batch(method, StubIndex(), histories(5, 7, 6), 10, 5)
    assert items.shape == scores.shape == (3, 5)


def test_encoding_the_catalogue_stays_on_the_model_device(monkeypatch, tmp_path):
    pytest.importorskip("faiss", reason=FAISS_REASON)
    from retrieval.build import encode_catalogue

    meta_host_copies(monkeypatch)
    model = meta_model().eval()
    with StrictDevice(META):
        vectors = encode_catalogue(model, tmp_path / "vectors.npy", chunk_rows=16)
    assert vectors.shape == (N_ITEMS, model.config.item_dim)


@pytest.mark.parametrize("strategy", ["full", "incremental"])
def test_online_replay_stays_on_the_model_device(strategy, monkeypatch):
    meta_host_copies(monkeypatch)
    method = LLMRecommender(meta_model().eval(), META_CONFIG)
    streams = histories(9, 9, 10, seed=4)
    with StrictDevice(META):
        summary, ranks = replay(method, streams, strategy, OnlineConfig(start=5, events=2))
    assert ranks.shape == (3, 2)
    assert summary["users"] == 3


@pytest.fixture(scope="module")
def data_config(tmp_path_factory) -> DataConfig:
    return synthetic_files(tmp_path_factory.mktemp("synthetic"), n_users=80, seed=2)


@pytest.mark.parametrize("algorithm", ["fomaml", "metasgd"])
def test_the_recipe_puts_model_batches_and_validation_on_its_device(
    algorithm, data_config, monkeypatch, tmp_path
):
    from train.meta_train import MetaTrainRecipe

    meta_host_copies(monkeypatch)
    config = TrainConfig(
        data=data_config,
        model=tiny_model_config(),
        meta=MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.5),
        support_sizes=[5, 10],
        valid_users=8,
        users_per_batch=8,
        output_dir=tmp_path / "run",
        distributed=DistributedConfig(device="meta", gradient_accumulation_steps=2),
    )
    recipe = MetaTrainRecipe(config)
    recipe.setup()
    try:
        assert {p.device for p in recipe.step_module.parameters()} == {META}
        episodes = recipe.split.train_sequences[: config.users_per_batch]
        episodes = [(s[:5], s[5:8]) for s in episodes]
        with StrictDevice(META):
            objective = recipe.meta_step(episodes)
            metrics = recipe.validate(recipe.split.valid, config.meta)
        assert isinstance(objective, float)
        assert "valid_ndcg@10_after" in metrics
    finally:
        recipe.cleanup()


# --- choosing the device, the process group and collectives ---


def test_auto_takes_this_process_gpu_when_cuda_is_there(monkeypatch):
    from metarec.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


def test_auto_is_the_cpu_without_cuda_and_cuda_is_refused_in_one_line(monkeypatch):
    from metarec.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")
    with pytest.raises(MetarecError, match="no CUDA device") as refused:
        resolve_device("cuda", local_rank=0)
    assert "\n" not in str(refused.value)


def test_to_numpy_widens_half_precision_and_keeps_the_rest():
    from metarec.device import model_device, to_numpy

    values = torch.tensor([1.5, -2.25], dtype=torch.bfloat16, requires_grad=True)
    assert to_numpy(values).dtype == np.float32
    assert to_numpy(values).tolist() == [1.5, -2.25]
    assert to_numpy(torch.tensor([0.1], dtype=torch.float64)).dtype == np.float64
    assert to_numpy(torch.arange(3)).dtype == np.int64
    assert model_device(torch.nn.Linear(2, 2).to(META)) == META


@pytest.fixture()
def process_group(monkeypatch):
    """`dist.init_process_group` and `torch.cuda.set_device` recorded, not run."""
    calls: dict[str, object] = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.update(backend=backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.update(gpu=device))
    return calls


def test_a_gpu_process_selects_its_gpu_and_joins_with_nccl(process_group):
    init_process_group(DistributedConfig(device="cuda:1"), launched_world_size=2)
    assert process_group == {"backend": "nccl", "gpu": torch.device("cuda", 1)}


def test_a_cpu_process_joins_with_gloo(process_group):
    init_process_group(DistributedConfig(device="cpu"), launched_world_size=2)
    assert process_group == {"backend": "gloo"}


def test_an_explicit_backend_wins_but_nccl_needs_a_gpu(process_group):
    init_process_group(DistributedConfig(device="cuda:0", backend="gloo"), launched_world_size=2)
    assert process_group["backend"] == "gloo"
    with pytest.raises(ConfigError, match="backend=nccl") as refused:
        init_process_group(DistributedConfig(device="cpu", backend="nccl"), launched_world_size=2)
    assert "\n" not in str(refused.value)


def test_all_reduce_sums_reduces_a_tensor_on_the_given_device(monkeypatch):
    meta_host_copies(monkeypatch)
    reduced = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor: reduced.append(tensor))
    sums = engine_module.all_reduce_sums({"count": 3.0, "loss": 1.5}, META)
    assert [tensor.device for tensor in reduced] == [META]
    assert set(sums) == {"count", "loss"}


@pytest.mark.parametrize(
    "command, extra",
    [
        ("train", []),
        ("pipeline", ["--run-dir", "runs/x"]),
        ("tune", ["--study-dir", "runs/x"]),
        ("distill", ["--teacher", "runs/x"]),
    ],
)
def test_device_option_sets_the_training_config_device_over_the_yaml(command, extra, monkeypatch):
    import importlib

    from metarec.cli import COMMANDS, build_parser
    from metarec.options import Environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    module = importlib.import_module(COMMANDS[command][0])
    argv = [command, "--config", str(REPO / "configs" / "tiny.yaml"), *extra]
    argv += ["--set", "distributed.device=cuda:7"]  # the YAML does not decide the device
    environment = Environment.from_variables({"LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert environment.local_rank == 1
    args = build_parser(only=command).parse_args(argv)
    assert module.config_from_args(args, environment).train.distributed.device == "cuda:1"
    args = build_parser(only=command).parse_args([*argv, "--device", "cpu"])
    assert module.config_from_args(args, environment).train.distributed.device == "cpu"


@pytest.mark.parametrize(
    "command",
    ["evaluate", "rerank", "index build", "index search", "online", "bandit", "explain"],
)
def test_every_command_that_runs_the_model_takes_a_device(command, monkeypatch, tmp_path):
    import importlib

    from metarec.cli import COMMANDS, build_parser
    from metarec.options import Environment

    if COMMANDS[command][0].startswith("retrieval."):
        pytest.importorskip("faiss", reason=FAISS_REASON)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    run = ["--checkpoint", str(tmp_path)]
    extra = {
        "evaluate": [],
        "rerank": [*run, "--index", str(tmp_path), "--output-dir", str(tmp_path)],
        "index build": [*run, "--output", str(tmp_path / "index")],
        "index search": [*run, "--index", str(tmp_path), "--history", "1,2"],
        "online": run,
        "bandit": run,
        "explain": [*run, "--user", "1"],
    }[command]
    args = build_parser(only=command).parse_args([*command.split(), *extra])
    module = importlib.import_module(COMMANDS[command][0])
    config = module.config_from_args(args, Environment(local_rank=2))
    assert config.device == "cuda:2"


def test_cuda_without_cuda_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    from metarec.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["explain", "--checkpoint", str(tmp_path), "--user", "1", "--device", "cuda"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no CUDA device" in error
