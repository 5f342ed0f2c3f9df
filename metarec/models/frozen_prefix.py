"""Run a range of the backbone's decoder layers, so a frozen bottom runs once per user.

With LoRA on the top layers only (``lora.layers``), nothing below the first adapted layer
depends on the fast weights: at test time its output is the same for every inner step and
for the final scoring pass. `run_layers` runs any contiguous range of a Hugging Face
decoder stack (``layers``, final ``norm``, ``config.num_hidden_layers``, as Llama, Qwen2
and Mistral have) on given hidden states: the bottom once, the top at every step.
Positions and the attention mask are rebuilt the same way for either part, so the two
parts compose to exactly the full forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def _layer_range(backbone: nn.Module, start: int, stop: int) -> Iterator[None]:
    """Make ``backbone`` hold only layers [start, stop), with its final norm only at the top."""
    config = backbone.config
    layers, count, norm = backbone.layers, config.num_hidden_layers, backbone.norm
    layer_types = getattr(config, "layer_types", None)
    backbone.layers = nn.ModuleList(list(layers)[start:stop])
    config.num_hidden_layers = stop - start
    if layer_types is not None:
        config.layer_types = layer_types[start:stop]
    if stop < count:
        backbone.norm = nn.Identity()
    try:
        yield
    finally:
        backbone.layers, config.num_hidden_layers, backbone.norm = layers, count, norm
        if layer_types is not None:
            config.layer_types = layer_types


def run_layers(
    backbone: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int
) -> torch.Tensor:
    """(U, T, hidden) states after decoder layers [start, stop) of (U, T, hidden) inputs.

    The final norm is applied when ``stop`` is the last layer, as in the full forward pass.
    """
    with _layer_range(backbone, start, stop):
        output = backbone(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)
    return output.last_hidden_state
