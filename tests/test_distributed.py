"""Real multi-process training: torchrun, gloo, DeepSpeed ZeRO-2/3, kill -9 and resume.

Each test launches `python -m metarec train` under torchrun with a tiny random-weight Llama on
synthetic users (4 meta steps of 8 users per epoch) and compares what the processes wrote.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metarec.config import from_mapping
from metarec.data.synthetic import synthetic_raw
from metarec.models.backbone import BackboneConfig, load_backbone
from train.meta_train import TrainConfig, train

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
# the launches below all run the DeepSpeed engine; the corrupt-state test runs in-process without it
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason='needs DeepSpeed: pip install -e ".[deepspeed]"',
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    raw = synthetic_raw(n_users=50, n_items=60, seed=3)
    raw.write_csv(folder)
    config = {
        "data": {
            "dataset": "custom",
            "interactions": str(folder / "interactions.csv"),
            "items": str(folder / "items.csv"),
            "cache_dir": str(folder / "cache"),
        },
        "model": {
            "backbone": {"name": "tiny-llama"},
            "lora": {"rank": 4, "alpha": 8.0},
            "text_encoder": "none",
            "id_dim": 16,
            "item_dim": 16,
        },
        "meta": {"algorithm": "fomaml", "inner_steps": 2, "inner_lr": 0.5},
        "support_sizes": [5, 10],
        "users_per_batch": 8,
        "epochs": 2,
        "outer_lr": 0.003,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config_file, output_dir, processes, *extra, check=True):
    """torchrun ``processes`` ranks of the recipe; returns the finished process."""
    command = [
        str(TORCHRUN), "--nproc_per_node", str(processes), "--master_port", str(_free_port()),
        "-m", "metarec", "train", "--config", str(config_file),
        "--output-dir", str(output_dir), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_BUILD_OPS": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return done


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step_objectives(run_dir: Path) -> np.ndarray:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return np.array([event.value for event in events.Scalars("train/objective")])


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoint" / "adapter" / "adapter_model.safetensors"))


def assert_same_adapter(left: Path, right: Path, atol: float) -> None:
    ours, theirs = adapter(left), adapter(right)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=atol)


@needs_deepspeed
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_ranks_match_one_rank(config_file, tmp_path, zero):
    ds_config = f"distributed.deepspeed_config={REPO / 'ds_configs' / f'{zero}.json'}"
    launch(config_file, tmp_path / "one", 1, "--set", ds_config)
    launch(config_file, tmp_path / "two", 2, "--set", ds_config)
    one, two = step_objectives(tmp_path / "one"), step_objectives(tmp_path / "two")
    assert len(one) == 8 and len(two) == 8
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert_same_adapter(tmp_path / "one", tmp_path / "two", atol=1e-5)
    if zero == "zero3":
        # the consolidated adapter (gathered from the ZeRO-3 shards) is a whole peft adapter
        backbone = load_backbone(BackboneConfig(name="tiny-llama"))
        peft_model = PeftModel.from_pretrained(
            backbone, str(tmp_path / "two" / "checkpoint" / "adapter")
        )
        saved = adapter(tmp_path / "two")
        loaded = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
        assert len(loaded) == len(saved) > 0
        for name, tensor in saved.items():
            peft_name = name.replace(".weight", ".default.weight")
            torch.testing.assert_close(loaded[peft_name].detach(), tensor)
        assert max(t.abs().max() for n, t in saved.items() if "lora_B" in n) > 0


@needs_deepspeed
def test_kill_one_rank_then_resume_equals_uninterrupted(config_file, tmp_path):
    ds_config = f"distributed.deepspeed_config={REPO / 'ds_configs' / 'zero2.json'}"
    common = ["--set", ds_config, "--set", "state_every=1"]
    launch(config_file, tmp_path / "whole", 2, *common)
    killed = launch(config_file, tmp_path / "cut", 2, *common, "--kill-at-step", "1:3", check=False)
    assert killed.returncode != 0  # rank 1 died by SIGKILL after saving step 3
    states = sorted(p.name for p in (tmp_path / "cut" / "state").glob("step-*"))
    assert states[-1] == "step-00000003"
    resumed = launch(config_file, tmp_path / "cut", 2, *common, "--resume")
    assert "resumed from" in resumed.stderr
    # steps 1-3 logged before the kill, 4-8 after the resume: the uninterrupted trajectory
    whole, cut = step_objectives(tmp_path / "whole"), step_objectives(tmp_path / "cut")
    assert len(cut) == 8
    np.testing.assert_allclose(cut, whole, rtol=1e-6)
    assert_same_adapter(tmp_path / "whole", tmp_path / "cut", atol=1e-6)


def test_corrupt_state_is_refused_and_the_previous_one_used(config_file, tmp_path, capsys):
    raw = yaml.safe_load(config_file.read_text())
    config = from_mapping(TrainConfig, {**raw, "state_every": 1, "output_dir": str(tmp_path)})
    train(config)
    newest = sorted((tmp_path / "state").glob("step-*"))[-1]
    weights = newest / "trainable.safetensors"
    final_weights = {name: t.clone() for name, t in load_file(str(weights)).items()}  # not mmap
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a crash or a full disk
    config = from_mapping(TrainConfig, {**raw, "state_every": 1, "output_dir": str(tmp_path)})
    train(config, resume=True)
    message = capsys.readouterr().err
    assert f"{newest}: refused, trainable.safetensors does not match its SHA-256" in message
    assert "resumed from" in message and "step-00000007" in message
    # the step redone from the state before gives the same final weights
    for name, tensor in load_file(str(weights)).items():
        torch.testing.assert_close(tensor, final_weights[name], rtol=0, atol=1e-6)


@needs_deepspeed
def test_contradicting_deepspeed_config_is_an_error(config_file, tmp_path):
    ds_path = tmp_path / "zero2_fixed.json"
    ds = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    ds["train_batch_size"] = 16
    ds_path.write_text(json.dumps(ds))
    done = launch(config_file, tmp_path / "bad", 1, "--set",
                  f"distributed.deepspeed_config={ds_path}", check=False)  # fmt: skip
    assert done.returncode != 0
    assert "train_batch_size is 16 but the training config's users_per_batch gives 8" in (
        done.stderr
    )
