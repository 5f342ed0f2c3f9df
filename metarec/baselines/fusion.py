"""Score fusion: several fitted recommenders combined into one, learned on validation users.

Members' scores live on different scales (an LLM's logits, item-kNN's similarity sums,
popularity counts), so each user's scores are first standardised over the catalogue
(z-scores). ``fusion`` then takes the weighted sum whose weights, on a grid over the
simplex, give the best validation ndcg@10; ``fusion-stack`` learns the weights as a
logistic regression of "is this item relevant" on the members' z-scores (a stacking
model), class-balanced, over every non-history item of every validation user.

Learning holds every member's scores for the validation users at once, (M, V, N), so at
most ``max_valid_users`` of them (the first, in split order) are used: at 27k items and
four members that is 0.9 GB.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from metarec.data.splits import UserCase
from metarec.errors import ConfigError
from metarec.eval.metrics import metrics_at_k
from metarec.eval.ranking import case_ranks
from metarec.eval.recommender import Recommender


@dataclass
class FusionConfig:
    members: list[str] = field(default_factory=lambda: ["meta-lora", "itemknn", "sasrec", "pop"])
    grid_step: float = 0.1  # fusion: weights are multiples of this, summing to 1
    max_valid_users: int = 1000


def zscores(scores: np.ndarray) -> np.ndarray:
    """(B, N) scores standardised per row; a constant row becomes zeros."""
    mean = scores.mean(axis=1, keepdims=True)
    spread = scores.std(axis=1, keepdims=True)
    return np.divide(scores - mean, spread, out=np.zeros_like(scores), where=spread > 0)


def simplex_grid(n_members: int, step: float) -> np.ndarray:
    """(G, M) every weight vector with entries in multiples of ``step`` that sum to 1."""
    units = round(1 / step)
    rows = [
        combination
        for combination in itertools.product(range(units + 1), repeat=n_members)
        if sum(combination) == units
    ]
    return np.array(rows, dtype=np.float64) / units


def validation_ndcg(fused: np.ndarray, cases: list[UserCase]) -> float:
    """Mean ndcg@10 of (V, N) fused scores over validation ``cases``."""
    return float(metrics_at_k(case_ranks(fused, cases), 10)["ndcg@10"].mean())


def grid_weights(normalised: np.ndarray, cases: list[UserCase], step: float) -> np.ndarray:
    """(M,) simplex weights of (M, V, N) member z-scores with the best validation ndcg@10.

    Ties go to the first grid point, so equal members keep lexicographic order.
    """
    best, chosen = -1.0, None
    for weights in simplex_grid(len(normalised), step):
        quality = validation_ndcg(np.tensordot(weights, normalised, axes=1), cases)
        if quality > best:
            best, chosen = quality, weights
    return chosen


def stacking_weights(normalised: np.ndarray, cases: list[UserCase]) -> np.ndarray:
    """(M,) logistic-regression coefficients of relevance on (M, V, N) member z-scores.

    Every non-history item of every validation user is an example; positives and
    negatives get equal total weight. Only the coefficients matter for ranking.
    """
    n_members, _, n_items = normalised.shape
    features, labels = [], []
    for row, case in enumerate(cases):
        keep = np.ones(n_items, dtype=bool)
        keep[case.history] = False
        label = np.zeros(n_items)
        label[case.relevant] = 1.0
        features.append(normalised[:, row, keep].T)
        labels.append(label[keep])
    x = torch.tensor(np.concatenate(features), dtype=torch.float64)
    y = torch.tensor(np.concatenate(labels), dtype=torch.float64)
    balance = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    coefficients = torch.zeros(n_members + 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([coefficients], max_iter=100, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        logits = x @ coefficients[:-1] + coefficients[-1]
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=balance)
        value = value + 1e-4 * (coefficients[:-1] ** 2).sum()  # keeps separable data finite
        value.backward()
        return value

    optimiser.step(loss)
    return coefficients.detach()[:-1].numpy()


class Fusion(Recommender):
    """Members combined by learned weights; ``stacking`` picks how they are learned."""

    def __init__(
        self,
        config: FusionConfig,
        members: dict[str, Recommender],
        stacking: bool = False,
        prefitted: set[str] | None = None,
    ) -> None:
        if len(members) < 2:
            raise ConfigError(f"fusion needs at least two members, got {list(members)}")
        self.config = config
        self.members = members
        self.stacking = stacking
        self.prefitted = prefitted if prefitted is not None else set()
        self.weights: dict[str, float] = {}

    def _normalised(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.stack(
            [zscores(m.score(histories).astype(np.float64)) for m in self.members.values()]
        )

    def fit(self, train_sequences: list[np.ndarray], n_items: int, valid: list[UserCase]) -> None:
        for name, member in self.members.items():
            if name not in self.prefitted:  # members shared with other methods are fitted once
                member.fit(train_sequences, n_items, valid)
                self.prefitted.add(name)
        if not valid:
            raise ConfigError("fusion learns its weights on validation users; this split has none")
        valid = valid[: self.config.max_valid_users]
        normalised = self._normalised([case.history for case in valid])
        if self.stacking:
            weights = stacking_weights(normalised, valid)
        else:
            weights = grid_weights(normalised, valid, self.config.grid_step)
        self.weights = dict(zip(self.members, weights.tolist(), strict=True))

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        weights = np.array(list(self.weights.values()))
        return np.tensordot(weights, self._normalised(histories), axes=1).astype(np.float32)
