"""Activation checkpointing that knows about per-user fast weights.

A checkpointed decoder layer is run again in backward to rebuild its activations. The
LoRA layers inside it read their fast weights from an attribute bound for the duration of
a forward (`metarec.models.lora.bind_fast_weights`), which is long gone by backward, and
differ at every inner step. So each checkpointed layer passes its fast weights to
``torch.utils.checkpoint`` as explicit inputs: the recomputation binds exactly the
tensors the original forward used, which also keeps second-order MAML exact.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from metarec.errors import MetarecError
from metarec.models.lora import BatchedLoRALinear, bind_fast_weights


def checkpoint_layer(layer: nn.Module) -> None:
    """Make ``layer`` recompute in backward, with its LoRA fast weights as explicit inputs.

    The layer's ``forward`` is replaced on the instance, so parameter names (and with them
    peft export and checkpoints) do not change.
    """
    loras = [module for module in layer.modules() if isinstance(module, BatchedLoRALinear)]
    original = layer.forward

    def forward(hidden_states: torch.Tensor, *args, **kwargs):
        bound = [lora.fast for lora in loras]
        fast = () if any(f is None for f in bound) else tuple(t for f in bound for t in f)

        def run(hidden: torch.Tensor, *fast_tensors: torch.Tensor):
            if not fast_tensors:  # the shared weights: nothing to rebind
                return original(hidden, *args, **kwargs)
            pairs = {i: fast_tensors[2 * i : 2 * i + 2] for i in range(len(loras))}
            with bind_fast_weights(dict(enumerate(loras)), pairs):
                return original(hidden, *args, **kwargs)

        return checkpoint(run, hidden_states, *fast, use_reentrant=False)

    layer.forward = forward


def enable_activation_checkpointing(backbone: nn.Module) -> int:
    """Checkpoint every decoder layer of ``backbone``; returns how many.

    Decoder layers are the children of the backbone's first ``nn.ModuleList`` (``layers``
    in Llama-style models, ``h`` in GPT-2-style ones).
    """
    if hasattr(backbone, "config"):
        backbone.config.use_cache = False  # a recomputed layer would append to a KV cache twice
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList):
            for layer in module:
                checkpoint_layer(layer)
            return len(module)
    raise MetarecError(f"{type(backbone).__name__}: no decoder layer list to checkpoint")
