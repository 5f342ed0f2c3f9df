"""Episode losses of the user model, and adapt-then-score for a batch of users.

The support loss is next-item prediction inside the support; the query loss ranks the
query items from the state after the last support item, with the support excluded, as
the ``coldstart`` protocol does at test time. In training on ``coldstart-items``, neither
ranks the held-out items (their logits masked), so no gradient reaches them.

With ``meta.support_negatives`` set and a larger catalogue, the support loss's softmax is
estimated on that many items drawn uniformly (`sample_negatives`): fresh ones for each
training step, from the checkpointed torch generator, and one fixed set at test time
(``TEST_NEGATIVES_SEED``), so a user's adapted weights do not depend on the batch or the job.

Otherwise test-time adaptation (`adapt_batch`) takes the support loss with its softmax over
the catalogue streamed (`streamed_support_loss_fn`): ``SOFTMAX_CHUNK_ITEMS`` items at a
time, so its memory does not grow with the catalogue. Its time still does: every support
position of every inner step is normalised over every item.
"""

from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx

from metarec.data.episodes import EpisodeBatch
from metarec.device import to_numpy
from metarec.meta.algorithms import MetaConfig, MetaSGDRates, inner_loop_settings
from metarec.meta.inner_loop import LossFn, adapt
from metarec.meta.losses import (
    mean_over_support_positions,
    next_item_losses,
    query_losses,
    sampled_next_item_losses,
)
from metarec.models.lora import FastWeights, bind_fast_weights, initial_fast_weights
from metarec.models.user_model import UserModel


def last_states(model: UserModel, batch: EpisodeBatch, fast: FastWeights) -> torch.Tensor:
    """(U, item_dim) state after each user's last support item, under fast weights."""
    with bind_fast_weights(model.fast_layers, fast):
        states = model.states(batch.support, batch.support_lengths)
    return states[torch.arange(len(states), device=states.device), batch.support_lengths - 1]


# the seed of the one set of negatives every test-time adaptation draws
TEST_NEGATIVES_SEED = 0


def sample_negatives(
    n_items: int,
    count: int | None,
    unranked: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """(count,) distinct items drawn uniformly from the catalogue's ranked ones (all but
    ``unranked``, (N,) bool), on the CPU so that a seed gives the same items on any device;
    None when ``count`` is None or the draw would hold every other item (the whole
    softmax is then exact and no dearer). ``generator`` None: torch's global one."""
    if count is None:
        return None
    pool = torch.arange(n_items) if unranked is None else (~unranked.cpu()).nonzero()[:, 0]
    if count >= len(pool) - 1:
        return None
    return pool[torch.randperm(len(pool), generator=generator)[:count]]


def adaptation_negatives(model: UserModel, meta: MetaConfig) -> torch.Tensor | None:
    """The fixed negatives (or None) of test-time adaptation (``TEST_NEGATIVES_SEED``)."""
    n_items = model.id_embedding.num_embeddings
    generator = torch.Generator().manual_seed(TEST_NEGATIVES_SEED)
    negatives = sample_negatives(n_items, meta.support_negatives, None, generator)
    return None if negatives is None else negatives.to(model.id_embedding.weight.device)


def support_loss_fn(
    model: UserModel,
    batch: EpisodeBatch,
    unranked: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
) -> LossFn:
    """Next-item loss inside each user's support: its softmax over the catalogue, or
    estimated on ``negatives`` ((M,) items from `sample_negatives`, same ``unranked``);
    ``unranked``: (N,) bool items left out of the softmax (training's held-out items)."""
    n_items = model.id_embedding.num_embeddings
    pool_size = n_items  # the ranked items; counted only when sampling (a host sync)
    if negatives is not None and unranked is not None:
        pool_size -= int(unranked.sum())

    def support_loss(fast: FastWeights) -> torch.Tensor:
        with bind_fast_weights(model.fast_layers, fast):
            states = model.states(batch.support, batch.support_lengths)
        if negatives is not None:
            targets = batch.support[:, 1:]
            states = states[:, :-1]
            positive = (states * model.item_vectors(targets)).sum(dim=-1)
            negative = states @ model.item_vectors(negatives).T
            return sampled_next_item_losses(
                positive, negative, negatives, targets, batch.support_lengths, pool_size
            )
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

    def support_loss(fast: FastWeights) -> torch.Tensor:
        with bind_fast_weights(model.fast_layers, fast):
            states = model.states(batch.support, batch.support_lengths)[:, :-1]
        flat = states.reshape(-1, states.shape[-1])
        log_partition = _LogPartition.apply(flat, vectors, chunk_items).view(targets.shape)
        # cross-entropy of item t+1 from the state after item t
        per_position = log_partition - (states * target_vectors).sum(dim=-1)
        return mean_over_support_positions(per_position, batch.support_lengths)

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
    start: FastWeights | None = None,
    lr_scale: float = 1.0,
) -> FastWeights:
    """Each user's fast weights after ``steps`` first-order support steps from ``start``
    (None: the meta-learned initialisation), the inner learning rate(s) times ``lr_scale``;
    detached. The support loss takes the fixed negatives (`adaptation_negatives`) or streams the
    catalogue (`streamed_support_loss_fn`)."""
    lr, proximal = inner_loop_settings(meta, rates)
    if isinstance(lr, dict):
        lr = {name: (a * lr_scale, b * lr_scale) for name, (a, b) in lr.items()}
    else:
        lr = lr * lr_scale
    if start is None:
        start = initial_fast_weights(model.fast_layers, len(batch.support))
    # leaves of their own: works under no_grad and with a frozen model (a distillation teacher)
    start = {
        name: (a.detach().requires_grad_(), b.detach().requires_grad_())
        for name, (a, b) in start.items()
    }
    negatives = adaptation_negatives(model, meta)
    with torch.enable_grad():
        if negatives is None:
            loss = streamed_support_loss_fn(model, batch, SOFTMAX_CHUNK_ITEMS)
        else:
            loss = support_loss_fn(model, batch, negatives=negatives)
        fast = adapt(loss, start, steps, lr, False, proximal)
    return {name: (a.detach(), b.detach()) for name, (a, b) in fast.items()}


def episode_losses(
    model: UserModel, batch: EpisodeBatch, meta: MetaConfig, rates: MetaSGDRates | None
) -> dict[str, float]:
    """Mean support and query losses of a batch, before and after adaptation."""
    excluded = batch.support_excluded(model.id_embedding.num_embeddings)
    start = initial_fast_weights(model.fast_layers, len(batch.support))
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
