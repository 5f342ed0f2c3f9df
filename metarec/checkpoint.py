"""Run checkpoints: a peft adapter, the other weights as safetensors, config and metrics.

Layout of ``<run>/checkpoint/``::

    adapter/adapter_config.json        the meta-learned LoRA initialisation, peft format
    adapter/adapter_model.safetensors
    weights.safetensors                everything else that was trained (item side, rates)
    config.json                        the resolved training config
    dataset.json                       fingerprints of the data it was trained on
    metrics.json                       per-epoch metrics

The folder is written with `metarec.atomic.atomic_dir`, so a crash during a save leaves
the previous checkpoint whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from metarec.atomic import atomic_dir, recover
from metarec.errors import MetarecError
from metarec.hashing import sha256_of
from metarec.models.lora import BatchedLoRALinear, LoRAConfig, load_peft_adapter, save_peft_adapter

ADAPTER_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")
REQUIRED = (*ADAPTER_FILES, "weights.safetensors", "config.json")


def save_checkpoint(
    folder: Path,
    lora_layers: dict[str, BatchedLoRALinear],
    lora_config: LoRAConfig,
    base_model: str,
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    metrics: list[dict],
    dataset_fingerprint: dict[str, str],
) -> None:
    """Write a checkpoint to ``folder`` atomically (replacing an older one)."""
    with atomic_dir(folder) as staging:
        save_peft_adapter(lora_layers, lora_config, staging / "adapter", base_model)
        tensors = {name: tensor.detach().contiguous() for name, tensor in weights.items()}
        save_file(tensors, str(staging / "weights.safetensors"))
        (staging / "config.json").write_text(json.dumps(config, indent=2, default=str))
        (staging / "dataset.json").write_text(json.dumps(dataset_fingerprint, indent=2))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config mapping and the non-adapter weights of a checkpoint, validated."""
    recover(folder)
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise MetarecError(f"{folder}: not a metarec checkpoint (missing {', '.join(missing)})")
    try:
        config = json.loads((folder / "config.json").read_text())
        weights = load_file(str(folder / "weights.safetensors"))
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise MetarecError(f"{folder}: checkpoint is corrupt ({err})") from None
    return config, weights


def read_dataset_fingerprint(folder: Path) -> dict[str, str] | None:
    """The fingerprints of the data a checkpoint was trained on (None: saved before they were)."""
    path = folder / "dataset.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as err:
        raise MetarecError(f"{path}: checkpoint is corrupt ({err})") from None


def weight_files_sha256(folder: Path) -> dict[str, str]:
    """SHA-256 of every file a checkpoint scores with: the adapter and the other weights."""
    return {name: sha256_of(folder / name) for name in (*ADAPTER_FILES, "weights.safetensors")}


def trained_weights(model: nn.Module, rates: nn.Module | None) -> dict[str, nn.Parameter]:
    """What a checkpoint stores besides the adapter: the item side, projections and rates.

    ``model`` is a `UserModel` (its ``lora_parameter_names()`` are the adapter's);
    ``rates`` the learned inner rates of ``metasgd``, if any.
    """
    weights = {f"model.{name}": p for name, p in model.named_parameters() if p.requires_grad}
    for name in model.lora_parameter_names():
        del weights[f"model.{name}"]
    if rates is not None:
        weights.update({f"rates.{name}": p for name, p in rates.named_parameters()})
    return weights


def load_trained_weights(
    model: nn.Module,
    rates: nn.Module | None,
    folder: Path,
    weights: dict[str, torch.Tensor],
) -> None:
    """Copy a checkpoint's adapter and ``weights`` (from `read_checkpoint`) into ``model``.

    Learned inner rates are copied when both sides have them; a checkpoint without them
    (an ``llm-noadapt`` run) can still start a ``metasgd`` run, whose rates stay fresh.
    """
    try:
        load_peft_adapter(model.lora_layers, folder / "adapter")
    except (SafetensorError, OSError, RuntimeError) as err:  # RuntimeError: shape mismatch
        raise MetarecError(f"{folder / 'adapter'}: adapter is corrupt ({err})") from None
    own = trained_weights(model, rates)
    if not any(name.startswith("rates.") for name in weights):
        own = {name: p for name, p in own.items() if not name.startswith("rates.")}
    if set(own) != set(weights):
        difference = sorted(set(own) ^ set(weights))[:3]
        raise MetarecError(f"{folder}: weights do not match the model (e.g. {difference})")
    for name, tensor in weights.items():
        if own[name].shape != tensor.shape:
            raise MetarecError(
                f"{folder}: weight {name} {tuple(tensor.shape)} does not fit this model "
                f"{tuple(own[name].shape)} (was it trained on another catalogue?)"
            )
        with torch.no_grad():
            own[name].copy_(tensor)
