"""`metarec tune-baselines`: the search scores validation users only, and what it writes is
what it found."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from metarec.cli import main as metarec
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import ProtocolConfig, coldstart_users, make_split
from metarec.data.synthetic import synthetic_raw
from metarec.errors import ConfigError
from metarec.jobs.tune_baselines import TuneBaselinesConfig, tune_baselines, validation_score

BASELINES = {"pop": {}, "itemknn": {"neighbours": None}, "ease": {"lambdas": [100.0]}}


def _config(folder, raw, trials=6) -> TuneBaselinesConfig:
    interactions, items = raw.write_csv(folder)
    data = DataConfig(
        dataset="custom", interactions=interactions, items=items, cache_dir=folder / "cache"
    )
    protocol = ProtocolConfig(name="coldstart", support_size=5, query_size=5, split_seed=1)
    return TuneBaselinesConfig(
        data=data, protocol=protocol, methods=["itemknn", "ease"], hyperparameters=BASELINES,
        trials=trials, output=folder / "tuned.yaml",
    )  # fmt: skip


def test_the_best_section_reproduces_the_best_trial_and_others_are_kept(tmp_path):
    config = _config(tmp_path, synthetic_raw(n_users=90, n_items=60, seed=2))
    tuned, report = tune_baselines(config)
    assert tuned["pop"] == {}
    dataset = load_dataset(config.data)
    split = make_split(dataset.sequences(), dataset.n_items, config.protocol)
    for name in ("itemknn", "ease"):
        scores = [trial["valid_ndcg@10"] for trial in report[name]["trials"]]
        assert len(scores) == config.trials
        assert report[name]["best_valid_ndcg@10"] == max(scores)
        refit = validation_score(name, tuned[name], BASELINES, split)
        assert refit == pytest.approx(max(scores), abs=1e-12)


def test_test_users_do_not_move_the_search(tmp_path):
    """Shuffling every test user's items changes nothing the search sees."""
    raw = synthetic_raw(n_users=90, n_items=60, seed=2)
    first, _ = tune_baselines(_config(tmp_path / "a", raw))
    _, _, test_users = coldstart_users(90, split_seed=1)
    rng = np.random.default_rng(0)
    shuffled = raw.interactions.copy()
    # raw user ids are the synthetic users' indices, in the same order as the dataset's
    for user in test_users:
        rows = np.flatnonzero(shuffled["user_id"].to_numpy() == shuffled["user_id"].unique()[user])
        shuffled.loc[shuffled.index[rows], "item_id"] = rng.permutation(
            shuffled["item_id"].to_numpy()[rows]
        )
    raw.interactions = shuffled
    second, _ = tune_baselines(_config(tmp_path / "b", raw))
    assert second == first


def test_command_writes_yaml_and_trials(tmp_path):
    raw = synthetic_raw(n_users=60, n_items=40, seed=3)
    interactions, items = raw.write_csv(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASELINES))
    output = tmp_path / "out" / "tuned.yaml"
    argv = ["tune-baselines", "--dataset", "custom", "--interactions", str(interactions),
            "--items", str(items), "--cache-dir", str(tmp_path / "cache"), "--support-size",
            "5", "--methods", "itemknn", "--trials", "3", "--baselines-config",
            str(tmp_path / "base.yaml"), "--output", str(output)]  # fmt: skip
    assert metarec(argv) == 0
    tuned = yaml.safe_load(output.read_text())
    trials = json.loads(output.with_suffix(".trials.json").read_text())
    assert tuned["itemknn"] == trials["itemknn"]["best"]
    assert tuned["ease"] == BASELINES["ease"]


def test_a_method_without_a_search_space_is_refused():
    with pytest.raises(ConfigError, match="nothing to tune for pop"):
        TuneBaselinesConfig(methods=["pop"])
