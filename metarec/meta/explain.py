"""Why the adapted model recommends an item: leave-one-out over the history, and adaptation.

For a user with history h (T items) and a recommended item r, history item j contributes
score(r | h) − score(r | h without j), each score taken after adapting on the history it is
given (removing j changes both the adaptation and the state the score is read from). The
adaptation's share is score(r | h) − score(r | h, no inner steps). The T leave-one-out
histories are adapted together, as one batch of users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec.errors import MetarecError
from metarec.meta.recommender import LLMRecommender


@dataclass
class Explanation:
    """One recommended item: its score, adaptation's share of it, and each history item's."""

    item: int
    score: float
    adaptation_delta: float
    contributions: np.ndarray  # (T,) per history position, oldest first


def explain(method: LLMRecommender, history: np.ndarray, items: np.ndarray) -> list[Explanation]:
    """Explanations of ``items`` (R,) item indices for the user of ``history`` (T,), T >= 2."""
    if len(history) < 2:
        raise MetarecError("an explanation needs a history of at least 2 items")
    variants = [history] + [np.delete(history, j) for j in range(len(history))]
    # a batch of variants at a time, keeping only the R items' columns: a long history's
    # (1 + T, n_items) scores are never held whole (the batches are those score makes)
    size = method.batch_size
    batches = [variants[start : start + size] for start in range(0, len(variants), size)]
    scores = np.concatenate([method.score(batch)[:, items] for batch in batches])  # (1 + T, R)
    unadapted = LLMRecommender(method.model, method.meta, method.rates, 0).score([history])
    return [
        Explanation(
            item=int(item),
            score=float(scores[0, column]),
            adaptation_delta=float(scores[0, column] - unadapted[0, item]),
            contributions=scores[0, column] - scores[1:, column],
        )
        for column, item in enumerate(items)
    ]


def explained_items(
    method: LLMRecommender,
    history: np.ndarray,
    items: np.ndarray,
    titles: list[str],
    item_ids: np.ndarray,
) -> list[dict]:
    """`explain` as JSON-ready dicts with raw ids and titles, contributors best first.

    ``item_ids`` (n_items,) raw ids by item index, integers or strings: each is written as
    the Python int or str it is.
    """
    answer = []
    history_ids = item_ids[history].tolist()
    explained = zip(explain(method, history, items), item_ids[items].tolist(), strict=True)
    for rank, (explanation, item_id) in enumerate(explained, start=1):
        order = np.argsort(-explanation.contributions, kind="stable")
        answer.append(
            {
                "rank": rank,
                "item_id": item_id,
                "title": titles[explanation.item],
                "score": explanation.score,
                "adaptation_delta": explanation.adaptation_delta,
                "contributors": [
                    {
                        "item_id": history_ids[j],
                        "title": titles[history[j]],
                        "contribution": float(explanation.contributions[j]),
                    }
                    for j in order
                ],
            }
        )
    return answer
