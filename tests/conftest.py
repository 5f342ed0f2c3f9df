"""Shared fixtures: the real ml-100k folder (CI provides it) and a small synthetic dataset.

FAISS (the `cpu` or `gpu` extra) is optional: nothing here imports it at module level, and
`trained_run` (which builds an index) skips its tests with a reason when it is missing. Test
modules that import `retrieval` skip themselves the same way; the DeepSpeed launches in
test_distributed.py skip without the `deepspeed` extra.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metarec.data.prepare import DataConfig
from metarec.data.preprocess import PreprocessOptions, preprocess
from metarec.data.synthetic import synthetic_raw
from metarec.meta.algorithms import MetaConfig
from metarec.models.backbone import BackboneConfig, load_backbone
from metarec.models.lora import LoRAConfig
from metarec.models.user_model import UserModel, UserModelConfig
from train.meta_train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
FAISS_REASON = 'needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")'


def tiny_user_model() -> UserModelConfig:
    """The random-weight tiny Llama with small LoRA and id-only items that run fixtures train."""
    return UserModelConfig(
        backbone=BackboneConfig(name="tiny-llama"),
        lora=LoRAConfig(rank=4, alpha=8.0),
        text_encoder="none",
        id_dim=16,
        item_dim=16,
    )


def tiny_trained_model(lora: LoRAConfig, n_items: int = 40) -> UserModel:
    """`tiny_user_model` with ``lora``, looking trained (seeded): random id embeddings and
    non-zero LoRA B, so adapting moves every score."""
    torch.manual_seed(0)
    config = tiny_user_model()
    config.lora = lora
    model = UserModel(config, load_backbone(config.backbone), None, n_items)
    torch.nn.init.normal_(model.id_embedding.weight)
    for layer in model.lora_layers.values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    return model


def synthetic_files(folder: Path, n_users: int, seed: int, n_items: int = 120) -> DataConfig:
    """Write a synthetic dataset's CSVs into ``folder``; the `DataConfig` that reads them."""
    synthetic_raw(n_users=n_users, n_items=n_items, seed=seed).write_csv(folder)
    return DataConfig(
        dataset="custom",
        interactions=folder / "interactions.csv",
        items=folder / "items.csv",
        cache_dir=folder / "cache",
    )


def tiny_config_file(folder: Path, data: DataConfig, **overrides) -> Path:
    """``folder/tiny.yaml``: the tiny model trained with fomaml on ``data`` (two epochs of
    8 users per step), for tests that launch `metarec` itself; ``overrides`` replace keys."""
    config = {
        "data": {
            "dataset": data.dataset,
            "interactions": str(data.interactions),
            "items": str(data.items),
            "cache_dir": str(data.cache_dir),
        },
        "model": {
            "backbone": {"name": "tiny-llama"},
            "lora": {"rank": 4, "alpha": 8.0},
            "text_encoder": "none",
            "id_dim": 16,
            "item_dim": 16,
        },
        "meta": {"algorithm": "fomaml", "inner_steps": 2, "inner_lr": 0.5},
        "support_sizes": [5, 10],
        "users_per_batch": 8,
        "epochs": 2,
        "outer_lr": 0.003,
        **overrides,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_tiny_run(
    folder: Path, data: DataConfig, support_sizes=(5, 10), seed: int = 0, index: bool = True
) -> TrainConfig:
    """Train a tiny run with training ``seed`` into ``folder/run`` and, with ``index``, index
    its catalogue flat in ``folder/index``."""
    config = TrainConfig(
        data=data,
        model=tiny_user_model(),
        meta=MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.5),
        support_sizes=list(support_sizes),
        pretrain_epochs=1,
        epochs=1,
        outer_lr=3e-3,
        users_per_batch=16,
        output_dir=folder / "run",
        seed=seed,
    )
    train(config)
    if not index:
        return config
    from retrieval.build import IndexBuildConfig, build_catalogue_index
    from retrieval.index import IndexConfig

    build_catalogue_index(
        IndexBuildConfig(folder / "index", IndexConfig("flat"), folder / "run", data)
    )
    return config


def tensorboard_scalars(run_dir: Path, tag: str) -> np.ndarray:
    """A run's TensorBoard values of ``tag`` in step order. A resumed run writes a second
    event file, and event files load in name order: second-resolution time, then the pid,
    which need not grow."""
    events = EventAccumulator(str(run_dir / "tensorboard"), purge_orphaned_data=False)
    events.Reload()
    return np.array([event.value for event in sorted(events.Scalars(tag), key=lambda e: e.step)])


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    """A run's saved peft adapter tensors."""
    return load_file(str(run_dir / "checkpoint" / "adapter" / "adapter_model.safetensors"))


def assert_same_adapter(left: Path, right: Path, atol: float) -> None:
    ours, theirs = adapter(left), adapter(right)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=atol)


def losses_and_gradients(model, loss_fn, n_users: int):
    """``loss_fn``'s (U,) losses at the meta-learned start of ``n_users`` users, and their
    sum's gradients with respect to the fast weights (A and B of every adapted layer)."""
    import torch

    from metarec.models.lora import initial_fast_weights

    fast = {
        name: (a.detach().requires_grad_(), b.detach().requires_grad_())
        for name, (a, b) in initial_fast_weights(model.lora_layers, n_users).items()
    }
    losses = loss_fn(fast)
    flat = [tensor for pair in fast.values() for tensor in pair]
    return losses, torch.autograd.grad(losses.sum(), flat)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The folder holding ml-100k: $METAREC_DATA_DIR, else ../shared/data beside the repo."""
    root = Path(os.environ.get("METAREC_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (root / "ml-100k" / "u.data").is_file():
        pytest.skip(f"ml-100k not found under {root}; set METAREC_DATA_DIR")
    return root


@pytest.fixture(scope="session")
def synthetic_dataset():
    return preprocess(synthetic_raw(), PreprocessOptions())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny meta-trained run on 120 synthetic users, its data options and a flat index."""
    pytest.importorskip("faiss", reason=FAISS_REASON)

    folder = tmp_path_factory.mktemp("rerank")
    data = synthetic_files(folder, n_users=120, seed=4)
    train_tiny_run(folder, data)
    data_options = [
        "--dataset", "custom", "--interactions", str(data.interactions),
        "--items", str(data.items), "--cache-dir", str(data.cache_dir),
    ]  # fmt: skip
    return folder, data, data_options
