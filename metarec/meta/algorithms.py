"""Outer (meta) objectives: what to backpropagate into the shared LoRA initialisation.

Each algorithm adapts a batch of users from the initialisation φ₀ with the batched inner
loop, then returns a scalar whose gradient with respect to φ₀ is its meta-gradient:

- ``maml``: query loss after adaptation, differentiated through the inner steps
  (second order, ``create_graph=True``);
- ``fomaml``: the same query loss, inner gradients treated as constants (first order);
- ``metasgd``: ``maml`` with a learned learning rate per LoRA weight (`MetaSGDRates`);
- ``proximal``: first order, inner loss plus λ·½‖φ − φ₀‖², the regularised inner problem
  of iMAML (without iMAML's implicit gradient): adapted weights stay near the init;
- ``reptile``: mean_u ½‖φ₀ − φ_u‖² with the adapted weights held constant, whose gradient
  φ₀ − mean_u φ_u makes an SGD step of size ε the Reptile update φ₀ ← φ₀ + ε (mean_u φ_u − φ₀)
  (with Adam, as the recipe uses, it is the common "Reptile with Adam" variant);
  plus the query loss at the (constant) adapted weights, which trains only what is not
  adapted (the item side), as the query loss does in the other algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metarec.errors import ConfigError
from metarec.meta.inner_loop import LossFn, adapt
from metarec.models.lora import BatchedLoRALinear, FastWeights


@dataclass(frozen=True)
class Algorithm:
    """What the code branches on for one meta-learning algorithm (see the list above)."""

    name: str
    second_order: bool = False  # differentiates through the inner steps (create_graph=True)
    learned_rates: bool = False  # one learned inner learning rate per LoRA weight (Meta-SGD)
    proximal: bool = False  # inner loss plus λ·½‖φ − φ₀‖²
    reptile: bool = False  # outer objective: the Reptile surrogate plus the constant query loss


ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("maml", second_order=True),
        Algorithm("fomaml"),
        Algorithm("metasgd", second_order=True, learned_rates=True),
        Algorithm("proximal", proximal=True),
        Algorithm("reptile", reptile=True),
    )
}


@dataclass
class MetaConfig:
    """The meta-learning algorithm and its inner loop."""

    algorithm: str = "fomaml"
    inner_steps: int = 5
    inner_lr: float = 0.01
    proximal_strength: float = 0.1
    # the support loss's softmax over this many sampled items instead of the catalogue
    # (`metarec.meta.losses.sampled_next_item_losses`), where the catalogue is larger; null:
    # the whole catalogue. Its cost per support position then stops growing with the items.
    # The ordinary stage's next-item objective (pretrain_objective: next_item) is the same
    # loss and samples too; the query loss always ranks the whole catalogue.
    support_negatives: int | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(
                f"meta.algorithm {self.algorithm!r}: expected one of {tuple(ALGORITHMS)}"
            )
        if self.inner_steps < 0 or self.inner_lr <= 0:
            raise ConfigError("meta.inner_steps must be >= 0 and meta.inner_lr > 0")
        if self.support_negatives is not None and self.support_negatives < 2:
            raise ConfigError(
                f"meta.support_negatives {self.support_negatives}: expected null (the whole "
                "catalogue) or at least 2 sampled items"
            )

    @property
    def properties(self) -> Algorithm:
        """What the code branches on for this config's algorithm."""
        return ALGORITHMS[self.algorithm]


class MetaSGDRates(nn.Module):
    """One learnable inner learning rate per LoRA weight (Li et al., 2017), all start at lr."""

    def __init__(self, layers: dict[str, BatchedLoRALinear], inner_lr: float) -> None:
        super().__init__()
        self.names = list(layers)
        self.rates = nn.ParameterList()
        for layer in layers.values():
            self.rates.append(nn.Parameter(torch.full_like(layer.lora_A.weight, inner_lr)))
            self.rates.append(nn.Parameter(torch.full_like(layer.lora_B.weight, inner_lr)))

    def by_name(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            name: (self.rates[2 * i], self.rates[2 * i + 1]) for i, name in enumerate(self.names)
        }


def inner_loop_settings(
    config: MetaConfig, rates: MetaSGDRates | None
) -> tuple[float | dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """The inner loop's learning rate(s) and proximal strength for ``config``'s algorithm."""
    lr = rates.by_name() if rates is not None else config.inner_lr
    proximal = config.proximal_strength if config.properties.proximal else 0.0
    return lr, proximal


def reptile_surrogate(start: FastWeights, adapted: FastWeights) -> torch.Tensor:
    """mean_u ½‖φ₀ − φ_u‖² over weights, φ_u held constant; ``start`` holds (U, ·, ·) views.

    Its gradient is φ₀ − mean_u φ_u. Written as a mean over users (not ½‖φ₀ − mean_u φ_u‖²,
    which has the same gradient) so that users sharded over ranks average correctly.
    """
    first_a, _ = next(iter(start.values()))
    total = torch.zeros((), device=first_a.device)
    for name, (start_a, start_b) in start.items():
        adapted_a, adapted_b = adapted[name]
        total = total + 0.5 * ((start_a - adapted_a.detach()) ** 2).sum(dim=(1, 2)).mean()
        total = total + 0.5 * ((start_b - adapted_b.detach()) ** 2).sum(dim=(1, 2)).mean()
    return total


def meta_objective(
    config: MetaConfig,
    support_loss: LossFn,
    query_loss: LossFn,
    start: FastWeights,
    rates: MetaSGDRates | None = None,
) -> tuple[torch.Tensor, FastWeights]:
    """The scalar to backpropagate for one batch of users, and their adapted weights."""
    algorithm = config.properties
    if algorithm.learned_rates and rates is None:
        raise ValueError(f"{algorithm.name} needs MetaSGDRates")
    lr, proximal = inner_loop_settings(config, rates)
    adapted = adapt(support_loss, start, config.inner_steps, lr, algorithm.second_order, proximal)
    if algorithm.reptile:
        constant = {name: (a.detach(), b.detach()) for name, (a, b) in adapted.items()}
        return reptile_surrogate(start, adapted) + query_loss(constant).mean(), adapted
    return query_loss(adapted).mean(), adapted
