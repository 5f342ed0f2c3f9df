"""LoRA layers whose weights can be a different fast copy for every user in the batch.

``BatchedLoRALinear`` computes ``x ↦ W0 x + (α/r) B A x`` (the peft/torchtune formula).
Its ``lora_A`` (r, d_in) and ``lora_B`` (d_out, r) parameters are the shared, meta-learned
initialisation. While fast weights are bound (`bind_fast_weights`), user u of the batch
uses its own ``A_u`` (r, d_in) and ``B_u`` (d_out, r) instead, stacked as (U, r, d_in) and
(U, d_out, r) tensors and applied with batched matmuls. Fast weights are ordinary
tensors in the autograd graph, so one backward pass gives every user's inner-loop
gradient and, with ``create_graph=True``, second-order meta-gradients.

Parameter names match peft's (``<module>.lora_A.weight``), so an initialisation exports
as a peft adapter.

Precision (as peft): the adapters are at least float32 whatever the backbone's dtype
(`metarec.models.backbone.trainable_dtype`), so the fast weights, the meta-learned
initialisation and the Meta-SGD rates (``full_like`` of them) are too, and small inner
steps do not round away against a bfloat16 backbone. The frozen base layer runs in its own
dtype; the low-rank update runs in the adapters' dtype on the input cast to it, and the sum
is cast back to the base output's dtype (peft's ``result.to(torch_result_dtype)``). For a
float32 backbone every cast is a no-op and the layer is exactly ``W0 x + (α/r) B A x``.
No autocast here: under a bfloat16 autocast region the update's matmuls would run in
bfloat16 again (see `metarec.models.user_model`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from metarec.errors import MetarecError
from metarec.models.backbone import trainable_dtype

FastWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LoRAConfig:
    """Rank, scaling and placement of the adapters.

    ``target_modules``: names of the linear layers that get adapters (peft's matching:
    the last component of the module path). ``layers``: indices of the decoder layers
    whose adapters exist (None = all). ``fast_layers``: those of them whose adapters are the
    fast weights, adapted per user in the inner loop (None = all); the adapters of the
    other layers are trained like the item side and shared by every user (ANIL-style).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    layers: list[int] | None = None
    fast_layers: list[int] | None = None


class _Weight(nn.Module):
    """Holds one LoRA matrix as ``.weight``, so state-dict keys read ``lora_A.weight``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)


class BatchedLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a LoRA update, shared or per user."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # float32 (at least) on the base weight's device, whatever the backbone's dtype
        kind = {"dtype": trainable_dtype(base.weight.dtype), "device": base.weight.device}
        lora_a = torch.empty(rank, base.in_features, **kind)
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))  # peft's default initialisation
        self.lora_A = _Weight(lora_a)
        self.lora_B = _Weight(torch.zeros(base.out_features, rank, **kind))
        self.fast: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (U, T, d_in) → (U, T, d_out); with fast weights bound, U must match theirs."""
        out = self.base(x)
        # the update in the adapters' dtype (float32 for a bfloat16 backbone; no-op in float32)
        dropped = self.dropout(x.to(self.lora_A.weight.dtype))
        if self.fast is None:
            update = dropped @ self.lora_A.weight.T @ self.lora_B.weight.T
        else:
            fast_a, fast_b = self.fast
            update = torch.bmm(torch.bmm(dropped, fast_a.transpose(1, 2)), fast_b.transpose(1, 2))
        # summed in the wider dtype, returned in the backbone's, as peft does
        return (out + self.scaling * update).to(out.dtype)


def layer_index(name: str) -> int | None:
    """The decoder layer a module path such as ``layers.3.self_attn.q_proj`` belongs to."""
    parts = name.split(".")
    for before, after in zip(parts, parts[1:], strict=False):
        if before == "layers" and after.isdigit():
            return int(after)
    return None


def inject_lora(model: nn.Module, config: LoRAConfig) -> dict[str, BatchedLoRALinear]:
    """Wrap the targeted linear layers of ``model`` in place; returns them by module name."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.split(".")[-1] in config.target_modules
        and (config.layers is None or layer_index(name) in config.layers)
    ]
    if not targets:
        raise MetarecError(
            f"lora.target_modules {config.target_modules}: no linear layer of the backbone "
            "matches (Llama-style names are q_proj, k_proj, v_proj, o_proj, gate_proj, ...)"
        )
    wrapped = {}
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lora = BatchedLoRALinear(module, config.rank, config.alpha, config.dropout)
        setattr(parent, child, lora)
        wrapped[name] = lora
    return wrapped


def fast_lora_layers(
    layers: dict[str, BatchedLoRALinear], fast_layers: list[int] | None
) -> dict[str, BatchedLoRALinear]:
    """The adapters of ``layers`` that are fast weights: those in the decoder layers
    ``fast_layers`` (`LoRAConfig.fast_layers`; None: every adapter)."""
    if fast_layers is None:
        return dict(layers)
    fast = {name: layer for name, layer in layers.items() if layer_index(name) in fast_layers}
    if not fast:
        placed = sorted({layer_index(name) for name in layers}, key=str)
        raise MetarecError(
            f"lora.fast_layers {fast_layers}: no adapter sits in those decoder layers (the "
            f"adapters are in layers {placed})"
        )
    return fast


def initial_fast_weights(layers: dict[str, BatchedLoRALinear], n_users: int) -> FastWeights:
    """Every user starts at the shared initialisation: (U, r, d_in) and (U, d_out, r) views.

    They are expanded views of the parameters, so gradients flow back to the init.
    """
    return {
        name: (
            layer.lora_A.weight.unsqueeze(0).expand(n_users, -1, -1),
            layer.lora_B.weight.unsqueeze(0).expand(n_users, -1, -1),
        )
        for name, layer in layers.items()
    }


@contextmanager
def bind_fast_weights(layers: dict[str, BatchedLoRALinear], fast: FastWeights) -> Iterator[None]:
    """Make ``layers`` use per-user ``fast`` weights inside the ``with`` block.

    Blocks nest: on exit each layer gets back whatever it used before (a recomputed
    checkpointed layer binds inside the forward that bound it first).
    """
    previous = {name: layer.fast for name, layer in layers.items()}
    for name, layer in layers.items():
        layer.fast = fast[name]
    try:
        yield
    finally:
        for name, layer in layers.items():
            layer.fast = previous[name]


def save_peft_adapter(
    layers: dict[str, BatchedLoRALinear], config: LoRAConfig, folder: Path, base_model: str
) -> None:
    """Write the shared initialisation as a peft adapter (loadable by ``PeftModel``)."""
    from peft import LoraConfig

    folder.mkdir(parents=True, exist_ok=True)
    LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        layers_to_transform=config.layers,
        # peft finds the layer index after "<pattern>."; without one it wants a prefix before
        # it, which a bare decoder stack ("layers.6.self_attn...") lacks
        layers_pattern="layers" if config.layers is not None else None,
        base_model_name_or_path=base_model,
    ).save_pretrained(str(folder))
    tensors = {
        f"base_model.model.{name}.{part}.weight": getattr(layer, part).weight.detach().contiguous()
        for name, layer in layers.items()
        for part in ("lora_A", "lora_B")
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def load_peft_adapter(layers: dict[str, BatchedLoRALinear], folder: Path) -> None:
    """Load a peft adapter's weights into ``layers`` (shapes and names must match)."""
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for name, layer in layers.items():
        for part in ("lora_A", "lora_B"):
            key = f"base_model.model.{name}.{part}.weight"
            if key not in tensors:
                raise MetarecError(f"{folder}: adapter has no {key}")
            getattr(layer, part).weight.data.copy_(tensors[key])
