"""Episode losses of the user model, and adapt-then-score for a batch of users.

The support loss is next-item prediction inside the support; the query loss ranks the
query items from the state after the last support item, with the support excluded, as
the ``coldstart`` protocol does at test time. In training on ``coldstart-items``, neither
ranks the held-out items (their logits masked), so no gradient reaches them.
"""

from __future__ import annotations

import torch

from metarec.data.episodes import EpisodeBatch
from metarec.device import to_numpy
from metarec.meta.algorithms import MetaConfig, MetaSGDRates, inner_loop_settings
from metarec.meta.inner_loop import LossFn, adapt
from metarec.meta.losses import next_item_losses, query_losses
from metarec.models.lora import FastWeights, bind_fast_weights, initial_fast_weights
from metarec.models.user_model import UserModel


def last_states(model: UserModel, batch: EpisodeBatch, fast: FastWeights) -> torch.Tensor:
    """(U, item_dim) state after each user's last support item, under fast weights."""
    with bind_fast_weights(model.lora_layers, fast):
        states = model.states(batch.support, batch.support_lengths)
    return states[torch.arange(len(states), device=states.device), batch.support_lengths - 1]


def support_loss_fn(
    model: UserModel, batch: EpisodeBatch, unranked: torch.Tensor | None = None
) -> LossFn:
    """``unranked``: (N,) bool items left out of the softmax (training's held-out items)."""

    def support_loss(fast: FastWeights) -> torch.Tensor:
        with bind_fast_weights(model.lora_layers, fast):
            states = model.states(batch.support, batch.support_lengths)
        scores = model.scores(states)
        if unranked is not None:
            scores = scores.masked_fill(unranked, float("-inf"))
        return next_item_losses(scores, batch.support, batch.support_lengths)

    return support_loss


def query_loss_fn(model: UserModel, batch: EpisodeBatch, excluded: torch.Tensor) -> LossFn:
    def query_loss(fast: FastWeights) -> torch.Tensor:
        return query_losses(model.scores(last_states(model, batch, fast)), batch.query, excluded)

    return query_loss


def adapt_batch(
    model: UserModel,
    batch: EpisodeBatch,
    meta: MetaConfig,
    rates: MetaSGDRates | None,
    steps: int,
) -> FastWeights:
    """Each user's fast weights after ``steps`` first-order support steps, detached."""
    lr, proximal = inner_loop_settings(meta, rates)
    # leaves of their own: works under no_grad and with a frozen model (a distillation teacher)
    start = {
        name: (a.detach().requires_grad_(), b.detach().requires_grad_())
        for name, (a, b) in initial_fast_weights(model.lora_layers, len(batch.support)).items()
    }
    with torch.enable_grad():
        fast = adapt(support_loss_fn(model, batch), start, steps, lr, False, proximal)
    return {name: (a.detach(), b.detach()) for name, (a, b) in fast.items()}


def episode_losses(
    model: UserModel, batch: EpisodeBatch, meta: MetaConfig, rates: MetaSGDRates | None
) -> dict[str, float]:
    """Mean support and query losses of a batch, before and after adaptation."""
    excluded = batch.support_excluded(model.id_embedding.num_embeddings)
    start = initial_fast_weights(model.lora_layers, len(batch.support))
    adapted = adapt_batch(model, batch, meta, rates, meta.inner_steps)
    means = {}
    with torch.no_grad():
        for label, fast in (("before", start), ("after", adapted)):
            means[f"support_loss_{label}"] = support_loss_fn(model, batch)(fast).mean()
            means[f"query_loss_{label}"] = query_loss_fn(model, batch, excluded)(fast).mean()
    values = to_numpy(torch.stack(list(means.values())))  # one copy to the host
    return {name: float(value) for name, value in zip(means, values, strict=True)}


def adapted_states(
    model: UserModel,
    batch: EpisodeBatch,
    meta: MetaConfig,
    rates: MetaSGDRates | None = None,
    inner_steps: int | None = None,
) -> torch.Tensor:
    """(U, item_dim) states after ``inner_steps`` (default ``meta.inner_steps``) support steps.

    First order at test time: the inner gradients are only needed, not differentiated.
    An item's score is the dot product of the state with its vector. Layers below the
    first adapted one run once, not once per step (`UserModel.frozen_prefix`).
    """
    steps = meta.inner_steps if inner_steps is None else inner_steps
    with model.frozen_prefix(batch.support, batch.support_lengths):
        fast = adapt_batch(model, batch, meta, rates, steps)
        with torch.no_grad():
            return last_states(model, batch, fast)


def adapted_scores(
    model: UserModel,
    batch: EpisodeBatch,
    meta: MetaConfig,
    rates: MetaSGDRates | None = None,
    inner_steps: int | None = None,
) -> torch.Tensor:
    """(U, N) catalogue scores from `adapted_states`."""
    states = adapted_states(model, batch, meta, rates, inner_steps)
    with torch.no_grad():
        return model.scores(states)
