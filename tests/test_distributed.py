"""Real multi-process training: torchrun, gloo, DeepSpeed ZeRO-2/3, kill -9 and resume.

A tiny random-weight Llama on synthetic users (4 meta steps of 8 users per epoch). To keep
the wall time down, one torchrun launch of `tests/distributed_driver.py` on 1 rank and one on
2 ranks train every meta-learning algorithm under the plain engine and ZeRO-2 (and fomaml
under ZeRO-3) in sequence, and the tests compare what they wrote; the kill -9 tests launch
`launch/torchrun.sh` (so `python -m metarec train`) itself.
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
from conftest import (
    adapter,
    assert_same_adapter,
    synthetic_files,
    tensorboard_scalars,
    tiny_config_file,
)
from peft import PeftModel
from safetensors.torch import load_file

from metarec.cli import main as metarec_main
from metarec.config import from_mapping
from metarec.distributed.engine import DistributedConfig, LocalEngine
from metarec.distributed.state import first_blind_rank, require_shared_output_dir
from metarec.models.backbone import BackboneConfig, load_backbone
from train.meta_train import TrainConfig, train

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "proximal")
ENGINES = ("plain", "zero2")
# the launches below all run the DeepSpeed engine too; the in-process tests run without it
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason='needs DeepSpeed: pip install -e ".[deepspeed]"',
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    return tiny_config_file(folder, synthetic_files(folder, n_users=50, seed=3, n_items=60))


ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "DS_BUILD_OPS": "0",
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
}


def _run(command: list[str], check: bool, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return done


def launch(config_file, output_dir, processes, *extra, check=True):
    """``launch/torchrun.sh --nproc processes`` of the recipe; returns the finished process."""
    command = [
        "bash", str(REPO / "launch" / "torchrun.sh"), "--nproc", str(processes),
        "--master", f"127.0.0.1:{_free_port()}", "--",
        "--config", str(config_file), "--output-dir", str(output_dir), *extra,
    ]  # fmt: skip
    return _run(command, check)


def drive(config_file, out: Path, processes: int, runs: list[str]) -> subprocess.Popen:
    """Start one torchrun launch of tests/distributed_driver.py training every run in
    ``runs``; its output goes to ``out/launch.log``."""
    command = [
        str(TORCHRUN), "--nproc_per_node", str(processes), "--master_port", str(_free_port()),
        str(REPO / "tests" / "distributed_driver.py"), "--config", str(config_file),
        "--out", str(out), *runs,
    ]  # fmt: skip
    out.mkdir(parents=True)
    with (out / "launch.log").open("w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step_objectives(run_dir: Path) -> np.ndarray:
    return tensorboard_scalars(run_dir, "train/objective")


@pytest.fixture(scope="module")
def trajectories(config_file, tmp_path_factory) -> Path:
    """``<root>/<ranks>/<engine>-<algorithm>``: every algorithm under the plain engine and
    ZeRO-2, and fomaml under ZeRO-3, trained on 1 rank and on 2 (one launch each).

    The fomaml runs save a resumable state every step: the plain engine's has its files
    written by rank 0 alone, and the kill -9 tests resume against them.
    """
    root = tmp_path_factory.mktemp("trajectories")
    runs = [f"{engine}:{algorithm}" for engine in ENGINES for algorithm in ALGORITHMS]
    runs = [f"{run}:state" if run.endswith(":fomaml") else run for run in runs]
    runs.append("zero3:fomaml")
    # side by side: the 1-rank launch alone would leave the second CPU core idle
    launches = {n: drive(config_file, root / str(n), n, runs) for n in (1, 2)}
    try:
        for processes, launched in launches.items():
            if launched.wait(timeout=1800) != 0:
                log = (root / str(processes) / "launch.log").read_text()
                raise AssertionError(f"{processes}-rank driver launch failed:\n{log[-4000:]}")
    finally:
        for launched in launches.values():
            if launched.poll() is None:
                launched.kill()
    return root


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


@needs_deepspeed
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_two_ranks_match_one_rank(trajectories, engine, algorithm):
    one, two = (
        trajectories / "1" / f"{engine}-{algorithm}",
        trajectories / "2" / f"{engine}-{algorithm}",
    )
    steps_one, steps_two = step_objectives(one), step_objectives(two)
    assert len(steps_one) == len(steps_two) == 8  # 2 epochs x 4 meta steps
    assert np.isfinite(steps_one).all()
    np.testing.assert_allclose(steps_two, steps_one, rtol=1e-4)
    epochs_one, epochs_two = history(one), history(two)
    assert [row["epoch"] for row in epochs_one] == [row["epoch"] for row in epochs_two] == [1, 2]
    for row_one, row_two in zip(epochs_one, epochs_two, strict=True):
        for name in ("objective", "valid_query_loss_after", "valid_support_loss_after"):
            assert row_two[name] == pytest.approx(row_one[name], rel=1e-4), name
    assert_same_adapter(one, two, atol=1e-4)
    # the initialisation was trained: lora_B starts at zero
    assert max(t.abs().max() for n, t in adapter(two).items() if "lora_B" in n) > 0


@needs_deepspeed
def test_zero2_trains_what_the_plain_engine_trains(trajectories):
    """Second order included: ZeRO-2 gives the plain engine's adapter for every algorithm,
    and the algorithms really differ (maml's second-order term, proximal's pull to φ₀)."""
    two = trajectories / "2"
    for algorithm in ALGORITHMS:
        assert_same_adapter(two / f"plain-{algorithm}", two / f"zero2-{algorithm}", atol=1e-6)
    fomaml = adapter(two / "zero2-fomaml")
    for algorithm in ("maml", "proximal"):
        other = adapter(two / f"zero2-{algorithm}")
        assert max((other[n] - fomaml[n]).abs().max() for n in fomaml) > 1e-3, algorithm


@needs_deepspeed
def test_zero3_two_ranks_match_one_rank(trajectories):
    one, two = trajectories / "1" / "zero3-fomaml", trajectories / "2" / "zero3-fomaml"
    np.testing.assert_allclose(step_objectives(two), step_objectives(one), rtol=1e-4)
    assert_same_adapter(one, two, atol=1e-5)
    # the consolidated adapter (gathered from the ZeRO-3 shards) is a whole peft adapter
    backbone = load_backbone(BackboneConfig(name="tiny-llama"))
    peft_model = PeftModel.from_pretrained(backbone, str(two / "checkpoint" / "adapter"))
    saved = adapter(two)
    loaded = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) > 0
    for name, tensor in saved.items():
        peft_name = name.replace(".weight", ".default.weight")
        torch.testing.assert_close(loaded[peft_name].detach(), tensor)
    assert max(t.abs().max() for n, t in saved.items() if "lora_B" in n) > 0


@needs_deepspeed
def test_plain_engine_state_is_written_once(trajectories):
    """Two ranks, one state folder: the plain engine's files, each written by rank 0 alone."""
    states = sorted((trajectories / "2" / "plain-fomaml" / "state").glob("step-*"))
    assert [p.name for p in states] == ["step-00000007", "step-00000008"]  # keep_states=2
    names = sorted(p.name for p in states[-1].iterdir())
    assert names == ["client.json", "manifest.json", "optimizer.pt", "trainable.safetensors"]


def test_only_rank_zero_writes_the_plain_engine_state(tmp_path):
    engine = LocalEngine(torch.nn.Linear(2, 2), 0.01, DistributedConfig())
    engine.rank = 1
    engine.save_state(tmp_path)
    assert list(tmp_path.iterdir()) == []
    engine.rank = 0
    engine.save_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.pt", "trainable.safetensors"]


@needs_deepspeed
@pytest.mark.parametrize("engine", ENGINES)
def test_kill_one_rank_then_resume_equals_uninterrupted(
    config_file, trajectories, tmp_path, engine
):
    """launch/torchrun.sh --nproc 2, rank 1 killed by SIGKILL after step 3, then --resume:
    the uninterrupted run's trajectory and adapter (the driver's 2-rank fomaml run, which
    also saved a state every step)."""
    common = ["--set", "state_every=1"]
    if engine != "plain":
        common += [
            "--set",
            f"distributed.deepspeed_config={REPO / 'ds_configs' / f'{engine}.json'}",
        ]
    killed = launch(config_file, tmp_path / "cut", 2, *common, "--kill-at-step", "1:3", check=False)
    assert killed.returncode != 0  # rank 1 died by SIGKILL after saving step 3
    states = sorted(p.name for p in (tmp_path / "cut" / "state").glob("step-*"))
    assert states[-1] == "step-00000003"
    resumed = launch(config_file, tmp_path / "cut", 2, *common, "--resume")
    assert "resumed from" in resumed.stderr
    # steps 1-3 logged before the kill, 4-8 after the resume: the uninterrupted trajectory
    whole = trajectories / "2" / f"{engine}-fomaml"
    cut = step_objectives(tmp_path / "cut")
    assert len(cut) == 8
    np.testing.assert_allclose(cut, step_objectives(whole), rtol=1e-6)
    assert_same_adapter(whole, tmp_path / "cut", atol=1e-6)


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_zero3_refuses_second_order_before_any_work(config_file, tmp_path, capsys, algorithm):
    output_dir = tmp_path / "run"
    status = metarec_main([
        "train", "--config", str(config_file), "--output-dir", str(output_dir),
        "--set", f"distributed.deepspeed_config={REPO / 'ds_configs' / 'zero3.json'}",
        "--set", f"meta.algorithm={algorithm}",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith(
        f"metarec: error: meta.algorithm={algorithm} under ZeRO-3: second-order meta-gradients"
    )
    assert "use ZeRO-2 or a first-order algorithm" in err
    assert list(output_dir.iterdir()) == []  # no run.json, no TensorBoard, no state


def test_first_blind_rank():
    assert first_blind_rank([True]) is None
    assert first_blind_rank([True, True, True]) is None
    assert first_blind_rank([True, False, False]) == 1
    assert first_blind_rank([True, True, False]) == 2


def test_shared_output_check_is_a_no_op_in_one_process(tmp_path):
    require_shared_output_dir(tmp_path / "run")
    assert not (tmp_path / "run").exists()


@needs_deepspeed
def test_output_dir_not_shared_by_all_ranks_is_refused(trajectories):
    """The 2-rank driver checked one dir per rank (as on machines without a shared
    filesystem), then one dir for both."""
    outcome = json.loads((trajectories / "2" / "shared_check.json").read_text())
    separate = trajectories / "2" / "rank0-only"
    assert outcome["separate"] == (
        f"{separate} is not on a filesystem shared by all ranks (rank 1 does not see rank 0's "
        "files); resumable state (state_every, --resume) needs one output dir that every rank "
        "sees"
    )
    assert outcome["shared"] is None
    assert outcome["separate_leftovers"] == outcome["shared_leftovers"] == []  # marker removed


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
