"""The simulated user's response model, fitted on meta-train users only.

What a simulated user does with a shown item:

- **click** with probability σ(a·s + b·log(1 + popularity) + c), where s is the item's
  ItemKNN affinity to the user's profile (mean cosine similarity, over meta-train users'
  co-occurrences, to the profile's items; with ``neighbours`` set, only the item's that many
  most similar items count, the others 0) — a logistic calibration fitted on meta-train
  users: each one's first 80% of items is the profile, the rest are positives, and
  ``negatives_per_positive`` unseen items per positive are negatives (so the base rate of
  the calibration is a modelling choice, not a measurement). Each user is left out of the
  similarities and popularity their own examples are scored with, as the held-out users
  the simulator serves are (which items are neighbours is decided once, on all of them);
- **like** it (rating ≥ 4) once clicked with the item's smoothed share of ratings ≥ 4 among
  meta-train users.

The item×item similarities are sparse (each item's kept neighbours): co-occurrences are
counted a block of item rows at a time, so no N×N array is ever dense. The simulator
(``metarec/rl/env.py``) adds boredom and leaving on top. Every fitted number is saved as
safetensors beside its JSON description.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from metarec.atomic import atomic_dir
from metarec.baselines.itemknn import keep_top_k
from metarec.data.matrix import (
    ALL_PAIRS_MAX_ITEMS,
    BLOCK_FLOATS,
    co_occurrence_blocks,
    interaction_matrix,
)
from metarec.errors import ConfigError, MetarecError
from metarec.eval.beyond import user_counts


@dataclass
class ResponseFitConfig:
    negatives_per_positive: int = 9  # the calibration's base click rate is ~1 / (1 + this)
    profile_share: float = 0.8  # of each meta-train user's items, in time order
    like_threshold: float = 4.0  # a rating at least this is a like
    like_prior_weight: float = 5.0  # pseudo-ratings pulling rare items to the global like rate
    # each item's most similar items the affinity reads (None: every item, up to
    # ALL_PAIRS_MAX_ITEMS items)
    neighbours: int | None = None
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
        if self.neighbours is not None and self.neighbours < 1:
            raise ConfigError(f"response.neighbours {self.neighbours}: expected >= 1 or null")


def check_neighbours(
    n_items: int, neighbours: int | None, limit: int = ALL_PAIRS_MAX_ITEMS
) -> None:
    """Refuse every item as a neighbour of every other (a dense N×N) above ``limit`` items."""
    if neighbours is None and n_items > limit:
        raise ConfigError(
            f"response.neighbours is null (every item a neighbour): with {n_items:,} items the "
            f"simulator's similarities are a dense {n_items:,}×{n_items:,} matrix "
            f"({4 * n_items**2 / 1e9:.1f} GB); above {limit:,} items set response.neighbours "
            "(e.g. 100) in the RL config"
        )


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


def cosine(co_counts: np.ndarray, row_counts: np.ndarray, column_counts: np.ndarray) -> np.ndarray:
    """Cosine similarities from (R, C) co-occurrence counts, (R, 1) ``row_counts`` and (C,) or
    (R, C) ``column_counts`` of each side (items nobody holds: 0)."""
    norms = np.sqrt(row_counts * column_counts)
    return np.divide(co_counts, norms, out=np.zeros_like(norms), where=norms > 0)


def similarity_rows(
    block: np.ndarray, start: int, counts: np.ndarray, neighbours: int | None
) -> np.ndarray:
    """(B, N) cosine similarity of items start.. start + B − 1 to every item from their (B, N)
    co-occurrence ``block`` and the (N,) ``counts`` of users holding each item; zero for an
    item and itself, and with ``neighbours`` set outside each row's that many largest."""
    rows = np.arange(len(block))
    similarities = cosine(block, counts[start : start + len(block), None], counts)
    similarities[rows, start + rows] = 0.0
    return similarities if neighbours is None else keep_top_k(similarities, neighbours)


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

    similarities: sp.csr_matrix  # (N, N) float32: row i holds item i's kept neighbours
    calibration: np.ndarray  # (3,): affinity weight, log-popularity weight, intercept
    like_rates: np.ndarray  # (N,)
    popularity: np.ndarray  # (N,) meta-train users holding each item
    genres: np.ndarray  # (N, G) 0/1
    genre_names: list[str]
    fit: ResponseFitConfig

    def affinity(self, profile: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(len(items),) mean similarity of each item to the ``profile`` items (0 where
        a profile item is not among the item's kept neighbours)."""
        return self.similarities[items][:, profile].toarray().mean(axis=1)

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
                    "neighbour_indptr": self.similarities.indptr.astype(np.int64),
                    "neighbour_indices": self.similarities.indices.astype(np.int64),
                    "neighbour_similarities": self.similarities.data.astype(np.float32),
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
                saved_similarities(tensors), tensors["calibration"], tensors["like_rates"],
                tensors["popularity"], tensors["genres"], meta["genre_names"],
                ResponseFitConfig(**meta["fit"]),
            )  # fmt: skip
        except KeyError as err:
            raise MetarecError(f"{folder}: the saved response model lacks {err}") from None
        except (OSError, ValueError, TypeError) as err:
            raise MetarecError(f"{folder}: cannot read the response model ({err})") from None


def saved_similarities(tensors: dict[str, np.ndarray]) -> sp.csr_matrix:
    """The (N, N) similarities of a saved response model: its neighbours, or the dense
    ``similarities`` that models saved before neighbours were kept sparse hold."""
    if "similarities" in tensors:
        return sp.csr_matrix(tensors["similarities"])
    n_items = len(tensors["like_rates"])
    return sp.csr_matrix(
        (tensors["neighbour_similarities"], tensors["neighbour_indices"],
         tensors["neighbour_indptr"]),
        shape=(n_items, n_items),
    )  # fmt: skip


@dataclass
class CalibrationDraws:
    """The calibration's n examples before their features, users in order and each user's
    positives before its negatives; the profiles of the U training users laid end to end."""

    users: np.ndarray  # (n,) row of the example's user in the training sequences
    items: np.ndarray  # (n,)
    labels: np.ndarray  # (n,) 1.0: taken after the profile; 0.0: a drawn unseen item
    profile_items: np.ndarray  # (P,) the profiles user after user (none: a user without examples)
    profile_starts: np.ndarray  # (U + 1,) user u: profile_items[starts[u] : starts[u + 1]]

    def profiles(self, examples: np.ndarray, length: int) -> np.ndarray:
        """(len(examples), length) profile of each example's user, all of that ``length``."""
        starts = self.profile_starts[self.users[examples]]
        return self.profile_items[starts[:, None] + np.arange(length)]

    def profile_lengths(self, examples: np.ndarray) -> np.ndarray:
        """(len(examples),) length of each example's user's profile."""
        return np.diff(self.profile_starts)[self.users[examples]]


def calibration_draws(
    train_sequences: list[np.ndarray], n_items: int, config: ResponseFitConfig
) -> CalibrationDraws:
    """Each meta-train user's profile, positives and drawn negatives."""
    rng = np.random.default_rng(config.seed)
    users, items, labels, profiles = [], [], [], []
    for user, sequence in enumerate(train_sequences):
        cut = int(config.profile_share * len(sequence))
        if cut < 1 or cut == len(sequence):
            profiles.append(sequence[:0])
            continue
        profile, positives = sequence[:cut], sequence[cut:]
        # a mask, not np.setdiff1d: the same sorted items, hundreds of times faster
        unseen_mask = np.ones(n_items, dtype=bool)
        unseen_mask[sequence] = False
        unseen = np.flatnonzero(unseen_mask)
        negatives = rng.choice(unseen, size=len(positives) * config.negatives_per_positive)
        profiles.append(profile)
        items.append(np.concatenate([positives, negatives]))
        labels.append(np.r_[np.ones(len(positives)), np.zeros(len(negatives))])
        users.append(np.full(len(items[-1]), user))
    if not items:
        raise MetarecError("response model: no meta-train user has enough items to calibrate")
    starts = np.cumsum([0] + [len(profile) for profile in profiles])
    return CalibrationDraws(
        np.concatenate(users), np.concatenate(items), np.concatenate(labels),
        np.concatenate(profiles), starts,
    )  # fmt: skip


def left_out_affinities(
    block: np.ndarray,
    start: int,
    examples: np.ndarray,
    draws: CalibrationDraws,
    counts: np.ndarray,
    kept: np.ndarray | None,
) -> np.ndarray:
    """(len(examples),) affinity of each example's item to its user's profile with the user
    left out, for ``examples`` whose items are rows of the (B, N) co-occurrence ``block``
    starting at item ``start``; ``counts`` (N,) users holding each item; ``kept`` (B, N)
    nonzero where a profile item is a neighbour of the row's item (None: every item is)."""
    affinities = np.empty(len(examples))
    lengths = draws.profile_lengths(examples)
    # The examples of one profile length form one (n, length) array: its row means are
    # summed in the same order as each user's own (items, profile) array would be.
    for length in np.unique(lengths):
        of_length = lengths == length
        group = examples[of_length]
        rows, profiles = draws.items[group] - start, draws.profiles(group, length)
        # Their own co-occurrences would inflate the positives' affinity (and not the
        # negatives'), as they never do for the held-out users the simulator serves.
        own = draws.labels[group]
        co_counts = block[rows[:, None], profiles] - own[:, None]
        similarities = cosine(co_counts, (counts[draws.items[group]] - own)[:, None],
                              counts[profiles] - 1.0)  # fmt: skip
        if kept is not None:
            similarities = np.where(kept[rows[:, None], profiles] != 0, similarities, 0.0)
        affinities[of_length] = similarities.mean(1)
    return affinities


def similarities_and_examples(
    train_sequences: list[np.ndarray],
    n_items: int,
    config: ResponseFitConfig,
    block_floats: int = BLOCK_FLOATS,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The (N, N) similarities and the calibration's examples: features (n, 2) (left-out
    affinity, log popularity), labels (n,), and the user row and item of each (n,), (n,).

    One pass over blocks of co-occurrence rows gives both: a block's similarity rows, and the
    affinities of the examples whose items the block holds."""
    draws = calibration_draws(train_sequences, n_items, config)
    matrix = interaction_matrix(train_sequences, n_items)
    counts = user_counts(train_sequences, n_items).astype(np.float32)
    by_item = np.argsort(draws.items, kind="stable")
    bounds = np.searchsorted(draws.items[by_item], np.arange(n_items + 1))
    affinities, parts = np.empty(len(draws.items)), []
    for start, block in co_occurrence_blocks(matrix, block_floats):
        similarities = similarity_rows(block, start, counts, config.neighbours)
        parts.append(sp.csr_matrix(similarities))
        examples = by_item[bounds[start] : bounds[start + len(block)]]
        kept = None if config.neighbours is None else similarities
        affinities[examples] = left_out_affinities(block, start, examples, draws, counts, kept)
    features = np.column_stack([affinities, np.log1p(counts[draws.items] - draws.labels)])
    return sp.vstack(parts, format="csr"), features, draws.labels, draws.users, draws.items


def fit_response_model(
    train_sequences: list[np.ndarray],
    train_ratings: list[np.ndarray],
    item_text: list[str],
    config: ResponseFitConfig,
) -> ResponseModel:
    """Fit every part of the response model on the meta-train users' sequences and ratings."""
    n_items = len(item_text)
    check_neighbours(n_items, config.neighbours)
    similarities, features, labels, _, _ = similarities_and_examples(
        train_sequences, n_items, config
    )
    calibration = fit_logistic(features, labels)
    genres, genre_names = item_genres(item_text)
    items, ratings = np.concatenate(train_sequences), np.concatenate(train_ratings)
    rated = ~np.isnan(ratings)
    likes = np.bincount(items[rated], weights=ratings[rated] >= config.like_threshold,
                        minlength=n_items)  # fmt: skip
    rating_counts = np.bincount(items[rated], minlength=n_items)
    overall = likes.sum() / max(1, rating_counts.sum())
    prior = config.like_prior_weight
    like_rates = (likes + prior * overall) / (rating_counts + prior)
    popularity = user_counts(train_sequences, n_items)
    return ResponseModel(
        similarities, calibration, like_rates, popularity, genres, genre_names, config
    )
