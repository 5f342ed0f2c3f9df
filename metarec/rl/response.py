"""The simulated user's response model, fitted on meta-train users only.

What a simulated user does with a shown item:

- **click** with probability σ(a·s + b·log(1 + popularity) + c), where s is the item's
  ItemKNN affinity to the user's profile (mean cosine similarity, over meta-train users'
  co-occurrences, to the profile's items) — a logistic calibration fitted on meta-train
  users: each one's first 80% of items is the profile, the rest are positives, and
  ``negatives_per_positive`` unseen items per positive are negatives (so the base rate of
  the calibration is a modelling choice, not a measurement);
- **like** it (rating ≥ 4) once clicked with the item's smoothed share of ratings ≥ 4 among
  meta-train users.

The simulator (``metarec/rl/env.py``) adds boredom and leaving on top. Every fitted number
is saved as safetensors beside its JSON description.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from metarec.atomic import atomic_dir
from metarec.errors import MetarecError


@dataclass
class ResponseFitConfig:
    negatives_per_positive: int = 9  # the calibration's base click rate is ~1 / (1 + this)
    profile_share: float = 0.8  # of each meta-train user's items, in time order
    like_threshold: float = 4.0  # a rating at least this is a like
    like_prior_weight: float = 5.0  # pseudo-ratings pulling rare items to the global like rate
    seed: int = 0


def item_genres(item_text: list[str]) -> tuple[np.ndarray, list[str]]:
    """(N, G) 0/1 genre matrix from "title | genre, genre" texts, and the genre names."""
    per_item = [
        [g.strip() for g in text.partition(" | ")[2].split(",") if g.strip()] for text in item_text
    ]
    names = sorted({genre for genres in per_item for genre in genres})
    column = {name: position for position, name in enumerate(names)}
    matrix = np.zeros((len(item_text), len(names)), dtype=np.float32)
    for item, genres in enumerate(per_item):
        matrix[item, [column[g] for g in genres]] = 1.0
    return matrix, names


def cosine_similarities(sequences: list[np.ndarray], n_items: int) -> np.ndarray:
    """(N, N) cosine similarity of items' user columns, zero diagonal (float32)."""
    incidence = np.zeros((len(sequences), n_items), dtype=np.float32)
    for user, items in enumerate(sequences):
        incidence[user, items] = 1.0
    co_counts = incidence.T @ incidence
    norms = np.sqrt(np.diag(co_counts)).copy()
    norms[norms == 0] = 1.0
    similarities = co_counts / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarities, 0.0)
    return similarities


def fit_logistic(features: np.ndarray, labels: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Weights (F + 1,) of a logistic regression (last one the intercept), by Newton's method
    with a tiny ridge for stability. ``features`` (n, F), ``labels`` (n,) in {0, 1}."""
    design = np.column_stack([features, np.ones(len(features))])
    weights = np.zeros(design.shape[1])
    for _ in range(iterations):
        probabilities = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (probabilities - labels) + 1e-6 * weights
        curvature = (design * (probabilities * (1 - probabilities))[:, None]).T @ design
        step = np.linalg.solve(curvature + 1e-6 * np.eye(len(weights)), gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


@dataclass
class ResponseModel:
    """The fitted numbers: item similarities, calibration, like rates, genres, popularity."""

    similarities: np.ndarray  # (N, N) float32
    calibration: np.ndarray  # (3,): affinity weight, log-popularity weight, intercept
    like_rates: np.ndarray  # (N,)
    popularity: np.ndarray  # (N,) meta-train users holding each item
    genres: np.ndarray  # (N, G) 0/1
    genre_names: list[str]
    fit: ResponseFitConfig

    def affinity(self, profile: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(len(items),) mean similarity of each item to the ``profile`` items."""
        return self.similarities[np.ix_(items, profile)].mean(axis=1)

    def click_probabilities(self, profile: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(len(items),) calibrated probability that a user with ``profile`` clicks each item."""
        logits = (
            self.calibration[0] * self.affinity(profile, items)
            + self.calibration[1] * np.log1p(self.popularity[items])
            + self.calibration[2]
        )
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, folder: Path) -> None:
        with atomic_dir(folder) as staging:
            save_file(
                {
                    "similarities": self.similarities,
                    "calibration": self.calibration.astype(np.float64),
                    "like_rates": self.like_rates.astype(np.float64),
                    "popularity": self.popularity.astype(np.int64),
                    "genres": self.genres,
                },
                str(staging / "response.safetensors"),
            )
            (staging / "response.json").write_text(
                json.dumps(
                    {
                        "calibration": {
                            "affinity_weight": float(self.calibration[0]),
                            "log_popularity_weight": float(self.calibration[1]),
                            "intercept": float(self.calibration[2]),
                        },
                        "mean_like_rate": float(self.like_rates.mean()),
                        "genre_names": self.genre_names,
                        "fit": asdict(self.fit),
                    },
                    indent=2,
                )
            )

    @classmethod
    def load(cls, folder: Path) -> ResponseModel:
        weights_path, meta_path = folder / "response.safetensors", folder / "response.json"
        for path in (weights_path, meta_path):
            if not path.is_file():
                raise MetarecError(f"{path}: missing; expected a saved response model")
        tensors = load_file(str(weights_path))
        meta = json.loads(meta_path.read_text())
        return cls(
            tensors["similarities"], tensors["calibration"], tensors["like_rates"],
            tensors["popularity"], tensors["genres"], meta["genre_names"],
            ResponseFitConfig(**meta["fit"]),
        )  # fmt: skip


def fit_response_model(
    train_sequences: list[np.ndarray],
    train_ratings: list[np.ndarray],
    item_text: list[str],
    config: ResponseFitConfig,
) -> ResponseModel:
    """Fit every part of the response model on the meta-train users' sequences and ratings."""
    n_items = len(item_text)
    similarities = cosine_similarities(train_sequences, n_items)
    popularity = np.bincount(
        np.concatenate([np.unique(s) for s in train_sequences]), minlength=n_items
    )
    genres, genre_names = item_genres(item_text)
    probe = ResponseModel(
        similarities, np.zeros(3), np.zeros(n_items), popularity, genres, genre_names, config
    )
    rng = np.random.default_rng(config.seed)
    rows, labels = [], []
    for items in train_sequences:
        cut = int(config.profile_share * len(items))
        if cut < 1 or cut == len(items):
            continue
        profile, positives = items[:cut], items[cut:]
        unseen = np.setdiff1d(np.arange(n_items), items)
        negatives = rng.choice(unseen, size=len(positives) * config.negatives_per_positive)
        candidates = np.concatenate([positives, negatives])
        rows.append(
            np.column_stack([probe.affinity(profile, candidates), np.log1p(popularity[candidates])])
        )
        labels.append(np.r_[np.ones(len(positives)), np.zeros(len(negatives))])
    if not rows:
        raise MetarecError("response model: no meta-train user has enough items to calibrate")
    calibration = fit_logistic(np.concatenate(rows), np.concatenate(labels))
    items, ratings = np.concatenate(train_sequences), np.concatenate(train_ratings)
    rated = ~np.isnan(ratings)
    likes = np.bincount(items[rated], weights=ratings[rated] >= config.like_threshold,
                        minlength=n_items)  # fmt: skip
    counts = np.bincount(items[rated], minlength=n_items)
    overall = likes.sum() / max(1, counts.sum())
    like_rates = (likes + config.like_prior_weight * overall) / (counts + config.like_prior_weight)
    return ResponseModel(
        similarities, calibration, like_rates, popularity, genres, genre_names, config
    )
