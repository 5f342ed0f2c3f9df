"""A synthetic dataset shaped like MovieLens ml-20m, at any size, fast enough for 20M rows.

The shape follows ml-20m: every user has at least 20 interactions and history lengths are
heavy-tailed (ml-20m: mean 144, median 68, max 9,254); item popularity falls off like
ml-20m's (the most-rated movie has 0.34% of all ratings, about half of the movies fewer
than 20); each (user, item) pair appears at most once; each user's timestamps increase
strictly; ratings are 0.5..5 in steps of 0.5. There is structure to learn: items have
one to three of ml-20m's genres, each user prefers one to three genres and takes a
``taste_share`` of their items from them, rates them higher, and watches older films
before newer ones (loosely), so quality numbers on it are not pure noise.

The work is vectorised numpy, one chunk of users at a time (`interaction_chunks`), so the
20M-row dataset is written chunk by chunk in about a minute with little memory. Items are
sampled without replacement from each user's own weights exactly as successive weighted
draws would: light users draw with replacement and keep first appearances (the distinct
items of a stream of weighted draws, in order of appearance, are such a sample); heavy
users, and light users whose stream ran short, finish with exponential keys over the whole
catalogue (the ``k`` smallest of ``Exp(1) / weight`` continue such a sample exactly).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from metarec.errors import ConfigError

# ml-20m's genres with roughly how many of its 27,278 movies carry each
GENRES: dict[str, int] = {
    "Drama": 13344, "Comedy": 8374, "Thriller": 4178, "Romance": 4127, "Action": 3520,
    "Crime": 2939, "Horror": 2611, "Documentary": 2471, "Adventure": 2329, "Sci-Fi": 1743,
    "Mystery": 1514, "Fantasy": 1412, "War": 1194, "Children": 1139, "Musical": 1036,
    "Animation": 1027, "Western": 676, "Film-Noir": 330, "IMAX": 196,
}  # fmt: skip
GENRE_NAMES = list(GENRES)
# ml-20m's ratings run from January 1995 to March 2015
FIRST_TIME = int(datetime(1995, 1, 9, tzinfo=timezone.utc).timestamp())
LAST_TIME = int(datetime(2015, 3, 31, tzinfo=timezone.utc).timestamp())
# rounds of drawing with replacement before a user's sample finishes with exponential keys
STREAM_ROUNDS = 3
INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("timestamp", pa.int64()),
        ("rating", pa.float64()),
    ]
)


@dataclass(frozen=True)
class MovieLensLikeConfig:
    """How big the dataset is and how it is shaped; the defaults are ml-20m's shape.

    Users get ``min_history`` interactions plus a lognormal(0, ``history_sigma``) share of
    the rest, at most ``max_history_fraction`` of the catalogue (ml-20m's heaviest user
    rated 35% of its movies; more when the totals leave no other way). The item of
    popularity rank ``r`` (0 first) weighs ``exp(-((r + 0.5) / (popularity_head *
    n_items)) ** popularity_shape)``: a stretched exponential, which falls off faster in
    the tail than a power law, as ml-20m's counts do; a ``popularity_floor`` share of the
    weight is spread evenly, so that almost every item is rated (ml-20m: 98%). Users take a
    ``taste_share`` of their items from their preferred genres. ``chunk_rows``: about how many
    interactions each chunk holds (one Parquet row group when written).
    """

    n_users: int = 140_000
    n_items: int = 27_000
    n_interactions: int = 20_000_000
    seed: int = 0
    min_history: int = 20
    history_sigma: float = 1.38
    max_history_fraction: float = 0.35
    popularity_head: float = 0.0007
    popularity_shape: float = 0.36
    popularity_floor: float = 0.003
    taste_share: float = 0.5
    chunk_rows: int = 1_000_000

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1:
            raise ConfigError(
                f"need at least 1 user and 1 item, got {self.n_users} users and "
                f"{self.n_items} items"
            )
        if self.min_history < 2:  # a history needs two interactions to space its timestamps
            raise ConfigError(f"min_history {self.min_history}: need at least 2")
        least = self.min_history * self.n_users
        if self.n_interactions < least:
            raise ConfigError(
                f"{self.n_interactions:,} interactions are too few: each of {self.n_users:,} "
                f"users needs at least {self.min_history}, {least:,} in all"
            )
        most = self.n_users * self.n_items
        if self.n_interactions > most:
            raise ConfigError(
                f"{self.n_interactions:,} interactions are too many: {self.n_users:,} users "
                f"rating each of {self.n_items:,} items once make only {most:,}"
            )

    @property
    def max_history(self) -> int:
        """The longest history a user may get: the fraction of the catalogue, or the mean
        history rounded up when the totals need more."""
        by_fraction = round(self.max_history_fraction * self.n_items)
        mean = -(-self.n_interactions // self.n_users)
        return min(self.n_items, max(by_fraction, mean, self.min_history))


@dataclass(frozen=True)
class Catalogue:
    """The items (arrays of shape (n_items,), indexed by item position 0..n_items-1)."""

    item_ids: np.ndarray  # int64: 1..n_items
    popularity: np.ndarray  # float64 weights, summing to 1
    genre_bits: np.ndarray  # int64: bit g set when the item has genre GENRE_NAMES[g]
    years: np.ndarray  # int64 release years
    quality: np.ndarray  # float64: how much better than average users rate the item

    def table(self) -> pa.Table:
        """``item_id``, ``title`` ("Synthetic Film 12 (1997)"), ``genres`` ("Drama|War")."""
        names = [
            "|".join(name for g, name in enumerate(GENRE_NAMES) if bits >> g & 1)
            for bits in self.genre_bits.tolist()
        ]
        titles = [
            f"Synthetic Film {item} ({year})"
            for item, year in zip(self.item_ids.tolist(), self.years.tolist(), strict=True)
        ]
        return pa.table({"item_id": self.item_ids, "title": titles, "genres": names})


@dataclass(frozen=True)
class Population:
    """The users (arrays of shape (n_users,), by user position 0..n_users-1)."""

    lengths: np.ndarray  # int64 history lengths, summing to n_interactions
    taste_bits: np.ndarray  # int64: bit g set when the user prefers genre g
    bias: np.ndarray  # float64: how much higher than average the user rates
    starts: np.ndarray  # int64: the first timestamp
    spans: np.ndarray  # int64: the last timestamp is start + span + length - 1


def _generators(
    seed: int,
) -> tuple[np.random.Generator, np.random.Generator, np.random.SeedSequence]:
    """Independent streams for the catalogue, the population and the chunks, so that each
    depends on the seed alone and not on how much another one drew."""
    catalogue, population, chunks = np.random.SeedSequence(seed).spawn(3)
    return np.random.default_rng(catalogue), np.random.default_rng(population), chunks


def _genre_sets(
    rng: np.random.Generator, n: int, weights: np.ndarray, p_sizes: list[float]
) -> np.ndarray:
    """Bit sets (n,) int64 of 1..len(p_sizes) genres each, drawn without replacement in
    proportion to ``weights`` (G,) (Gumbel top-k: the largest log weight + Gumbel noise)."""
    sizes = rng.choice(np.arange(1, len(p_sizes) + 1), size=n, p=p_sizes)
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + rng.gumbel(size=(n, len(weights)))
    order = np.argsort(-keys, axis=1)[:, : len(p_sizes)]
    # a genre of weight 0 is never taken, even when fewer genres than wanted weigh more
    finite = np.isfinite(np.take_along_axis(keys, order, axis=1))
    taken = (np.arange(len(p_sizes)) < sizes[:, None]) & finite
    return np.where(taken, np.int64(1) << order, 0).sum(axis=1)


def make_catalogue(config: MovieLensLikeConfig, rng: np.random.Generator) -> Catalogue:
    """The items: popularity by a random rank, genres, release years, quality."""
    n = config.n_items
    ranks = rng.permutation(n)  # item position -> popularity rank, so ids say nothing
    scale = config.popularity_head * n
    popularity = np.exp(-(((ranks + 0.5) / scale) ** config.popularity_shape))
    popularity /= popularity.sum()
    popularity = (1.0 - config.popularity_floor) * popularity + config.popularity_floor / n
    frequency = np.array(list(GENRES.values()), dtype=np.float64)
    genre_bits = _genre_sets(rng, n, frequency, [0.35, 0.35, 0.30])
    # ml-20m's movies are mostly recent: years before 2015 fall off exponentially
    years = np.clip(2015 - np.floor(rng.exponential(15.0, size=n)), 1902, 2015).astype(np.int64)
    # popular films are rated a little higher, as in ml-20m
    log_pop = np.log(popularity)
    quality = 0.25 * (log_pop - log_pop.mean()) / log_pop.std() + rng.normal(0.0, 0.35, size=n)
    return Catalogue(
        item_ids=np.arange(1, n + 1, dtype=np.int64),
        popularity=popularity,
        genre_bits=genre_bits,
        years=years,
        quality=quality,
    )


def history_lengths(config: MovieLensLikeConfig, rng: np.random.Generator) -> np.ndarray:
    """History lengths (n_users,) int64: ``min_history`` each plus lognormal shares of the
    rest, capped at `max_history`, summing exactly to ``n_interactions``.

    The shares are ``s * weight`` with ``s`` found by bisection so that the capped shares
    sum to the rest (water-filling); rounding down leaves a remainder, given one each to
    the users with the largest fractions below the cap.
    """
    rest = config.n_interactions - config.min_history * config.n_users
    room = config.max_history - config.min_history
    weights = rng.lognormal(0.0, config.history_sigma, size=config.n_users)
    low, high = 0.0, room / weights.min()  # at `high` everyone is capped: n_users * room >= rest
    for _ in range(200):
        middle = (low + high) / 2
        if np.minimum(room, middle * weights).sum() > rest:
            high = middle
        else:
            low = middle
    shares = np.minimum(room, low * weights)
    extra = np.floor(shares).astype(np.int64)
    fractions = np.where(extra < room, shares - extra, -1.0)
    remainder = rest - int(extra.sum())
    while remainder > 0:  # once in practice; again only if bisection left a whole unit short
        below = np.flatnonzero(extra < room)
        chosen = below[np.argsort(-fractions[below], kind="stable")[:remainder]]
        extra[chosen] += 1
        fractions[chosen] = -1.0
        remainder -= len(chosen)
    return config.min_history + extra


def make_population(
    config: MovieLensLikeConfig, catalogue: Catalogue, rng: np.random.Generator
) -> Population:
    """The users: history lengths, preferred genres, rating bias and when they were active."""
    n = config.n_users
    lengths = history_lengths(config, rng)
    # rarer genres are preferred more often than their share of films (square root), and
    # only genres some item has can be preferred
    present = np.bitwise_or.reduce(catalogue.genre_bits)
    frequency = np.array(list(GENRES.values()), dtype=np.float64)
    has = (present >> np.arange(len(GENRES))) & 1
    taste_bits = _genre_sets(rng, n, np.sqrt(frequency) * has, [0.3, 0.4, 0.3])
    bias = rng.normal(0.0, 0.45, size=n)
    window = LAST_TIME - FIRST_TIME
    # most users rate everything within a day or two; a few over years (lognormal spans)
    spans = np.exp(rng.normal(np.log(86_400.0), 2.5, size=n))
    spans = np.clip(spans, 30.0 * lengths, window - lengths - 1).astype(np.int64)
    # users who arrived earlier have lower ids, as in MovieLens
    arrival = np.sort(rng.random(n))
    starts = FIRST_TIME + (arrival * (window - spans - lengths)).astype(np.int64)
    return Population(lengths, taste_bits, bias, starts, spans)


def _alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table of ``weights`` (n,): (keep (n,) float64, alias (n,) int64). A
    draw picks a slot ``j`` uniformly and keeps it with probability ``keep[j]``, else takes
    ``alias[j]``: O(1) a draw, where a binary search into the cumulative weights spends
    most of its time on mispredicted branches."""
    n = len(weights)
    scaled = (weights * (n / weights.sum())).tolist()
    keep, alias = [1.0] * n, list(range(n))
    small = [j for j in range(n) if scaled[j] < 1.0]
    large = [j for j in range(n) if scaled[j] >= 1.0]
    while small and large:  # Vose's construction; the leftovers keep probability 1
        s, big = small.pop(), large.pop()
        keep[s], alias[s] = scaled[s], big
        scaled[big] += scaled[s] - 1.0
        (small if scaled[big] < 1.0 else large).append(big)
    return np.array(keep), np.array(alias, dtype=np.int64)


@dataclass(frozen=True)
class _Sampler:
    """Each user's item weights, as a mixture: ``1 - taste_share`` of the user's draws
    follow global popularity, the rest one of their preferred genres (equally), within it
    by popularity.

    The mixture's components (0: global, g + 1: genre g) have alias tables laid end to
    end: component c's slots are ``offsets[c]:offsets[c + 1]``, slot ``j`` stands for item
    ``items[j]``, and ``keep``/``alias`` (alias: slot numbers) are its table."""

    offsets: np.ndarray  # (G + 2,) int64
    items: np.ndarray  # (slots,) int64
    keep: np.ndarray  # (slots,) float64
    alias: np.ndarray  # (slots,) int64
    genre_weights: np.ndarray  # (G, n_items) float64: popularity within each genre, sums to 1

    @classmethod
    def of(cls, catalogue: Catalogue) -> _Sampler:
        popularity = catalogue.popularity
        members = [np.arange(len(popularity))] + [
            np.flatnonzero(catalogue.genre_bits >> g & 1) for g in range(len(GENRES))
        ]
        offsets = np.cumsum([0] + [len(items) for items in members])
        tables = [
            _alias_table(popularity[items]) if len(items) else (np.empty(0), np.empty(0, int))
            for items in members
        ]
        genre_weights = np.zeros((len(GENRES), len(popularity)))
        for g, items in enumerate(members[1:]):
            genre_weights[g, items] = popularity[items] / popularity[items].sum()
        return cls(
            offsets=offsets,
            items=np.concatenate(members),
            keep=np.concatenate([keep for keep, _ in tables]),
            alias=np.concatenate(
                [alias + start for (_, alias), start in zip(tables, offsets[:-1], strict=True)]
            ),
            genre_weights=genre_weights,
        )

    def draw(
        self, rng: np.random.Generator, users: np.ndarray, genres: np.ndarray, taste_share: float
    ) -> np.ndarray:
        """One weighted draw with replacement for each of ``users`` (n,) int64, rows of
        ``genres`` (users, 3) int64 (each user's preferred genres, -1 pads): item positions
        (n,) int64."""
        n = len(users)
        counts = (genres >= 0).sum(axis=1)
        pick = (rng.random(n) * counts[users]).astype(np.int64)  # one of the user's genres
        genre = genres.ravel()[users * genres.shape[1] + pick]
        component = np.where(rng.random(n) < taste_share, genre + 1, 0)
        sizes = np.diff(self.offsets)
        slot = self.offsets[component] + (rng.random(n) * sizes[component]).astype(np.int64)
        slot = np.where(rng.random(n) < self.keep[slot], slot, self.alias[slot])
        return self.items[slot]

    def weights(self, catalogue: Catalogue, taste_bits: int, taste_share: float) -> np.ndarray:
        """One user's item weights (n_items,) float64, the mixture `draw` samples."""
        genres = [g for g in range(len(GENRES)) if taste_bits >> g & 1]
        taste = self.genre_weights[genres].sum(axis=0) / len(genres)
        return (1.0 - taste_share) * catalogue.popularity + taste_share * taste


def _genre_lists(bits: np.ndarray) -> np.ndarray:
    """The genres of bit sets ``bits`` (n,) with at most 3 genres each: (n, 3) int64
    genre indices, ascending, -1 where a set has fewer."""
    has = (bits[:, None] >> np.arange(len(GENRES))) & 1  # (n, G)
    genres = np.argsort(-has, axis=1, kind="stable")[:, :3]
    return np.where(np.take_along_axis(has, genres, axis=1) == 1, genres, -1)


def _first_distinct(
    users: np.ndarray, items: np.ndarray, lengths: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first ``lengths[u]`` distinct items in the stream ``users``, ``items``
    (n,), sorted by user (stream order within a user): (users, items) int64."""
    order = np.argsort(users, kind="stable")  # by user, stream order kept within each
    users, items = users[order], items[order]
    keys = users * n_items + items
    order = np.argsort(keys, kind="stable")  # stable: the first of equal keys comes first
    ordered = keys[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    kept = np.sort(order[first])
    users, items = users[kept], items[kept]
    counts = np.bincount(users, minlength=len(lengths))
    rank = np.arange(len(users)) - (np.cumsum(counts) - counts)[users]
    keep = rank < lengths[users]
    return users[keep], items[keep]


def _chunk_items(
    config: MovieLensLikeConfig,
    catalogue: Catalogue,
    sampler: _Sampler,
    lengths: np.ndarray,
    taste_bits: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's items, sampled without replacement: (users (n,), items (n,)) int64 with
    ``lengths[u]`` distinct items for chunk user ``u``; rows in no particular order.

    Light users draw streams with replacement, in up to `STREAM_ROUNDS` rounds: a user
    short of distinct items after one draws on, as many more as their last round's rate of
    new items suggests, and the stream continues where it stopped. Heavy users, and the
    few still short, finish with exponential keys.
    """
    n_users, n_items = len(lengths), config.n_items
    genres = _genre_lists(taste_bits)
    # a user taking more than a small part of the catalogue would mostly draw repeats
    light = lengths <= max(config.min_history, n_items // 20)
    draws = np.where(light, np.ceil(1.25 * lengths).astype(np.int64) + 8, 0)
    done_users, done_items = [], []
    users = items = np.empty(0, dtype=np.int64)  # the distinct items of unfinished streams
    found = np.zeros(n_users, dtype=np.int64)  # how many of them each user has
    complete = np.zeros(n_users, dtype=bool)
    for _ in range(STREAM_ROUNDS):
        drawing = np.repeat(np.arange(n_users), draws)
        drawn = sampler.draw(rng, drawing, genres, config.taste_share)
        users, items = _first_distinct(
            np.concatenate([users, drawing]), np.concatenate([items, drawn]), lengths, n_items
        )
        before, found = found, np.bincount(users, minlength=n_users)
        complete |= found == lengths
        finished = complete[users]
        done_users.append(users[finished])
        done_items.append(items[finished])
        users, items, found = users[~finished], items[~finished], np.where(complete, 0, found)
        rate = (found - before) / np.maximum(draws, 1)  # new distinct items per draw
        wanted = np.minimum((lengths - found) / np.maximum(rate, 0.05), 4 * lengths)
        draws = np.where(light & ~complete, np.ceil(1.25 * wanted) + 8, 0).astype(np.int64)
    done_users.append(users)
    done_items.append(items)
    by_user = np.split(items, np.cumsum(np.bincount(users, minlength=n_users))[:-1])
    for user in np.flatnonzero(~complete).tolist():
        need = int(lengths[user] - found[user])
        weights = sampler.weights(catalogue, int(taste_bits[user]), config.taste_share)
        keys = rng.exponential(size=n_items) / weights
        keys[by_user[user]] = np.inf  # already taken: the sample continues without them
        picked = np.argpartition(keys, need - 1)[:need] if need < n_items else np.arange(n_items)
        done_users.append(np.full(need, user, dtype=np.int64))
        done_items.append(picked.astype(np.int64))
    return np.concatenate(done_users), np.concatenate(done_items)


def chunk_bounds(config: MovieLensLikeConfig, lengths: np.ndarray) -> np.ndarray:
    """User positions where chunks start and end (n_chunks + 1,): whole users, about
    ``chunk_rows`` interactions each."""
    ends = np.cumsum(lengths)
    marks = np.arange(config.chunk_rows, int(ends[-1]), config.chunk_rows)
    bounds = np.searchsorted(ends, marks, side="left") + 1
    return np.unique(np.concatenate([[0], bounds, [len(lengths)]]))


def interaction_chunks(
    config: MovieLensLikeConfig, catalogue: Catalogue, population: Population
) -> Iterator[pa.Table]:
    """The interactions, one table of `INTERACTION_SCHEMA` per chunk of users (see
    `chunk_bounds`), users in id order, each user's rows in time order."""
    _, _, chunk_seeds = _generators(config.seed)
    sampler = _Sampler.of(catalogue)
    bounds = chunk_bounds(config, population.lengths)
    for first, end, seed in zip(
        bounds[:-1], bounds[1:], chunk_seeds.spawn(len(bounds) - 1), strict=True
    ):
        rng = np.random.default_rng(seed)
        lengths = population.lengths[first:end]
        tastes = population.taste_bits[first:end]
        users, items = _chunk_items(config, catalogue, sampler, lengths, tastes, rng)
        # each user's history runs loosely from older films to newer ones
        era = catalogue.years[items] - 1800 + rng.normal(0.0, 10.0, size=len(items))
        order = np.argsort(users * 1000.0 + np.clip(era, 0.0, 999.0))
        users, items = users[order], items[order]
        timestamps = _timestamps(population, first, users, lengths, rng)
        liked = (catalogue.genre_bits[items] & tastes[users]) != 0
        rating = (
            2.75
            + population.bias[first + users]
            + catalogue.quality[items]
            + 0.4 * liked
            + rng.normal(0.0, 0.8, size=len(items))
        )
        rating = np.clip(np.round(rating * 2.0) / 2.0, 0.5, 5.0)
        yield pa.table(
            [
                pa.array(first + users + 1, pa.int64()),
                pa.array(catalogue.item_ids[items]),
                pa.array(timestamps),
                pa.array(rating),
            ],
            schema=INTERACTION_SCHEMA,
        )


def _timestamps(
    population: Population,
    first: int,
    users: np.ndarray,
    lengths: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Strictly increasing timestamps (n,) int64 for rows grouped by chunk user ``users``.

    Gaps are bursty (mostly short, one in twenty long: sessions), scaled to the user's span;
    adding the row's rank keeps equal seconds apart.
    """
    n = len(users)
    gaps = rng.exponential(size=n) * np.where(rng.random(n) < 0.05, 200.0, 1.0)
    elapsed = np.cumsum(gaps)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ends = starts + lengths - 1
    elapsed = elapsed - elapsed[starts][users]
    fraction = elapsed / elapsed[ends][users]
    rank = np.arange(n) - starts[users]
    spans = population.spans[first + users]
    return population.starts[first + users] + (fraction * spans).astype(np.int64) + rank


@dataclass(frozen=True)
class MovieLensLike:
    """A planned dataset: its items and users are drawn, its interactions are drawn chunk
    by chunk as `interactions` is iterated (so the whole table is never in memory)."""

    config: MovieLensLikeConfig
    catalogue: Catalogue
    population: Population

    @property
    def n_chunks(self) -> int:
        return len(chunk_bounds(self.config, self.population.lengths)) - 1

    def items(self) -> pa.Table:
        return self.catalogue.table()

    def interactions(self) -> Iterator[pa.Table]:
        """Tables of `INTERACTION_SCHEMA`, `n_chunks` of them (see `interaction_chunks`)."""
        return interaction_chunks(self.config, self.catalogue, self.population)


def movielens_like(config: MovieLensLikeConfig) -> MovieLensLike:
    """Plan the dataset of ``config``: the same config (seed included) gives the same data."""
    catalogue_rng, population_rng, _ = _generators(config.seed)
    catalogue = make_catalogue(config, catalogue_rng)
    population = make_population(config, catalogue, population_rng)
    return MovieLensLike(config, catalogue, population)


class ShapeTally:
    """The shape of interactions seen chunk by chunk: `add` each table, then `shape`."""

    def __init__(self, n_users: int, n_items: int) -> None:
        # ids are 1..n, so index 0 stays empty
        self.history = np.zeros(n_users + 1, dtype=np.int64)
        self.item_counts = np.zeros(n_items + 1, dtype=np.int64)
        self.rating_sum = 0.0
        self.first_time, self.last_time = LAST_TIME, FIRST_TIME

    def add(self, table: pa.Table) -> None:
        """Count one table of `INTERACTION_SCHEMA`."""
        users = table.column("user_id").to_numpy()
        items = table.column("item_id").to_numpy()
        times = table.column("timestamp").to_numpy()
        self.history += np.bincount(users, minlength=len(self.history))
        self.item_counts += np.bincount(items, minlength=len(self.item_counts))
        self.rating_sum += float(table.column("rating").to_numpy().sum())
        self.first_time = min(self.first_time, int(times.min()))
        self.last_time = max(self.last_time, int(times.max()))

    def shape(self) -> dict[str, float | int | str]:
        """Counts, history lengths, item popularity, mean rating and time range."""
        history, counts = self.history[1:], np.sort(self.item_counts[1:])[::-1]
        total = int(counts.sum())
        top = max(1, len(counts) // 100)

        def day(seconds: int) -> str:
            return datetime.fromtimestamp(seconds, timezone.utc).date().isoformat()

        return {
            "users": int((history > 0).sum()),
            "items": len(counts),
            "items_rated": int((counts > 0).sum()),
            "interactions": total,
            "history_min": int(history.min()),
            "history_median": float(np.median(history)),
            "history_mean": float(history.mean()),
            "history_max": int(history.max()),
            "item_ratings_max": int(counts[0]),
            "item_ratings_median": float(np.median(counts)),
            "items_under_20_ratings": float((counts < 20).mean()),
            "top_1pct_items_share": float(counts[:top].sum() / max(1, total)),
            "rating_mean": self.rating_sum / max(1, total),
            "first_day": day(self.first_time),
            "last_day": day(self.last_time),
        }
