"""Run checkpoints: a peft adapter, the other weights as safetensors, config and metrics.

Layout of ``<run>/checkpoint/``::

    adapter/adapter_config.json        the meta-learned LoRA initialisation, peft format
    adapter/adapter_model.safetensors
    weights.safetensors                everything else that was trained (item side, rates)
    config.json                        the resolved training config
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

from metarec.atomic import atomic_dir, recover
from metarec.errors import MetarecError
from metarec.hashing import sha256_of
from metarec.models.lora import BatchedLoRALinear, LoRAConfig, load_peft_adapter, save_peft_adapter

REQUIRED = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors",
            "weights.safetensors", "config.json")  # fmt: skip


def save_checkpoint(
    folder: Path,
    lora_layers: dict[str, BatchedLoRALinear],
    lora_config: LoRAConfig,
    base_model: str,
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    metrics: list[dict],
) -> None:
    """Write a checkpoint to ``folder`` atomically (replacing an older one)."""
    with atomic_dir(folder) as staging:
        save_peft_adapter(lora_layers, lora_config, staging / "adapter", base_model)
        tensors = {name: tensor.detach().contiguous() for name, tensor in weights.items()}
        save_file(tensors, str(staging / "weights.safetensors"))
        (staging / "config.json").write_text(json.dumps(config, indent=2, default=str))
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


def load_adapter_into(lora_layers: dict[str, BatchedLoRALinear], folder: Path) -> None:
    """Load the checkpoint's peft adapter into the model's LoRA layers."""
    try:
        load_peft_adapter(lora_layers, folder / "adapter")
    except (SafetensorError, OSError, RuntimeError) as err:  # RuntimeError: shape mismatch
        raise MetarecError(f"{folder / 'adapter'}: adapter is corrupt ({err})") from None


def checkpoint_fingerprint(folder: Path) -> str:
    """Names the trained item side of a checkpoint, for index folders built from it."""
    read_checkpoint(folder)
    return f"metarec:{sha256_of(folder / 'weights.safetensors')[:16]}"
