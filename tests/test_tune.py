"""Hyper-parameter search: samplers, resuming from SQLite, the best config written out."""

import json

import optuna
import pytest
import yaml

from metarec.cli import main
from metarec.config import from_mapping
from train.meta_train import TrainConfig


@pytest.fixture()
def tiny_yaml(trained_run, tmp_path):
    _, data, _ = trained_run
    config = {
        "data": {"dataset": "custom", "interactions": str(data.interactions),
                 "items": str(data.items), "cache_dir": str(data.cache_dir)},
        "model": {"backbone": {"name": "tiny-llama"}, "lora": {"rank": 4, "alpha": 8.0},
                  "text_encoder": "none", "id_dim": 16, "item_dim": 16},
        "meta": {"algorithm": "fomaml", "inner_steps": 1, "inner_lr": 0.5},
        "support_sizes": [5], "users_per_batch": 32, "epochs": 1, "valid_users": 24,
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"inner_lr": [0.1, 0.5], "inner_steps": [1], "rank": [2, 4],
                                     "outer_lr": [0.003], "algorithm": ["fomaml"]}))  # fmt: skip
    return path, space


def study(folder):
    return optuna.load_study(study_name="metarec", storage=f"sqlite:///{folder / 'study.db'}")


def test_random_search_resumes_and_writes_the_best_config(tiny_yaml, tmp_path):
    config, space = tiny_yaml
    command = ["tune", "--config", str(config), "--space", str(space), "--study-dir",
               str(tmp_path / "study"), "--sampler", "random"]  # fmt: skip
    assert main([*command, "--trials", "2"]) == 0
    first = [t.params for t in study(tmp_path / "study").trials]
    assert main([*command, "--trials", "3"]) == 0  # one more trial, the first two kept
    trials = study(tmp_path / "study").trials
    assert len(trials) == 3 and [t.params for t in trials[:2]] == first
    assert trials[2].params not in first  # the resumed sampler draws anew
    best = max(trials, key=lambda t: t.value)
    best_config = from_mapping(
        TrainConfig, yaml.safe_load((tmp_path / "study" / "best.yaml").read_text())
    )
    assert best_config.meta.inner_lr == pytest.approx(best.params["inner_lr"])
    assert best_config.model.lora.rank == best.params["rank"]
    # the objective is the trial run's best validation ndcg@10 after adaptation
    metrics = tmp_path / "study" / f"trial-{best.number}" / "checkpoint" / "metrics.json"
    history = json.loads(metrics.read_text())
    assert best.value == max(row["valid_ndcg@10_after"] for row in history)


def test_grid_search_visits_every_point_once(tiny_yaml, tmp_path):
    config, space = tiny_yaml
    assert main(["tune", "--config", str(config), "--space", str(space), "--study-dir",
                 str(tmp_path / "grid"), "--sampler", "grid", "--trials", "4"]) == 0  # fmt: skip
    points = {(t.params["inner_lr"], t.params["rank"]) for t in study(tmp_path / "grid").trials}
    assert points == {(0.1, 2), (0.1, 4), (0.5, 2), (0.5, 4)}
