"""TrainedRun: the one owner of a trained run refuses jobs that would score its training users,
and its fingerprint names every weight file it scores with."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from metarec.cli import main
from metarec.config import from_mapping
from metarec.data.splits import coldstart_split
from metarec.errors import MetarecError
from metarec.trained_run import TrainConfig, TrainedRun
from train.meta_train import train


@pytest.fixture(scope="module")
def loo_run(trained_run, tmp_path_factory):
    """The shared tiny run's settings trained on the loo split (every user's history but
    its last two items), and an index of it."""
    folder, data, data_options = trained_run
    raw = (folder / "run" / "checkpoint" / "config.json").read_text()
    config = from_mapping(TrainConfig, json.loads(raw))
    output = tmp_path_factory.mktemp("loo")
    config = replace(
        config, data=data, protocol="loo", pretrain_epochs=0, output_dir=output / "run"
    )
    train(config)
    assert main(["index", "build", "--checkpoint", str(output / "run"), "--output",
                 str(output / "index"), *data_options]) == 0  # fmt: skip
    return output, data_options


@pytest.mark.parametrize(
    "command",
    [
        ["bandit", "--rounds", "2"],
        ["online", "--start", "4", "--events", "2"],
        ["rerank", "--split-users", "test", "--index", "{index}", "--output-dir", "{out}"],
    ],
    ids=["bandit", "online", "rerank"],
)
def test_a_loo_run_is_refused_by_cold_user_jobs(loo_run, tmp_path, capsys, command):
    output, data_options = loo_run
    filled = [part.format(index=output / "index", out=tmp_path / "out") for part in command]
    assert main([*filled, "--checkpoint", str(output / "run"), *data_options]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "trained on the loo split" in error[0] and "not coldstart" in error[0]


def test_a_run_whose_adapter_changed_after_indexing_is_refused(trained_run, tmp_path, capsys):
    folder, _, data_options = trained_run
    run = tmp_path / "run"
    shutil.copytree(folder / "run", run)
    before = TrainedRun(run).weights
    index = ["index", "build", "--checkpoint", str(run), "--output", str(tmp_path / "index")]
    assert main([*index, *data_options]) == 0
    adapter = run / "checkpoint" / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(adapter))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, str(adapter))
    # the other weights are untouched: only the adapter tells the runs apart
    after = TrainedRun(run).weights
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    rerank = ["rerank", "--checkpoint", str(run), "--index", str(tmp_path / "index"),
              "--output-dir", str(tmp_path / "out"), *data_options]  # fmt: skip
    assert main(rerank) == 2
    assert "built with encoder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "job.json").exists()


def test_the_run_split_is_the_protocol_split_of_its_seed(trained_run):
    folder, data, _ = trained_run
    run = TrainedRun(folder / "run", data)
    dataset = run.dataset
    for support in (5, 10):
        reference = coldstart_split(
            dataset.sequences(), dataset.n_items, support, run.config.query_size,
            run.config.split_seed,
        )  # fmt: skip
        split = run.split(support)
        for ours, theirs in ((split.test, reference.test), (split.valid, reference.valid)):
            assert [case.user for case in ours] == [case.user for case in theirs]
            for a, b in zip(ours, theirs, strict=True):
                np.testing.assert_array_equal(a.history, b.history)
                np.testing.assert_array_equal(a.relevant, b.relevant)


def test_other_data_and_another_split_seed_are_refused(trained_run, tmp_path):
    folder, data, _ = trained_run
    with pytest.raises(MetarecError, match=r"split seed 0 \(given 1\)"):
        TrainedRun(folder / "run", data).check_compatible("coldstart", split_seed=1)
    # the same file under another path is the same data: its content decides
    shutil.copy(data.interactions, tmp_path / "moved.csv")
    TrainedRun(folder / "run", replace(data, interactions=tmp_path / "moved.csv")).check_compatible(
        "coldstart"
    )
    # the same items, one interaction fewer: other interactions, other users' histories
    interactions = pd.read_csv(data.interactions)
    interactions.iloc[:-1].to_csv(tmp_path / "interactions.csv", index=False)
    fewer = replace(data, interactions=tmp_path / "interactions.csv")
    with pytest.raises(MetarecError, match="interactions fingerprint"):
        TrainedRun(folder / "run", fewer).check_compatible("coldstart")
    # the same interactions, one title changed: another items table
    items = pd.read_csv(data.items)
    items.loc[0, "text"] = items.loc[0, "text"] + " (director's cut)"
    items.to_csv(tmp_path / "items.csv", index=False)
    retitled = replace(data, items=tmp_path / "items.csv")
    with pytest.raises(MetarecError, match="another items table"):
        TrainedRun(folder / "run", retitled).dataset  # noqa: B018 (loading is the check)
