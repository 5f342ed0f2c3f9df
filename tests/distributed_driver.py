"""Many trainings in one launch, for tests/test_distributed.py (not a test module itself).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_driver.py \\
        --config tiny.yaml --out DIR plain:maml zero2:fomaml:state ...

Each ``ENGINE:ALGORITHM[:state]`` trains the config with that meta-learning algorithm
under the plain engine (``plain``) or a ``ds_configs/<ENGINE>.json`` DeepSpeed config,
sequentially in one process group, into ``DIR/ENGINE-ALGORITHM`` (``:state`` adds
``state_every=1``); rank 0 writes the returned history there as ``history.json``. Starting
Python, torch and DeepSpeed once for all of them is what keeps the tests' wall time down.

With several ranks it first checks `metarec.distributed.state.require_shared_output_dir`
with one dir per rank (a filesystem the ranks do not share) and with one dir for all,
and writes the outcome to ``DIR/shared_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml

from metarec.config import from_mapping
from metarec.distributed.engine import DistributedConfig, init_process_group
from metarec.distributed.state import require_shared_output_dir
from metarec.errors import ConfigError
from train.meta_train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def check_shared(out: Path, rank: int) -> None:
    outcome = {}
    for name, folder in (("separate", out / f"rank{rank}-only"), ("shared", out / "shared")):
        try:
            require_shared_output_dir(folder)
            outcome[name] = None
        except ConfigError as err:
            outcome[name] = str(err)
        outcome[f"{name}_leftovers"] = sorted(p.name for p in folder.glob("*"))
    if rank == 0:
        (out / "shared_check.json").write_text(json.dumps(outcome))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    # positional: torchrun's own parser would take an abbreviated --run for --run-path
    parser.add_argument("runs", nargs="+", metavar="ENGINE:ALGORITHM[:state]")
    args = parser.parse_args()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    raw = yaml.safe_load(args.config.read_text())
    if world_size > 1:
        init_process_group(DistributedConfig(), world_size)
        check_shared(args.out, rank)
    for run in args.runs:
        engine, algorithm, *flags = run.split(":")
        output_dir = args.out / f"{engine}-{algorithm}"
        mapping = {
            **raw,
            "meta": {**raw["meta"], "algorithm": algorithm},
            "output_dir": str(output_dir),
            "state_every": 1 if "state" in flags else 0,
            "distributed": {"device": "cpu"},
        }
        if engine != "plain":
            mapping["distributed"]["deepspeed_config"] = str(REPO / "ds_configs" / f"{engine}.json")
        history = train(from_mapping(TrainConfig, mapping), launched_world_size=world_size)
        if rank == 0:
            (output_dir / "history.json").write_text(json.dumps(history))


if __name__ == "__main__":
    main()
