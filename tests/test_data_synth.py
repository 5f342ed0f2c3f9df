"""`metarec data synth`: the ml-20m-shaped synthetic dataset, at small sizes.

Two shapes are written once per module: a small catalogue (most users take more than a
twentieth of it, so their items come from exponential keys) and a large one (most users
draw streams with replacement), so both ways of sampling are checked.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from metarec.cli import main
from metarec.data import movielens_like
from metarec.data.movielens_like import GENRE_NAMES, MovieLensLikeConfig
from metarec.data.prepare import DataConfig, load_dataset
from metarec.errors import ConfigError
from metarec.jobs.data_synth import SynthConfig, prepare_command, run

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "small-catalogue": MovieLensLikeConfig(n_users=2000, n_items=500, n_interactions=100_000),
    "large-catalogue": MovieLensLikeConfig(n_users=2000, n_items=5000, n_interactions=100_000),
}


def write(folder: Path, dataset: MovieLensLikeConfig) -> Path:
    run(SynthConfig(output=folder, dataset=dataset))
    return folder


@pytest.fixture(scope="module", params=list(SHAPES))
def written(request, tmp_path_factory) -> tuple[Path, MovieLensLikeConfig]:
    dataset = SHAPES[request.param]
    return write(tmp_path_factory.mktemp(request.param), dataset), dataset


def interactions(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "interactions.parquet")


def test_rows_users_pairs_times_and_ratings(written):
    folder, dataset = written
    table = interactions(folder)
    assert len(table) == dataset.n_interactions
    assert {column: str(kind) for column, kind in table.dtypes.items()} == {
        "user_id": "int64",
        "item_id": "int64",
        "timestamp": "int64",
        "rating": "float64",
    }
    users = table["user_id"].to_numpy()
    assert set(np.unique(users)) == set(range(1, dataset.n_users + 1))
    assert np.bincount(users)[1:].min() >= 20
    assert not table.duplicated(["user_id", "item_id"]).any()
    assert table["item_id"].between(1, dataset.n_items).all()
    # rows are grouped by user, each user's timestamps strictly increasing
    assert (np.diff(users) >= 0).all()
    same = users[1:] == users[:-1]
    assert (np.diff(table["timestamp"].to_numpy())[same] > 0).all()
    ratings = table["rating"].to_numpy()
    assert set(np.unique(ratings)) <= set(np.arange(1, 11) / 2)


def test_items_have_titles_and_genres(written):
    folder, dataset = written
    items = pd.read_parquet(folder / "items.parquet")
    assert list(items.columns) == ["item_id", "title", "genres"]
    assert items["item_id"].tolist() == list(range(1, dataset.n_items + 1))
    assert items["title"].str.fullmatch(r"Synthetic Film \d+ \((19|20)\d\d\)").all()
    for genres in items["genres"]:
        names = genres.split("|")
        assert 1 <= len(names) <= 3 and set(names) <= set(GENRE_NAMES)


def test_shape_is_heavy_tailed(written):
    folder, dataset = written
    table = interactions(folder)
    history = table.groupby("user_id").size().to_numpy()
    assert np.median(history) < 0.8 * history.mean()
    assert history.max() > 3 * np.median(history)
    counts = np.sort(np.bincount(table["item_id"], minlength=dataset.n_items + 1)[1:])[::-1]
    top = counts[: dataset.n_items // 100].sum() / len(table)
    assert top > 0.08  # ten times an even share
    assert counts[0] > 5 * np.median(counts)
    recorded = json.loads((folder / "synth.json").read_text())["shape"]
    assert recorded["interactions"] == len(table)
    assert recorded["history_max"] == history.max()
    assert recorded["item_ratings_max"] == counts[0]


def test_users_take_and_like_their_genres(written):
    """The structure to learn: a user's items share its preferred genres far more often
    than another user's items do, and are rated higher when they do."""
    folder, dataset = written
    synth = movielens_like.movielens_like(dataset)
    table = interactions(folder)
    users = table["user_id"].to_numpy() - 1
    genres = synth.catalogue.genre_bits[table["item_id"].to_numpy() - 1]
    tastes = synth.population.taste_bits
    liked = (genres & tastes[users]) != 0
    shuffled = (genres & tastes[np.random.default_rng(0).permutation(users)]) != 0
    assert liked.mean() > shuffled.mean() + 0.1
    ratings = table["rating"].to_numpy()
    assert ratings[liked].mean() > ratings[~liked].mean() + 0.2


def test_same_seed_same_bytes_other_seed_differs(written, tmp_path):
    folder, dataset = written
    again = write(tmp_path / "again", dataset)
    for name in ("interactions.parquet", "items.parquet"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    summaries = [json.loads((path / "synth.json").read_text()) for path in (folder, again)]
    assert summaries[0]["shape"] == summaries[1]["shape"]
    other = MovieLensLikeConfig(
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        n_interactions=dataset.n_interactions,
        seed=1,
    )
    other_folder = write(tmp_path / "other", other)
    assert not interactions(other_folder).equals(interactions(folder))


def test_prepare_reads_what_was_written(written, tmp_path):
    folder, dataset = written
    data = DataConfig(
        dataset="custom",
        interactions=folder / "interactions.parquet",
        items=folder / "items.parquet",
        cache_dir=tmp_path / "cache",
        time_col="timestamp",
        rating_col="rating",
        item_text_cols=["title", "genres"],
    )
    prepared = load_dataset(data, use_cache=False)
    stats = prepared.stats()
    assert stats["users"] == dataset.n_users
    assert stats["items"] == dataset.n_items
    assert stats["interactions"] == dataset.n_interactions
    assert stats["history_min"] >= 20
    assert stats["removed_duplicates"] == 0
    assert re.fullmatch(r"Synthetic Film \d+ \(\d{4}\) \| [A-Za-z|-]+", prepared.item_text[0])


def test_chunks_are_row_groups_and_cover_whole_users(tmp_path):
    dataset = MovieLensLikeConfig(
        n_users=300, n_items=400, n_interactions=15_000, chunk_rows=4000, seed=3
    )
    folder = write(tmp_path, dataset)
    parquet = pq.ParquetFile(folder / "interactions.parquet")
    assert parquet.metadata.num_row_groups == movielens_like.movielens_like(dataset).n_chunks > 3
    seen: set[int] = set()
    for group in range(parquet.metadata.num_row_groups):
        users = set(parquet.read_row_group(group, columns=["user_id"])["user_id"].to_pylist())
        assert not users & seen
        seen |= users
    assert len(seen) == dataset.n_users


def test_streams_sample_as_exponential_keys_do(monkeypatch):
    """Drawing with replacement and keeping first appearances gives the same inclusion
    probabilities as exponential keys (exact successive sampling): 4,000 identical users,
    each item's share of users, with streams and with keys alone (no stream rounds)."""
    dataset = MovieLensLikeConfig(n_users=4000, n_items=400, n_interactions=80_000)
    synth = movielens_like.movielens_like(dataset)
    sampler = movielens_like._Sampler.of(synth.catalogue)
    lengths = np.full(dataset.n_users, 20)  # light: at most max(20, 400 // 20)
    tastes = np.full(dataset.n_users, synth.population.taste_bits[0])

    def inclusion(rounds: int) -> np.ndarray:
        monkeypatch.setattr(movielens_like, "STREAM_ROUNDS", rounds)
        rng = np.random.default_rng(rounds)
        users, items = movielens_like._chunk_items(
            dataset, synth.catalogue, sampler, lengths, tastes, rng
        )
        assert (np.bincount(users) == 20).all()
        assert len(np.unique(users * dataset.n_items + items)) == len(users)
        return np.bincount(items, minlength=dataset.n_items) / dataset.n_users

    streams, keys = inclusion(3), inclusion(0)
    n = dataset.n_users
    pooled = np.clip((streams + keys) / 2, 5 / n, 1 - 5 / n)  # no zero spread at 0 or 1
    spread = np.sqrt(pooled * (1 - pooled) * 2 / n)
    assert (np.abs(streams - keys) < 5 * spread).all()
    assert keys.max() > 0.5  # the weights are skewed enough for repeats to matter


@pytest.mark.parametrize("total", [2900, 3000])
def test_heavy_users_take_most_of_the_catalogue(total):
    """The totals force histories up to the whole catalogue: all distinct, exact counts."""
    dataset = MovieLensLikeConfig(n_users=50, n_items=60, n_interactions=total)
    synth = movielens_like.movielens_like(dataset)
    assert synth.population.lengths.sum() == total
    assert synth.population.lengths.max() <= 60
    table = pd.concat(chunk.to_pandas() for chunk in synth.interactions())
    assert len(table) == total
    assert not table.duplicated(["user_id", "item_id"]).any()
    assert (table.groupby("user_id").size().to_numpy() == synth.population.lengths).all()


@pytest.mark.parametrize(
    "users, items, interactions, message",
    [
        (100, 500, 1999, "1,999 interactions are too few: each of 100 users needs at least 20"),
        (10, 25, 251, "251 interactions are too many: 10 users rating each of 25 items"),
        (0, 25, 0, "need at least 1 user and 1 item"),
    ],
)
def test_impossible_sizes_are_refused(users, items, interactions, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=re.escape(message)):
        MovieLensLikeConfig(n_users=users, n_items=items, n_interactions=interactions)
    words = ["data", "synth", "--users", str(users), "--items", str(items)]
    words += ["--interactions", str(interactions), "--output", str(tmp_path / "out")]
    assert main(words) == 2
    error = capsys.readouterr().err
    assert error.startswith("metarec: error: ") and message in error
    assert error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_command_writes_and_prints_the_prepare_line(tmp_path):
    output = tmp_path / "synth data"
    command = [sys.executable, "-m", "metarec", "data", "synth", "--users", "100"]
    command += ["--items", "200", "--interactions", "3000", "--seed", "1"]
    done = subprocess.run(
        [*command, "--output", str(output)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    prepare = prepare_command(output)
    assert done.stdout.rstrip().endswith(prepare)
    summary = json.loads((output / "synth.json").read_text())
    assert summary["arguments"] == {"users": 100, "items": 200, "interactions": 3000, "seed": 1}
    assert summary["shape"]["interactions"] == 3000
    assert summary["prepare"] == prepare
    # the printed line, as a user would paste it, reads the data
    words = shlex.split(prepare)[1:] + ["--cache-dir", str(tmp_path / "cache")]
    assert main(words) == 0
