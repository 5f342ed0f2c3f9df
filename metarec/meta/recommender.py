"""The trained LLM user model as a method: adapt on each user's history, then score.

``inner_steps`` decides which comparison method it is: 0 steps is ``llm-noadapt``; the
meta-learned checkpoint with its inner steps is ``meta-lora``; a normally trained
checkpoint fine-tuned with the same steps and learning rate is ``llm-finetune``.
Training happens in ``metarec train``; a run is loaded by `metarec.trained_run.TrainedRun`
(``run.recommender()``); ``fit`` only checks the model fits the data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from metarec.data.episodes import collate
from metarec.data.splits import UserCase
from metarec.device import model_device, to_numpy
from metarec.errors import MetarecError
from metarec.eval.recommender import Recommender
from metarec.meta.algorithms import MetaConfig, MetaSGDRates
from metarec.meta.personalise import adapted_scores, adapted_states
from metarec.models.user_model import UserModel


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

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        catalogue = self.model.id_embedding.num_embeddings
        if catalogue != n_items:
            raise MetarecError(f"checkpoint scores {catalogue} items, the data has {n_items}")

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        """Adapt on, then score from, each history's most recent ``max_len`` items."""
        return self._per_batch(histories, adapted_scores)

    def states(self, histories: list[np.ndarray]) -> np.ndarray:
        """(U, item_dim) adapted states of the histories, as `score` adapts them: a user's
        scores are its state's dot products with the item vectors."""
        return self._per_batch(histories, adapted_states)

    def _per_batch(self, histories: list[np.ndarray], adapt: Callable) -> np.ndarray:
        """``adapt(model, batch, meta, rates, inner_steps)`` of ``batch_size`` users at a
        time (each on its most recent ``max_len`` items), concatenated over users."""
        max_len = self.model.config.max_len
        device = model_device(self.model)
        chunks = []
        with self.model.frozen_item_vectors():
            for start in range(0, len(histories), self.batch_size):
                part = [h[-max_len:] for h in histories[start : start + self.batch_size]]
                batch = collate(part, [np.empty(0, dtype=np.int64)] * len(part), device)
                chunks.append(to_numpy(adapt(self.model, batch, self.meta, self.rates,
                                             self.inner_steps)))  # fmt: skip
        return np.concatenate(chunks)
