"""The per-user path with a stock peft model: load the adapter, a few SGD steps, score.

This is what one writes without metarec's stacked fast weights: one user at a time, the
LoRA matrices reset from the run's saved peft adapter, ``inner_steps`` plain SGD steps on
that user's next-item support loss, then scores for the user's candidates. It is the
reference the batched path is checked against (tests) and the baseline it is timed
against (``bench/rerank_throughput.py``). Only plain-learning-rate algorithms are
supported: Meta-SGD's per-weight rates are not a torch optimiser.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from metarec.device import model_device, to_numpy
from metarec.errors import ConfigError
from metarec.meta.algorithms import MetaConfig
from metarec.meta.losses import next_item_losses
from metarec.meta.personalise import adaptation_negatives
from metarec.models.user_model import UserModel


class PeftUserLoop:
    """A copy of ``model`` whose backbone carries peft's LoRA instead of metarec's."""

    def __init__(self, model: UserModel, adapter_dir: Path, meta: MetaConfig) -> None:
        if meta.properties.learned_rates:
            raise ConfigError("the peft loop has one learning rate; metasgd learns one per weight")
        if model.config.lora.fast_layers is not None:
            raise ConfigError(
                f"the peft loop adapts every adapter; this model's lora.fast_layers "
                f"({model.config.lora.fast_layers}) adapts some only"
            )
        if adaptation_negatives(model, meta) is not None:
            n_items = model.id_embedding.num_embeddings
            raise ConfigError(
                f"the peft loop adapts on the whole softmax; this run's meta.support_negatives "
                f"({meta.support_negatives}) samples its {n_items:,} items, so the two would "
                "adapt on different losses"
            )
        self.meta = meta
        self.adapter_file = adapter_dir / "adapter_model.safetensors"
        self.model = copy.deepcopy(model)
        for name, layer in self.model.lora_layers.items():
            parent_name, _, child = name.rpartition(".")
            setattr(self.model.backbone.get_submodule(parent_name), child, layer.base)
        self.model.lora_layers = self.model.fast_layers = {}
        # peft injects its layers into the backbone object in place, so `model.states` uses them
        self.peft = PeftModel.from_pretrained(
            self.model.backbone, str(adapter_dir), is_trainable=True
        )
        self.adapter = [p for p in self.peft.parameters() if p.requires_grad]
        adapter_ids = {id(p) for p in self.adapter}
        for parameter in self.model.parameters():  # no gradients wasted on the item side
            parameter.requires_grad_(id(parameter) in adapter_ids)

    def _states(self, history: torch.Tensor) -> torch.Tensor:
        """(1, T, item_dim) states of one user's (T,) history."""
        lengths = torch.tensor([len(history)], device=history.device)
        return self.model.states(history[None], lengths)

    def adapted_state(self, history: np.ndarray, inner_steps: int) -> torch.Tensor:
        """(item_dim,) state after the (T,) ``history``, once adapted to it from the adapter."""
        set_peft_model_state_dict(self.peft, load_file(str(self.adapter_file)))
        items = torch.tensor(history, device=model_device(self.model))
        start = [p.detach().clone() for p in self.adapter]
        optimizer = torch.optim.SGD(self.adapter, lr=self.meta.inner_lr)
        for _ in range(inner_steps):
            optimizer.zero_grad()
            scores = self.model.scores(self._states(items))
            lengths = torch.tensor([len(items)], device=items.device)
            loss = next_item_losses(scores, items[None], lengths).sum()
            if self.meta.properties.proximal:  # λ·½‖φ − φ₀‖², as the batched inner loop
                distance = sum(
                    ((p - s) ** 2).sum() for p, s in zip(self.adapter, start, strict=True)
                )
                loss = loss + self.meta.proximal_strength * 0.5 * distance
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return self._states(items)[0, -1]

    def scores(self, state: torch.Tensor, candidates: np.ndarray) -> np.ndarray:
        """(C,) scores of item indices ``candidates`` for an adapted ``state``."""
        with torch.no_grad():
            rows = torch.from_numpy(candidates).to(state.device)
            return to_numpy(self.model.item_vectors(rows) @ state)
