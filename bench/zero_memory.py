"""Peak memory per rank of SmolLM2 meta-training: 1 rank vs 2 ranks under ZeRO-3.

    python bench/zero_memory.py --data-dir ../shared/data --json zero_memory.json

Launches the meta-training recipe under torchrun (gloo on CPU, NCCL on GPUs) with the
same global batch for each rank count, resets each process's peak-RSS counter once the
model is built and sharded, runs a few meta steps, and reports the peak resident memory
(and CUDA peak allocation when on GPU) and tokens/s of every rank. The ratio is the
2-rank per-rank peak over the 1-rank peak; ZeRO-3 should bring it towards 0.5 as the
backbone dominates. The ranks run with a fixed glibc mmap threshold (``--mmap-threshold``)
so that freed gather buffers go back to the system instead of staying in the heap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def current_rss_mib() -> float:
    return _status_mib("VmRSS")


def worker(args: argparse.Namespace) -> None:
    """One rank: build the recipe, reset the peak counter, time ``--steps`` meta steps."""
    import numpy as np
    import torch
    import torch.distributed as dist

    from metarec.data.episodes import sample_episodes
    from metarec.data.prepare import DataConfig
    from metarec.distributed.engine import DistributedConfig
    from metarec.meta.algorithms import MetaConfig
    from metarec.models.backbone import BackboneConfig
    from metarec.models.lora import LoRAConfig
    from metarec.models.user_model import UserModelConfig
    from train.meta_train import MetaTrainRecipe, TrainConfig

    config = TrainConfig(
        data=DataConfig(dataset="ml-100k", data_dir=args.data_dir, cache_dir=args.cache_dir),
        model=UserModelConfig(
            backbone=BackboneConfig(name="smollm2-135m", num_layers=args.layers),
            lora=LoRAConfig(rank=8, alpha=16.0, target_modules=["q_proj", "v_proj"]),
        ),
        meta=MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.1),
        support_sizes=[args.support],
        users_per_batch=args.users,
        distributed=DistributedConfig(deepspeed_config=REPO / "ds_configs" / "zero3.json"),
        output_dir=Path(args.output) / "run",
    )
    recipe = MetaTrainRecipe(config, int(os.environ["WORLD_SIZE"]))
    recipe.setup()
    setup_rss = current_rss_mib()
    episodes = sample_episodes(
        recipe.split.train_sequences, [args.support], 10, np.random.default_rng(0)
    )
    recipe.meta_step(episodes[: args.users])  # warm-up: allocator pools, lazy buffers
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        recipe.meta_step(episodes[step * args.users : (step + 1) * args.users])
    seconds = time.perf_counter() - started
    # tokens one rank pushes through the backbone: its users' supports, once per inner
    # step and once more for the query loss
    tokens = args.steps * (args.users // recipe.world_size) * args.support * 3
    row = {
        "rank": recipe.rank,
        "rss_after_setup_mib": setup_rss,
        "peak_rss_mib": peak_rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
        "tokens_per_s": tokens / seconds,
        "step_s": seconds / args.steps,
    }
    rows = [None] * recipe.world_size
    dist.all_gather_object(rows, row)
    if recipe.rank == 0:
        Path(args.output, "ranks.json").write_text(json.dumps(rows))
    recipe.cleanup()


def launch(args: argparse.Namespace, ranks: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as output:
        command = [
            str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(ranks),
            __file__, "--worker", "--output", output, "--data-dir", str(args.data_dir),
            "--cache-dir", str(args.cache_dir), "--users", str(args.users),
            "--support", str(args.support), "--steps", str(args.steps),
        ]  # fmt: skip
        if args.layers:
            command += ["--layers", str(args.layers)]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks))}
        if args.mmap_threshold > 0:
            # glibc otherwise raises its mmap threshold after the first large free and then
            # keeps every freed ZeRO-3 gather buffer in the heap: RSS grows with each layer
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        subprocess.run(command, check=True, env=env)
        return json.loads(Path(output, "ranks.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/metarec").expanduser())
    parser.add_argument("--layers", type=int, help="keep the first N layers (default: all 30)")
    parser.add_argument("--users", type=int, default=8, help="global users per meta step")
    parser.add_argument("--support", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--mmap-threshold", type=int, default=65536,
        help="glibc MALLOC_MMAP_THRESHOLD_ for the ranks (0: the allocator's default)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results = {ranks: launch(args, ranks) for ranks in (1, 2)}
    print(
        "| ranks | rank | RSS after setup MiB | peak RSS MiB | CUDA peak MiB | tokens/s | s/step |"
    )
    print("|---|---|---|---|---|---|---|")
    for ranks, rows in results.items():
        for row in rows:
            cuda = "–" if row["cuda_peak_mib"] is None else f"{row['cuda_peak_mib']:.0f}"
            print(f"| {ranks} | {row['rank']} | {row['rss_after_setup_mib']:.0f} | "
                  f"{row['peak_rss_mib']:.0f} | {cuda} | "
                  f"{row['tokens_per_s']:.0f} | {row['step_s']:.2f} |")  # fmt: skip
    ratio = max(r["peak_rss_mib"] for r in results[2]) / results[1][0]["peak_rss_mib"]
    print(f"\nper-rank peak RSS, 2 ranks / 1 rank: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"ranks": results, "peak_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
