"""Achieved FLOP/s of a meta-training step against this machine's measured matmul peak.

Counts the floating-point work of one FOMAML meta step exactly (torch's FlopCounterMode),
times the same step, and divides; the peak is a large fp32 matmul timed in the same run.
It also times the obvious alternative to the batched inner loop, the same users one at a
time, and prints where the step's time goes (top operators by self time).

    python bench/meta_train_flops.py                       # SmolLM2-135M, first 4 layers
    python bench/meta_train_flops.py --backbone tiny-llama --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from metarec.data.episodes import collate
from metarec.meta.algorithms import MetaConfig
from metarec.meta.meta_step import MetaStepModule
from metarec.models.backbone import BackboneConfig, load_backbone
from metarec.models.lora import LoRAConfig
from metarec.models.user_model import UserModel, UserModelConfig


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul FLOP/s (best of ``repeats``) on square ``size`` matrices."""
    left, right = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def meta_step(model, meta, episodes, optimizer) -> None:
    """One meta step exactly as the recipe takes it (`MetaStepModule`), plain Adam."""
    batch = collate([s for s, _ in episodes], [q for _, q in episodes])
    objective = MetaStepModule(model, meta, None)(batch.support, batch.support_lengths, batch.query)
    optimizer.zero_grad()
    objective.backward()
    optimizer.step()


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--support", type=int, default=10)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--inner-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.manual_seed(0)
    layers = None if args.backbone == "tiny-llama" else args.num_layers
    config = UserModelConfig(
        backbone=BackboneConfig(name=args.backbone, num_layers=layers),
        lora=LoRAConfig(rank=8, alpha=16.0, target_modules=["q_proj", "v_proj"]),
        text_encoder="none",
    )
    model = UserModel(config, load_backbone(config.backbone), None, args.items)
    meta = MetaConfig(algorithm="fomaml", inner_steps=args.inner_steps, inner_lr=0.05)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rng = np.random.default_rng(0)
    episodes = [
        (rng.choice(args.items, args.support, replace=False), rng.choice(args.items, 10))
        for _ in range(args.users)
    ]

    with FlopCounterMode(display=False) as counter:
        meta_step(model, meta, episodes, optimizer)
    flops = counter.get_total_flops()
    batched = timed(lambda: meta_step(model, meta, episodes, optimizer), args.repeats)
    one_at_a_time = timed(
        lambda: [meta_step(model, meta, [episode], optimizer) for episode in episodes], 1
    )
    peak = matmul_peak()
    with torch.profiler.profile() as profiler:
        meta_step(model, meta, episodes, optimizer)
    operators = profiler.key_averages()
    total = sum(op.self_cpu_time_total for op in operators)
    top = sorted(operators, key=lambda op: -op.self_cpu_time_total)[:8]

    results = {
        "backbone": args.backbone,
        "num_layers": model.backbone.config.num_hidden_layers,
        "users_per_step": args.users,
        "gflop_per_step": flops / 1e9,
        "step_seconds": batched,
        "achieved_gflops": flops / batched / 1e9,
        "peak_gflops": peak / 1e9,
        "fraction_of_peak": flops / batched / peak,
        "users_per_s_batched": args.users / batched,
        "users_per_s_one_at_a_time": args.users / one_at_a_time,
        "speedup": one_at_a_time / batched,
        "time_by_operator": {op.key: op.self_cpu_time_total / total for op in top},
    }
    print("| measure | value |\n|---|---|")
    for key, value in results.items():
        if key != "time_by_operator":
            print(
                f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
            )
    print("\n| operator | share of step time |\n|---|---|")
    for name, share in results["time_by_operator"].items():
        print(f"| {name} | {share:.1%} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
