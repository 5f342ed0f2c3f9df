"""``lr_schedule``: the outer learning rate over each training stage, and its exact resume."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_same_adapter, synthetic_files, tensorboard_scalars, tiny_config_file

from metarec.cli import main as metarec_main
from metarec.errors import ConfigError
from metarec.meta.lr_schedule import stage_lr
from metarec.trained_run import TrainConfig
from train.meta_train import MetaTrainRecipe

PRETRAIN_LR, OUTER_LR = 0.01, 0.003


def test_cosine_starts_at_the_base_rate_halves_midway_and_decays_towards_zero():
    rates = [stage_lr("cosine", 0.5, step, 10) for step in range(10)]
    assert rates[0] == 0.5
    assert rates[5] == pytest.approx(0.25)
    assert (np.diff(rates) < 0).all()
    # the last step still moves: a tenth of the way from the end of the half cosine
    assert rates[-1] == pytest.approx(0.5 * (1 - math.cos(math.pi / 10)) / 2)
    assert [stage_lr("constant", 0.5, step, 10) for step in range(10)] == [0.5] * 10


def test_an_unknown_schedule_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"^lr_schedule 'linear': expected one of"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ConfigError, match=r"^pretrain_lr_schedule 'step': expected one of"):
        TrainConfig(pretrain_lr_schedule="step")


@pytest.mark.parametrize(
    ("pretrain_schedule", "expected"), [(None, "cosine"), ("constant", "constant")]
)
def test_the_ordinary_stage_takes_lr_schedule_unless_given_its_own(pretrain_schedule, expected):
    config = TrainConfig(
        pretrain_epochs=2, lr_schedule="cosine", pretrain_lr_schedule=pretrain_schedule
    )
    (_, _, _, ordinary), (_, _, _, meta) = MetaTrainRecipe(config).plan()
    assert (ordinary.lr_schedule, meta.lr_schedule) == (expected, "cosine")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lr_schedule")
    data = synthetic_files(folder, n_users=50, seed=3, n_items=60)
    return tiny_config_file(
        folder,
        data,
        pretrain_epochs=2,
        pretrain_lr=PRETRAIN_LR,
        outer_lr=OUTER_LR,
        pretrain_lr_schedule="cosine",
        state_every=1,
    )


@pytest.fixture(scope="module")
def whole_run(config_file, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("whole") / "run"
    status = metarec_main(["train", "--config", str(config_file), "--output-dir", str(output_dir)])
    assert status == 0
    return output_dir


def test_the_ordinary_stage_decays_and_the_meta_stage_keeps_its_rate(whole_run):
    """The rates every step used, read back from TensorBoard, against the closed form."""
    rates = tensorboard_scalars(whole_run, "train/lr")
    per_stage = len(rates) // 2  # two stages of two epochs of equal length
    assert len(rates) == 2 * per_stage and per_stage >= 4
    positions = np.arange(per_stage) / per_stage
    cosine = PRETRAIN_LR * (1 + np.cos(np.pi * positions)) / 2
    np.testing.assert_allclose(rates[:per_stage], cosine, rtol=1e-6)
    np.testing.assert_allclose(rates[per_stage:], OUTER_LR, rtol=1e-6)


def test_a_run_killed_mid_stage_resumes_onto_the_same_rates_and_weights(
    config_file, whole_run, tmp_path
):
    """SIGKILL after the ordinary stage's third step, halfway down its cosine, then --resume:
    the uninterrupted run's objectives, rates and adapter."""
    output_dir = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-m", "metarec", "train", "--config", str(config_file),
         "--output-dir", str(output_dir), "--kill-at-step", "0:3"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode != 0
    status = metarec_main(
        ["train", "--config", str(config_file), "--output-dir", str(output_dir), "--resume"]
    )
    assert status == 0
    for tag in ("train/objective", "train/lr"):
        np.testing.assert_allclose(
            tensorboard_scalars(output_dir, tag), tensorboard_scalars(whole_run, tag), rtol=1e-6
        )
    assert_same_adapter(whole_run, output_dir, atol=1e-6)
