"""DeepSpeed configs: "auto" values come from the training config; contradictions stop the run."""

import json
from pathlib import Path

import pytest

from metarec.distributed.ds_config import load_ds_config, resolve_ds_config
from metarec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TRAINING = dict(users_per_batch=32, world_size=2, gradient_accumulation_steps=2, outer_lr=2e-4,
                gradient_clipping=1.0, precision="bf16")  # fmt: skip


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_shipped_configs_resolve_from_the_training_config(name):
    resolved = resolve_ds_config(load_ds_config(REPO / "ds_configs" / f"{name}.json"), **TRAINING)
    assert resolved["train_batch_size"] == 32
    assert resolved["train_micro_batch_size_per_gpu"] == 8  # 32 users / (2 ranks x 2 steps)
    assert resolved["gradient_accumulation_steps"] == 2
    assert resolved["optimizer"]["params"]["lr"] == 2e-4
    assert resolved["gradient_clipping"] == 1.0
    assert resolved["bf16"]["enabled"] is True and resolved["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(resolved)


def test_an_explicit_value_must_agree(tmp_path):
    config = load_ds_config(REPO / "ds_configs" / "zero2.json")
    config["optimizer"]["params"]["lr"] = 2e-4  # agrees: kept
    assert resolve_ds_config(config, **TRAINING)["optimizer"]["params"]["lr"] == 2e-4
    config["gradient_accumulation_steps"] = 4
    with pytest.raises(ConfigError, match="gradient_accumulation_steps is 4 but the training"):
        resolve_ds_config(config, **TRAINING, where="mine.json")


def test_users_must_split_evenly_and_files_must_parse(tmp_path):
    config = load_ds_config(REPO / "ds_configs" / "zero2.json")
    with pytest.raises(ConfigError, match="users_per_batch=30 does not split evenly over 2"):
        resolve_ds_config(config, **{**TRAINING, "users_per_batch": 30})
    broken = tmp_path / "broken.json"
    broken.write_text('{"train_batch_size": 8,\n  oops}')
    with pytest.raises(ConfigError, match=r"broken.json:2: not valid JSON"):
        load_ds_config(broken)
