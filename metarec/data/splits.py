"""The evaluation protocols of docs/protocols.md as splits of per-user histories.

A split says what methods may learn from (``train_sequences``) and which users are
evaluated how (`UserCase`: the history a method conditions on, which is also excluded
from the ranking, and the relevant items it must rank high). ``coldstart-items`` also
holds out items (``Split.held_out_items``): new users meet new items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from metarec.errors import ConfigError, MetarecError

PROTOCOLS = ("coldstart", "coldstart-items", "loo", "sampled")
DEFAULT_KS = {"coldstart": [10, 20], "coldstart-items": [10, 20], "loo": [10, 20],
              "sampled": [1, 5, 10]}  # fmt: skip
HELD_OUT_ITEM_SHARE = 0.2  # coldstart-items: the share of the catalogue nothing trains on
ITEM_STREAM = 1  # coldstart-items draws its items from default_rng([split_seed, ITEM_STREAM])


@dataclass(frozen=True)
class UserCase:
    """One evaluated user.

    ``history``: (H,) item indices in time order: the method's input, excluded from ranking.
    ``relevant``: (Q,) item indices to retrieve.
    ``candidates``: (C,) item indices to rank among (``sampled``), or None for the catalogue.
    """

    user: int
    history: np.ndarray
    relevant: np.ndarray
    candidates: np.ndarray | None = None


@dataclass
class Split:
    """What a method may fit on, and the validation and test users of one protocol."""

    protocol: str
    n_items: int
    train_users: np.ndarray  # (T,) user indices whose histories are train_sequences, in order
    train_sequences: list[np.ndarray]
    valid: list[UserCase]
    test: list[UserCase]
    counts: dict[str, int] = field(default_factory=dict)
    held_out_items: np.ndarray | None = None  # (H,) sorted item indices (coldstart-items)


def coldstart_users(n_users: int, split_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Meta-train, validation and test user indices: a seeded 70/10/20 permutation."""
    order = np.random.default_rng(split_seed).permutation(n_users)
    n_train, n_valid = int(0.7 * n_users), int(0.1 * n_users)
    return order[:n_train], order[n_train : n_train + n_valid], order[n_train + n_valid :]


def _support_query_cases(
    sequences: list[np.ndarray], users: np.ndarray, support_size: int, query_size: int
) -> list[UserCase]:
    """Support = first K items, query = next Q; users with no query item are skipped."""
    cases = []
    for user in users:
        history = sequences[user]
        if len(history) <= support_size:
            continue
        cases.append(
            UserCase(
                int(user), history[:support_size], history[support_size : support_size + query_size]
            )
        )
    return cases


def held_out_items(n_items: int, split_seed: int) -> np.ndarray:
    """(int(0.2·N),) sorted item indices coldstart-items holds out: the first ones of
    ``numpy.random.default_rng([split_seed, 1]).permutation(n_items)``, a stream apart from
    the user permutation's ``default_rng(split_seed)``."""
    order = np.random.default_rng([split_seed, ITEM_STREAM]).permutation(n_items)
    return np.sort(order[: int(HELD_OUT_ITEM_SHARE * n_items)])


def _cold_user_split(
    protocol: str,
    sequences: list[np.ndarray],
    learnable: list[np.ndarray],
    n_items: int,
    support_size: int,
    query_size: int,
    split_seed: int,
) -> Split:
    """Unseen test users cut from their full ``sequences``; meta-train and validation users
    from ``learnable``, the per-user histories methods may learn from."""
    if support_size < 1 or query_size < 1:
        raise MetarecError(f"{protocol}: support and query sizes must be at least 1")
    train_users, valid_users, test_users = coldstart_users(len(sequences), split_seed)
    test = _support_query_cases(sequences, np.sort(test_users), support_size, query_size)
    if not test:
        raise MetarecError(
            f"{protocol}: no test user has more than {support_size} "
            "interactions; lower --support-size"
        )
    return Split(
        protocol=protocol,
        n_items=n_items,
        train_users=np.sort(train_users),
        train_sequences=[learnable[u] for u in np.sort(train_users)],
        valid=_support_query_cases(learnable, np.sort(valid_users), support_size, query_size),
        test=test,
        counts={
            "train_users": len(train_users),
            "valid_users": len(valid_users),
            "test_users": len(test_users),
            "test_users_skipped": len(test_users) - len(test),
        },
    )


def coldstart_split(
    sequences: list[np.ndarray],
    n_items: int,
    support_size: int = 10,
    query_size: int = 10,
    split_seed: int = 0,
) -> Split:
    """Unseen test users, each given only its first ``support_size`` interactions."""
    return _cold_user_split(
        "coldstart", sequences, sequences, n_items, support_size, query_size, split_seed
    )


def coldstart_items_split(
    sequences: list[np.ndarray],
    n_items: int,
    support_size: int = 10,
    query_size: int = 10,
    split_seed: int = 0,
) -> Split:
    """As `coldstart_split`, with `held_out_items` removed from every meta-train and
    validation history (order kept); test users keep their full histories and rank the
    whole catalogue."""
    held_out = held_out_items(n_items, split_seed)
    is_held_out = np.zeros(n_items, dtype=bool)
    is_held_out[held_out] = True
    learnable = [history[~is_held_out[history]] for history in sequences]
    split = _cold_user_split(
        "coldstart-items", sequences, learnable, n_items, support_size, query_size, split_seed
    )
    split.held_out_items = held_out
    query_held_out = [int(is_held_out[case.relevant].sum()) for case in split.test]
    split.counts.update(
        held_out_items=len(held_out),
        train_interactions_removed=sum(
            len(sequences[user]) - len(learnable[user]) for user in split.train_users
        ),
        test_support_held_out=sum(int(is_held_out[case.history].sum()) for case in split.test),
        test_query_items=sum(len(case.relevant) for case in split.test),
        test_query_held_out=sum(query_held_out),
        test_users_with_held_out_query=sum(count > 0 for count in query_held_out),
    )
    return split


def loo_split(
    sequences: list[np.ndarray], n_items: int, user_ids: np.ndarray | None = None
) -> Split:
    """Warm leave-one-out: last item is the test target, second-to-last the validation one.

    ``user_ids`` (raw ids by index) only make error messages name the user.
    """
    for user, history in enumerate(sequences):
        if len(history) < 3:
            name = user_ids[user] if user_ids is not None else f"index {user}"
            raise MetarecError(
                f"loo: user {name} has {len(history)} interaction(s); loo and "
                "sampled need at least 3 per user (filter with --k-core 3)"
            )
    return Split(
        protocol="loo",
        n_items=n_items,
        train_users=np.arange(len(sequences)),
        train_sequences=[history[:-2] for history in sequences],
        valid=[UserCase(u, h[:-2], h[-2:-1]) for u, h in enumerate(sequences)],
        test=[UserCase(u, h[:-1], h[-1:]) for u, h in enumerate(sequences)],
        counts={"users": len(sequences)},
    )


def sampled_split(
    sequences: list[np.ndarray],
    n_items: int,
    num_negatives: int = 19,
    sample_seed: int = 0,
    user_ids: np.ndarray | None = None,
) -> Split:
    """As `loo_split`, but each test target is ranked among ``num_negatives`` sampled items.

    Negatives are drawn uniformly without replacement from the items the user never
    interacted with, user by user in index order from one seeded generator.
    """
    split = loo_split(sequences, n_items, user_ids)
    rng = np.random.default_rng(sample_seed)
    test = []
    for case, history in zip(split.test, sequences, strict=True):
        unseen = np.setdiff1d(np.arange(n_items), history, assume_unique=False)
        if len(unseen) < num_negatives:
            name = user_ids[case.user] if user_ids is not None else f"index {case.user}"
            raise MetarecError(
                f"sampled: user {name} has only {len(unseen)} "
                f"unseen items; --num-negatives {num_negatives} is too many"
            )
        negatives = rng.choice(unseen, size=num_negatives, replace=False)
        test.append(
            UserCase(
                case.user, case.history, case.relevant, np.concatenate([case.relevant, negatives])
            )
        )
    split.protocol = "sampled"
    split.test = test
    return split


@dataclass
class ProtocolConfig:
    """A protocol and all its parameters (docs/protocols.md); ``ks`` None = its defaults."""

    name: str = "coldstart"
    support_size: int = 10
    query_size: int = 10
    split_seed: int = 0
    num_negatives: int = 19
    sample_seed: int = 0
    ks: list[int] | None = None

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ConfigError(f"protocol {self.name!r}: expected one of {', '.join(PROTOCOLS)}")
        sizes = {"support_size": self.support_size, "query_size": self.query_size,
                 "num_negatives": self.num_negatives}  # fmt: skip
        for field_name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"protocol {field_name}={value}: must be at least 1")
        if self.ks is not None and (not self.ks or min(self.ks) < 1):
            raise ConfigError(f"cutoffs {self.ks}: need at least one, each at least 1")

    def cutoffs(self) -> tuple[int, ...]:
        return tuple(self.ks if self.ks is not None else DEFAULT_KS[self.name])

    def describe(self) -> dict:
        """The parameters that define this protocol (for results files)."""
        params = {"name": self.name, "ks": list(self.cutoffs())}
        if self.name in ("coldstart", "coldstart-items"):
            params.update(
                support_size=self.support_size,
                query_size=self.query_size,
                split_seed=self.split_seed,
            )
        if self.name == "coldstart-items":
            params.update(held_out_item_share=HELD_OUT_ITEM_SHARE)
        if self.name == "sampled":
            params.update(num_negatives=self.num_negatives, sample_seed=self.sample_seed)
        return params


def make_split(
    sequences: list[np.ndarray],
    n_items: int,
    protocol: ProtocolConfig,
    user_ids: np.ndarray | None = None,
) -> Split:
    """The split of ``protocol`` over per-user sequences."""
    if protocol.name in ("coldstart", "coldstart-items"):
        cold_split = coldstart_split if protocol.name == "coldstart" else coldstart_items_split
        return cold_split(
            sequences, n_items, protocol.support_size, protocol.query_size, protocol.split_seed
        )
    if protocol.name == "loo":
        return loo_split(sequences, n_items, user_ids)
    if protocol.name == "sampled":
        return sampled_split(
            sequences, n_items, protocol.num_negatives, protocol.sample_seed, user_ids
        )
    raise MetarecError(
        f"unknown protocol {protocol.name!r}; expected one of {', '.join(PROTOCOLS)}"
    )
