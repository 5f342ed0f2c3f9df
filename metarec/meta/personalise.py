"""Episode losses of the user model, and adapt-then-score for a batch of users.

The support loss is next-item prediction inside the support; the query loss ranks the
query items from the state after the last support item, with the support excluded, as
the ``coldstart`` protocol does at test time. In training on ``coldstart-items``, neither
ranks the held-out items (their logits masked), so no gradient reaches them.

Test-time adaptation (`adapt_batch`) takes the same support loss with its softmax over the
catalogue streamed (`streamed_support_loss_fn`): ``SOFTMAX_CHUNK_ITEMS`` items at a time, so
its memory does not grow with the catalogue. Its time still does: every support position
of every inner step is normalised over every item, as the model was meta-trained to adapt.
"""

from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx

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


# items per block of the streamed support softmax: it holds (U·T, 8192) scores at a time,
# 9 MiB for 32 users × 10 positions, where the whole (U, T, N) scores of 1M items, their
# softmax and its gradient would be 1.3 GB each. A fixed count of items, not of scores, so
# that a user's result does not depend on the batch it is adapted in.
SOFTMAX_CHUNK_ITEMS = 8192


class _LogPartition(torch.autograd.Function):
    """log Σ_i exp(s · v_i) of each state s over every item vector v_i, ``chunk_items`` items
    at a time (an online log-sum-exp); its gradient with respect to s, the softmax-weighted
    mean item vector, is accumulated in the same pass, so the scores are computed only once."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, states: torch.Tensor, vectors: torch.Tensor, chunk_items: int
    ) -> torch.Tensor:
        peak = states.new_full(states.shape[:1], float("-inf"))
        total = states.new_zeros(states.shape[:1])
        expected = torch.zeros_like(states)
        for start in range(0, len(vectors), chunk_items):
            block = vectors[start : start + chunk_items]
            scores = states @ block.T
            new_peak = torch.maximum(peak, scores.amax(dim=1))
            rescale = torch.exp(peak - new_peak)  # 0 on the first block (peak is -inf)
            weights = torch.exp(scores - new_peak[:, None])
            total = total * rescale + weights.sum(dim=1)
            expected = expected * rescale[:, None] + weights @ block
            peak = new_peak
        ctx.save_for_backward(expected / total[:, None])
        return peak + torch.log(total)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        # the saved mean is a constant: a graph of this gradient (create_graph=True, for a
        # second derivative) would silently miss the softmax's curvature
        if torch.is_grad_enabled():
            raise RuntimeError("the streamed support loss is first order: no create_graph")
        (expected,) = ctx.saved_tensors
        return grad[:, None] * expected, None, None


def streamed_support_loss_fn(model: UserModel, batch: EpisodeBatch, chunk_items: int) -> LossFn:
    """`support_loss_fn`'s losses, with the catalogue softmax taken ``chunk_items`` items at
    a time; for first-order test-time adaptation: no gradient reaches the item side, and a
    gradient with ``create_graph`` (for a second derivative) is refused."""
    targets = batch.support[:, 1:]
    with torch.no_grad():
        vectors = model.item_vectors()
        target_vectors = vectors[targets]
    positions = torch.arange(targets.shape[1], device=targets.device)
    real = positions[None, :] < (batch.support_lengths - 1)[:, None]

    def support_loss(fast: FastWeights) -> torch.Tensor:
        with bind_fast_weights(model.lora_layers, fast):
            states = model.states(batch.support, batch.support_lengths)[:, :-1]
        flat = states.reshape(-1, states.shape[-1])
        log_partition = _LogPartition.apply(flat, vectors, chunk_items).view(targets.shape)
        # cross-entropy of item t+1 from the state after item t; padding positions count 0
        per_position = log_partition - (states * target_vectors).sum(dim=-1)
        per_position = torch.where(real, per_position, torch.zeros_like(per_position))
        return per_position.sum(dim=1) / real.sum(dim=1).clamp(min=1)

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
    """Each user's fast weights after ``steps`` first-order support steps, detached; the
    support loss streams the catalogue (`streamed_support_loss_fn`)."""
    lr, proximal = inner_loop_settings(meta, rates)
    # leaves of their own: works under no_grad and with a frozen model (a distillation teacher)
    start = {
        name: (a.detach().requires_grad_(), b.detach().requires_grad_())
        for name, (a, b) in initial_fast_weights(model.lora_layers, len(batch.support)).items()
    }
    with torch.enable_grad():
        loss = streamed_support_loss_fn(model, batch, SOFTMAX_CHUNK_ITEMS)
        fast = adapt(loss, start, steps, lr, False, proximal)
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
