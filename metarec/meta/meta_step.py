"""The meta objective of a batch of users as one module's forward pass.

The training recipe builds a `MetaStepModule` and hands it to the training engine
(`metarec.distributed.engine`), which runs it as its forward under plain PyTorch or wraps it
with DeepSpeed. Its forward adapts every user of a micro batch from the shared LoRA
initialisation on their support and returns the algorithm's meta objective
(`metarec.meta.algorithms.meta_objective`); backpropagating it gives the meta-gradient.
It also tells the engine what ZeRO-3 needs to know: which parameters the inner loop reads
outside their own module's forward (`directly_read_parameters`) and whether the objective
differentiates the inner gradients again (`second_order`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from metarec.data.episodes import EpisodeBatch
from metarec.meta.algorithms import MetaConfig, MetaSGDRates, meta_objective
from metarec.meta.inner_loop import LossFn
from metarec.meta.personalise import query_loss_fn, sample_negatives, support_loss_fn
from metarec.models.lora import initial_fast_weights
from metarec.models.user_model import UserModel

# (model, batch, support-excluded mask) -> the query loss of adapted weights
QueryLossBuilder = Callable[[UserModel, EpisodeBatch, torch.Tensor], LossFn]


class MetaStepModule(nn.Module):
    """The meta objective of a batch of users as a forward pass (what DeepSpeed wraps)."""

    def __init__(
        self,
        model: UserModel,
        meta: MetaConfig,
        rates: MetaSGDRates | None,
        unranked: torch.Tensor | None = None,
        id_dropout: float = 0.0,
    ) -> None:
        """``unranked``: (N,) bool items no training softmax ranks (coldstart-items' held-out
        items), so their id embeddings get no gradient; None ranks the whole catalogue.
        ``id_dropout``: the fraction of items each step sees by their text alone."""
        super().__init__()
        self.model = model
        self.rates = rates
        self.unranked = unranked
        self.id_dropout = id_dropout
        self.meta = meta  # the recipe swaps it between stages (pretraining: no inner steps)
        # ordinary training on whole windows: next-item loss at every position, no query
        self.next_item = False
        # what the adapted weights are judged by; distillation swaps in a teacher's targets
        self.query_loss: QueryLossBuilder = query_loss_fn

    @property
    def algorithm(self) -> str:
        """The meta-learning algorithm's name (``meta.algorithm``)."""
        return self.meta.algorithm

    @property
    def second_order(self) -> bool:
        """Whether the meta-gradient differentiates through the inner gradients."""
        return self.meta.properties.second_order

    def directly_read_parameters(self) -> list[nn.Parameter]:
        """Parameters used outside their own module's forward (ZeRO-3 must gather them)."""
        params = [self.model.id_embedding.weight]
        for layer in self.model.fast_layers.values():
            params += [layer.lora_A.weight, layer.lora_B.weight]
        if self.rates is not None:
            params += list(self.rates.parameters())
        return params

    def forward(
        self, support: torch.Tensor, support_lengths: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        """Mean meta objective over the batch (see `metarec.meta.algorithms`)."""
        batch = EpisodeBatch(support, support_lengths, query)
        start = initial_fast_weights(self.model.fast_layers, len(support))
        n_items = self.model.id_embedding.num_embeddings
        # fresh for every step, from torch's generator (in the checkpoint: resume is exact)
        negatives = sample_negatives(n_items, self.meta.support_negatives, self.unranked)
        if negatives is not None:
            negatives = negatives.to(support.device)
        support_loss = support_loss_fn(self.model, batch, self.unranked, negatives)
        hidden_ids = None
        if self.id_dropout > 0:  # drawn like the negatives (no draw at all without dropout)
            hidden_ids = (torch.rand(n_items) < self.id_dropout).to(support.device)
        with self.model.shared_item_vectors(hidden_ids):
            if self.next_item:
                return support_loss(start).mean()
            excluded = batch.support_excluded(n_items)
            if self.unranked is not None:
                excluded = excluded | self.unranked
            objective, _ = meta_objective(
                self.meta,
                support_loss,
                self.query_loss(self.model, batch, excluded),
                start,
                self.rates,
            )
            return objective
