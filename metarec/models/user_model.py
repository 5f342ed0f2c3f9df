"""The LLM user model: a history of items runs through the backbone and scores the catalogue.

Items live in a shared ``item_dim`` space: the projection of their text vector
concatenated with a learned collaborative id embedding (text alone is weak on MovieLens;
ids alone cannot place a new item). A new item's id embedding starts at zero, so its
text places it; training moves it only through the softmax denominators. A user's
history, as item vectors projected to the backbone's hidden size, runs through the
backbone (``inputs_embeds``, LoRA fast weights inside); the state at a position, projected
back to ``item_dim``, scores every item by dot product.

Precision: the item side (text vectors, id embedding, projections) is trained, so it is
kept in `metarec.models.backbone.trainable_dtype` of the backbone's dtype (float32 for a
bfloat16 backbone), like the LoRA adapters. The projected inputs are cast to the backbone's
dtype at its input and its hidden states back at its output, so states, scores and losses
are float32; with a float32 backbone both casts are no-ops.

No ``torch.autocast`` around the backbone, by decision: a bfloat16 backbone already holds
bfloat16 weights, so its matmuls run in bfloat16 without it (and Llama computes its norms,
rotary angles and eager softmax in float32 itself); autocast would instead cast the
float32 LoRA updates' matmuls back to bfloat16, and ``torch.autocast`` refuses the
``meta`` device even when disabled (where a device test may run the model). So
``backbone.dtype: bfloat16`` is the mixed-precision switch: the frozen backbone runs in
bfloat16, everything trained in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metarec.errors import MetarecError
from metarec.models.backbone import BackboneConfig, load_backbone, trainable_dtype
from metarec.models.frozen_prefix import run_layers
from metarec.models.item_init import svd_item_embeddings
from metarec.models.lora import (
    BatchedLoRALinear,
    LoRAConfig,
    fast_lora_layers,
    inject_lora,
    layer_index,
)
from metarec.models.text_encoder import cached_text_vectors

# Hugging Face decoders that `run_layers` can split at a layer (no input scaling, one norm)
SPLITTABLE_MODEL_TYPES = ("llama", "mistral", "qwen2")

# items projected at once when the whole catalogue is: projecting it in one go holds its
# concatenated text and id inputs too, a transient copy larger than the vectors themselves
CATALOGUE_CHUNK_ROWS = 65536


@dataclass
class UserModelConfig:
    """The backbone, its adapters and the item side."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    text_encoder: str = "all-minilm-l6-v2"
    id_dim: int = 64
    # "svd": start id embeddings at the meta-train users' collaborative structure
    # (`metarec.models.item_init`); "zeros": learn them from nothing.
    id_init: str = "svd"
    item_dim: int = 128
    max_len: int = 50


class UserModel(nn.Module):
    """Backbone with LoRA plus the item side; scores (U, N) from item histories (U, T)."""

    def __init__(
        self,
        config: UserModelConfig,
        backbone: nn.Module,
        text_vectors: torch.Tensor | None,
        n_items: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.lora_layers: dict[str, BatchedLoRALinear] = inject_lora(backbone, config.lora)
        self.fast_layers = fast_lora_layers(self.lora_layers, config.lora.fast_layers)
        hidden = backbone.config.hidden_size
        # the item side trains in at least float32, whatever the frozen backbone's dtype
        dtype = trainable_dtype(next(backbone.parameters()).dtype)
        text_dim = 0 if text_vectors is None else text_vectors.shape[1]
        if text_vectors is not None:
            self.register_buffer("text_vectors", text_vectors.to(dtype), persistent=False)
        else:
            self.text_vectors = None
        self.id_embedding = nn.Embedding(n_items, config.id_dim, dtype=dtype)
        nn.init.zeros_(self.id_embedding.weight)
        self.item_projection = nn.Linear(text_dim + config.id_dim, config.item_dim, dtype=dtype)
        self.input_projection = nn.Linear(config.item_dim, hidden, dtype=dtype)
        self.output_projection = nn.Linear(hidden, config.item_dim, dtype=dtype)
        # the catalogue's vectors while a block holds them (`frozen_item_vectors`,
        # `shared_item_vectors`): every `item_vectors` call reads them instead of projecting
        self.held_vectors: torch.Tensor | None = None
        # (items, first adapted layer, hidden states entering it) while `frozen_prefix` runs
        self.prefix: tuple[torch.Tensor, int, torch.Tensor] | None = None

    @classmethod
    def build(
        cls,
        config: UserModelConfig,
        item_text: list[str],
        cache_dir: Path,
        train_sequences: list[np.ndarray] | None = None,
    ) -> UserModel:
        """Load the backbone and item text vectors (cached) and assemble a fresh model.

        ``train_sequences`` seed the id embeddings when ``config.id_init`` is ``svd``.
        """
        if config.id_init not in ("svd", "zeros"):
            raise MetarecError(f"model.id_init {config.id_init!r}: expected 'svd' or 'zeros'")
        text_vectors = None
        if config.text_encoder != "none":
            text_vectors = torch.from_numpy(
                cached_text_vectors(item_text, config.text_encoder, cache_dir)
            )
        model = cls(config, load_backbone(config.backbone), text_vectors, len(item_text))
        if config.id_init == "svd" and train_sequences is not None:
            start = svd_item_embeddings(train_sequences, len(item_text), config.id_dim)
            model.id_embedding.weight.data.copy_(torch.from_numpy(start))
        return model

    def item_vectors(
        self, rows: torch.Tensor | None = None, hidden_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, item_dim) vectors of every catalogue item, or (*rows.shape, item_dim) of ``rows``.

        ``hidden_ids``: (N,) bool items whose id embedding counts as zero (training's id
        dropout); the whole catalogue only.
        """
        if self.held_vectors is not None:
            return self.held_vectors if rows is None else self.held_vectors[rows]
        if rows is None:
            ids = self.id_embedding.weight
            if hidden_ids is not None:
                ids = ids.masked_fill(hidden_ids[:, None], 0.0)
            parts = [ids]
            if self.text_vectors is not None:
                parts.insert(0, self.text_vectors)
        else:
            # the weight read directly, not through the module's forward: under ZeRO-3 a
            # submodule's forward re-partitions it on exit, even inside a gathered block
            parts = [self.id_embedding.weight[rows]]
            if self.text_vectors is not None:
                parts.insert(0, self.text_vectors[rows])
        return self.item_projection(torch.cat(parts, dim=-1))

    def catalogue_chunks(
        self, chunk_rows: int = CATALOGUE_CHUNK_ROWS
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """The catalogue's vectors as (first row, (rows, item_dim) vectors), ``chunk_rows``
        items at a time, without gradients."""
        n_items = self.id_embedding.num_embeddings
        device = self.id_embedding.weight.device
        with torch.no_grad():
            for start in range(0, n_items, chunk_rows):
                rows = torch.arange(start, min(n_items, start + chunk_rows), device=device)
                yield start, self.item_vectors(rows)

    @contextmanager
    def frozen_item_vectors(self) -> Iterator[None]:
        """Compute the catalogue's vectors once for a block that adapts and scores users.

        Outside training the item side is constant, yet every forward of the inner loop
        would project the whole catalogue again.
        """
        if self.held_vectors is not None:  # blocks nest: an inner one uses the outer's
            yield
            return
        weight = self.item_projection.weight
        frozen = weight.new_empty(self.id_embedding.num_embeddings, self.config.item_dim)
        for start, vectors in self.catalogue_chunks():
            frozen[start : start + len(vectors)] = vectors
        with self._holding(frozen):
            yield

    @contextmanager
    def shared_item_vectors(self, hidden_ids: torch.Tensor | None = None) -> Iterator[None]:
        """Project the catalogue once, with its graph, for a block that trains on it.

        A meta step's inner steps and its query loss all score the catalogue; projecting it
        for each (forward and backward) costs as much as a backbone layer at 27,000 items.
        Inside the block they share one projection, and its gradient flows back once; items
        in ``hidden_ids`` ((N,) bool) are seen by their text alone, in histories and scores.
        """
        if self.held_vectors is not None:
            yield
            return
        with self._holding(self.item_vectors(hidden_ids=hidden_ids)):
            yield

    @contextmanager
    def _holding(self, vectors: torch.Tensor) -> Iterator[None]:
        self.held_vectors = vectors
        try:
            yield
        finally:
            self.held_vectors = None

    @staticmethod
    def _attention_mask(items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(U, T) 1 at the real positions of right-padded (U, T) histories, 0 at padding."""
        positions = torch.arange(items.shape[1], device=items.device)
        return (positions[None, :] < lengths[:, None]).long()

    def states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(U, T, item_dim) user states after each position of right-padded (U, T) histories.

        Padding positions (index >= length) carry any item id; they are masked out of
        attention and their states are meaningless.
        """
        mask = self._attention_mask(items, lengths)
        if self.prefix is not None and self.prefix[0] is items:
            _, first, hidden = self.prefix
            top = self.backbone.config.num_hidden_layers
            return self._from_backbone(run_layers(self.backbone, hidden, mask, first, top))
        inputs = self._to_backbone(self.input_projection(self.item_vectors(items)))
        # no KV cache: nothing is generated, and a recomputed layer would append to it twice
        output = self.backbone(inputs_embeds=inputs, attention_mask=mask, use_cache=False)
        return self._from_backbone(output.last_hidden_state)

    @property
    def backbone_dtype(self) -> torch.dtype:
        """The frozen backbone's dtype (read each time: a later ``.to()`` may change it)."""
        return self.backbone.get_input_embeddings().weight.dtype

    def _to_backbone(self, inputs: torch.Tensor) -> torch.Tensor:
        """Item-side (trainable dtype) inputs in the backbone's dtype (no-op in float32)."""
        return inputs.to(self.backbone_dtype)

    def _from_backbone(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., item_dim) states of backbone hidden states, in the item side's dtype."""
        return self.output_projection(hidden.to(self.output_projection.weight.dtype))

    def first_adapted_layer(self) -> int:
        """Index of the lowest decoder layer with fast weights (0 if any sits elsewhere)."""
        indices = [layer_index(name) for name in self.fast_layers]
        return 0 if None in indices else min(indices)

    @contextmanager
    def frozen_prefix(self, items: torch.Tensor, lengths: torch.Tensor) -> Iterator[None]:
        """Inside the block, `states` of these very ``items`` runs only the adapted layers.

        The layers below the first adapted one run here, once. For test-time adaptation
        only: the cached states carry no gradient to the item side.
        """
        first = self.first_adapted_layer()
        previous = self.prefix
        # only decoder stacks whose forward is embeddings -> layers -> norm can be split
        if first > 0 and self.backbone.config.model_type in SPLITTABLE_MODEL_TYPES:
            with torch.no_grad():
                inputs = self._to_backbone(self.input_projection(self.item_vectors(items)))
                mask = self._attention_mask(items, lengths)
                self.prefix = (items, first, run_layers(self.backbone, inputs, mask, 0, first))
        try:
            yield
        finally:
            self.prefix = previous

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """(..., N) scores of (..., item_dim) states against every item."""
        return states @ self.item_vectors().T

    def lora_parameter_names(self) -> list[str]:
        """Names (as in ``named_parameters``) of the LoRA initialisation's matrices."""
        return [
            f"backbone.{layer}.{part}.weight"
            for layer in self.lora_layers
            for part in ("lora_A", "lora_B")
        ]
