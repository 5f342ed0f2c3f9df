"""The simulated user's response model, fitted on meta-train users only.

What a simulated user does with a shown item:

- **click** with probability σ(a·s + b·log(1 + popularity) + c), where s is the item's
  ItemKNN affinity to the user's profile (mean cosine similarity, over meta-train users'
  co-occurrences, to the profile's items) — a logistic calibration fitted on meta-train
  users: each one's first 80% of items is the profile, the rest are positives, and
  ``negatives_per_positive`` unseen items per positive are negatives (so the base rate of
  the calibration is a modelling choice, not a measurement). Each user is left out of the
  similarities and popularity their own examples are scored with, as the held-out users
  the simulator serves are;
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
from metarec.errors import ConfigError, MetarecError


@dataclass
class ResponseFitConfig:
    negatives_per_positive: int = 9  # the calibration's base click rate is ~1 / (1 + this)
    profile_share: float = 0.8  # of each meta-train user's items, in time order
    like_threshold: float = 4.0  # a rating at least this is a like
    like_prior_weight: float = 5.0  # pseudo-ratings pulling rare items to the global like rate
    seed: int = 0

    def __post_init__(self) -> None:
        if self.negatives_per_positive < 1:
            raise ConfigError(
                f"response.negatives_per_positive {self.negatives_per_positive}: expected >= 1"
            )
        if not 0.0 < self.profile_share < 1.0:
            raise ConfigError(f"response.profile_share {self.profile_share}: expected (0, 1)")
        if self.like_prior_weight <= 0:
            raise ConfigError(f"response.like_prior_weight {self.like_prior_weight}: expected > 0")


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


def co_occurrences(sequences: list[np.ndarray], n_items: int) -> np.ndarray:
    """(N, N) how many users hold both items (diagonal: how many hold each), float32."""
    incidence = np.zeros((len(sequences), n_items), dtype=np.float32)
    for user, items in enumerate(sequences):
        incidence[user, items] = 1.0
    return incidence.T @ incidence


def cosine(co_counts: np.ndarray, row_counts: np.ndarray, column_counts: np.ndarray) -> np.ndarray:
    """Cosine similarities from a block of co-occurrence counts and each side's counts
    (items nobody holds: 0)."""
    norms = np.sqrt(np.outer(row_counts, column_counts))
    return np.divide(co_counts, norms, out=np.zeros_like(co_counts), where=norms > 0)


def item_similarities(co_counts: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarity of items' user columns, zero diagonal (float32)."""
    counts = np.diag(co_counts).copy()
    similarities = cosine(co_counts, counts, counts)
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
        try:
            tensors = load_file(str(weights_path))
            meta = json.loads(meta_path.read_text())
            return cls(
                tensors["similarities"], tensors["calibration"], tensors["like_rates"],
                tensors["popularity"], tensors["genres"], meta["genre_names"],
                ResponseFitConfig(**meta["fit"]),
            )  # fmt: skip
        except KeyError as err:
            raise MetarecError(f"{folder}: the saved response model lacks {err}") from None
        except (OSError, ValueError, TypeError) as err:
            raise MetarecError(f"{folder}: cannot read the response model ({err})") from None


def calibration_examples(
    train_sequences: list[np.ndarray], co_counts: np.ndarray, config: ResponseFitConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The calibration's examples: features (n, 2) (affinity, log popularity), labels (n,),
    and the user row and item of each example (n,), (n,)."""
    n_items = len(co_counts)
    counts = np.diag(co_counts).copy()
    rng = np.random.default_rng(config.seed)
    rows, labels, users, example_items = [], [], [], []
    for user, items in enumerate(train_sequences):
        cut = int(config.profile_share * len(items))
        if cut < 1 or cut == len(items):
            continue
        profile, positives = items[:cut], items[cut:]
        unseen = np.setdiff1d(np.arange(n_items), items)
        negatives = rng.choice(unseen, size=len(positives) * config.negatives_per_positive)
        candidates = np.concatenate([positives, negatives])
        # Leave the user out: their own co-occurrences would inflate their positives'
        # affinity and popularity (and not the negatives'), as they never do for the
        # held-out users the simulator serves.
        own = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        block = co_counts[np.ix_(candidates, profile)] - own[:, None]
        affinity = cosine(block, counts[candidates] - own, counts[profile] - 1.0).mean(1)
        rows.append(np.column_stack([affinity, np.log1p(counts[candidates] - own)]))
        labels.append(own)
        users.append(np.full(len(candidates), user))
        example_items.append(candidates)
    if not rows:
        raise MetarecError("response model: no meta-train user has enough items to calibrate")
    return tuple(np.concatenate(part) for part in (rows, labels, users, example_items))


def fit_response_model(
    train_sequences: list[np.ndarray],
    train_ratings: list[np.ndarray],
    item_text: list[str],
    config: ResponseFitConfig,
) -> ResponseModel:
    """Fit every part of the response model on the meta-train users' sequences and ratings."""
    n_items = len(item_text)
    co_counts = co_occurrences(train_sequences, n_items)
    similarities = item_similarities(co_counts)
    popularity = np.diag(co_counts).astype(np.int64)
    genres, genre_names = item_genres(item_text)
    features, labels, _, _ = calibration_examples(train_sequences, co_counts, config)
    calibration = fit_logistic(features, labels)
    items, ratings = np.concatenate(train_sequences), np.concatenate(train_ratings)
    rated = ~np.isnan(ratings)
    likes = np.bincount(items[rated], weights=ratings[rated] >= config.like_threshold,
                        minlength=n_items)  # fmt: skip
    rating_counts = np.bincount(items[rated], minlength=n_items)
    overall = likes.sum() / max(1, rating_counts.sum())
    prior = config.like_prior_weight
    like_rates = (likes + prior * overall) / (rating_counts + prior)
    return ResponseModel(
        similarities, calibration, like_rates, popularity, genres, genre_names, config
    )
