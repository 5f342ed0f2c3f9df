"""The inner loop: a few gradient steps on each user's support loss, all users at once.

Users' fast weights are independent slices of stacked tensors, so the gradient of the
summed per-user losses with respect to the stack is, slice by slice, each user's own
gradient: one backward pass adapts the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from metarec.models.lora import FastWeights

LossFn = Callable[[FastWeights], torch.Tensor]
LearningRate = float | dict[str, tuple[torch.Tensor, torch.Tensor]]


def proximal_penalty(fast: FastWeights, anchor: FastWeights) -> torch.Tensor:
    """(U,) squared distance ½‖φ_u − φ_0‖² between each user's fast weights and the anchor."""
    total = 0.0
    for name, (fast_a, fast_b) in fast.items():
        anchor_a, anchor_b = anchor[name]
        total = total + 0.5 * ((fast_a - anchor_a) ** 2).sum(dim=(1, 2))
        total = total + 0.5 * ((fast_b - anchor_b) ** 2).sum(dim=(1, 2))
    return total


def sgd_step(fast: FastWeights, grads: FastWeights, lr: LearningRate) -> FastWeights:
    """φ ← φ − lr ⊙ ∇φ for every (U, ·, ·) tensor; ``lr`` is a float or per-tensor rates."""
    stepped = {}
    for name, (fast_a, fast_b) in fast.items():
        grad_a, grad_b = grads[name]
        lr_a, lr_b = lr[name] if isinstance(lr, dict) else (lr, lr)
        stepped[name] = (fast_a - lr_a * grad_a, fast_b - lr_b * grad_b)
    return stepped


def adapt(
    support_loss: LossFn,
    start: FastWeights,
    steps: int,
    lr: LearningRate,
    create_graph: bool,
    proximal_strength: float = 0.0,
) -> FastWeights:
    """Run ``steps`` SGD steps on ``support_loss`` (fast weights → (U,) losses) from ``start``.

    ``create_graph=True`` keeps the graph of every step (second-order MAML); otherwise the
    gradients are constants and the result depends on the initialisation only through
    ``start`` (first-order). ``proximal_strength`` λ adds λ·½‖φ_u − start_u‖² to each loss.
    """
    fast = start
    names = list(start)
    for _ in range(steps):
        losses = support_loss(fast)
        if proximal_strength > 0:
            losses = losses + proximal_strength * proximal_penalty(fast, start)
        flat = [tensor for name in names for tensor in fast[name]]
        grads = torch.autograd.grad(losses.sum(), flat, create_graph=create_graph)
        paired = {name: (grads[2 * i], grads[2 * i + 1]) for i, name in enumerate(names)}
        fast = sgd_step(fast, paired, lr)
    return fast
