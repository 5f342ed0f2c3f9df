"""The trained LLM user model as a method: adapt on each user's history, then score.

``inner_steps`` decides which comparison method it is: 0 steps is ``llm-noadapt``; the
meta-learned checkpoint with its inner steps is ``meta-lora``; a normally trained
checkpoint fine-tuned with the same steps and learning rate is ``llm-finetune``.
Training happens in ``metarec train``; ``fit`` only checks the checkpoint fits the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from metarec.baselines.base import Recommender
from metarec.checkpoint import load_adapter_into, read_checkpoint
from metarec.config import from_mapping
from metarec.data.episodes import collate
from metarec.data.splits import UserCase
from metarec.errors import MetarecError
from metarec.meta.algorithms import MetaConfig, MetaSGDRates
from metarec.meta.personalise import adapted_scores
from metarec.models.user_model import UserModel, UserModelConfig


def trained_weights(model: UserModel, rates: MetaSGDRates | None) -> dict[str, nn.Parameter]:
    """What a checkpoint stores besides the adapter: the item side, projections and rates."""
    weights = {f"model.{name}": p for name, p in model.named_parameters() if p.requires_grad}
    for name in model.lora_parameter_names():
        del weights[f"model.{name}"]
    if rates is not None:
        weights.update({f"rates.{name}": p for name, p in rates.named_parameters()})
    return weights


def load_trained_weights(
    model: UserModel,
    rates: MetaSGDRates | None,
    folder: Path,
    weights: dict[str, torch.Tensor],
) -> None:
    """Copy a checkpoint's adapter and ``weights`` (from `read_checkpoint`) into ``model``.

    Learned inner rates are copied when both sides have them; a checkpoint without them
    (an ``llm-noadapt`` run) can still start a ``metasgd`` run, whose rates stay fresh.
    """
    load_adapter_into(model.lora_layers, folder)
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


class LLMRecommender(Recommender):
    def __init__(
        self,
        model: UserModel,
        meta: MetaConfig,
        rates: MetaSGDRates | None = None,
        inner_steps: int | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.meta = meta
        self.rates = rates
        self.inner_steps = meta.inner_steps if inner_steps is None else inner_steps
        self.batch_size = batch_size
        self.trained_on: dict = {}  # the training config, when loaded from a checkpoint

    @classmethod
    def from_checkpoint(
        cls,
        folder: Path,
        item_text: list[str],
        cache_dir: Path,
        inner_steps: int | None = None,
        trust_remote_code: bool = False,
    ) -> LLMRecommender:
        """Rebuild the model of a ``metarec train`` checkpoint for this catalogue.

        The backbone runs code from its model folder only if ``trust_remote_code`` says so
        here, whatever the training run was allowed.
        """
        config, weights = read_checkpoint(folder)
        model_config = from_mapping(UserModelConfig, config["model"], where=f"{folder}: model")
        model_config.backbone.trust_remote_code = trust_remote_code
        meta = from_mapping(MetaConfig, config["meta"], where=f"{folder}: meta")
        model = UserModel.build(model_config, item_text, cache_dir)
        rates = (
            MetaSGDRates(model.lora_layers, meta.inner_lr) if meta.algorithm == "metasgd" else None
        )
        load_trained_weights(model, rates, folder, weights)
        method = cls(model.eval(), meta, rates, inner_steps)
        method.trained_on = config
        return method

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        catalogue = self.model.id_embedding.num_embeddings
        if catalogue != n_items:
            raise MetarecError(f"checkpoint scores {catalogue} items, the data has {n_items}")

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        """Adapt on, then score from, each history's most recent ``max_len`` items."""
        max_len = self.model.config.max_len
        chunks = []
        with self.model.frozen_item_vectors():
            for start in range(0, len(histories), self.batch_size):
                part = [h[-max_len:] for h in histories[start : start + self.batch_size]]
                batch = collate(part, [np.empty(0, dtype=np.int64)] * len(part))
                scores = adapted_scores(self.model, batch, self.meta, self.rates, self.inner_steps)
                chunks.append(scores.to(torch.float32).numpy())
        return np.concatenate(chunks)
