"""FLOPs per user of adapt + score and of a meta step, counted exactly, and what they bound.

Counts, with torch's FlopCounterMode, one batched pass of the rerank path
(`metarec.meta.personalise.adapted_states` from the LoRA initialisation, ``--inner-steps``
first-order steps on a ``--support``-item history, then scoring ``--candidates`` items or
the whole catalogue) and one meta-training step of the recipe (`MetaStepModule` forward and
backward on episodes of the config's support sizes and query size), per user, for each
catalogue size of ``--items``. The inner loop's next-item loss is a softmax over the whole
catalogue at every support position, so the catalogue size enters the adaptation cost, not
only the final scoring. Unless ``--no-time``, also times the adapt + score pass here (CPU
users/s). Prints the users/s a GPU of ``--peak-tflops`` would reach at 100%, 40% and 25% of
that peak: a FLOP bound, not a measurement.

    python bench/adapt_flops.py --config configs/quick.yaml --items 1682,100000
    python bench/adapt_flops.py --no-time --inner-steps 5 --set model.backbone.num_layers=30 \
        --set "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from gpu_common import (
    adapt_and_score,
    build_model,
    count_flops,
    histories,
    timed,
    training_config,
)

from metarec.data.episodes import collate
from metarec.meta.meta_step import MetaStepModule


def meta_step_flops(model, meta, raw: dict, n_users: int, n_items: int) -> float:
    """FLOPs per user of one meta step (forward and backward) on the config's episodes."""
    rng = np.random.default_rng(0)
    sizes = list(raw.get("support_sizes") or [5, 10, 20])
    query_size = int(raw.get("query_size") or 10)
    supports = [rng.choice(n_items, sizes[u % len(sizes)], replace=False) for u in range(n_users)]
    queries = [rng.choice(n_items, query_size, replace=False) for _ in range(n_users)]
    batch = collate(supports, queries, next(model.parameters()).device)
    module = MetaStepModule(model, meta, None)

    def step():
        module(batch.support, batch.support_lengths, batch.query).backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    return flops / n_users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/quick.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--backbone", default="smollm2-shape", help="or smollm2-135m, tiny-llama")
    parser.add_argument("--dtype", default="float32", help="of the backbone (FLOPs do not change)")
    parser.add_argument("--items", default="1682", help="catalogue sizes, comma-separated")
    parser.add_argument("--support", type=int, default=10)
    parser.add_argument("--inner-steps", type=int, help="default: the config's meta.inner_steps")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--users", type=int, default=16, help="users per counted pass")
    parser.add_argument("--peak-tflops", type=float, default=783.0, help="H100 bf16, measured")
    parser.add_argument("--no-time", action="store_true", help="count only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = torch.device("cpu")
    raw = training_config(args.config, args.set)
    users = histories(args.users, [args.support], min(int(n) for n in args.items.split(",")))
    results = []
    for n_items in [int(n) for n in args.items.split(",")]:
        model, meta, described = build_model(raw, args.backbone, args.dtype, n_items, device)
        steps = meta.inner_steps if args.inner_steps is None else args.inner_steps
        per_batch = int(raw.get("users_per_batch") or 32)  # the item side is computed per batch
        meta_flops = meta_step_flops(model, meta, raw, per_batch, n_items)
        with model.frozen_item_vectors():

            def adapt(candidates=None, model=model, meta=meta, steps=steps):
                return adapt_and_score(model, meta, users, steps, candidates)

            flops = {
                "adapt_only": count_flops(lambda: adapt(0)),
                "candidates": count_flops(lambda: adapt(args.candidates)),
                "catalogue": count_flops(adapt),
            }
            seconds = None
            if not args.no_time:
                seconds, _ = timed(lambda: adapt(args.candidates), device, 3, 60.0)
        per_user = {key: value / args.users for key, value in flops.items()}
        results.append(
            {
                "items": n_items,
                "model": described,
                "inner_steps": steps,
                "gflop_per_user": {key: value / 1e9 for key, value in per_user.items()},
                "meta_step_gflop_per_user": meta_flops / 1e9,
                "meta_inner_steps": meta.inner_steps,
                "cpu_users_per_s_candidates": seconds and args.users / seconds,
                "cpu_threads": torch.get_num_threads(),
                "bound_users_per_s_candidates": {
                    f"{share:.0%}": share * args.peak_tflops * 1e12 / per_user["candidates"]
                    for share in (1.0, 0.4, 0.25)
                },
            }
        )
        del model

    first = results[0]
    print(
        f"support {args.support}, {first['inner_steps']} inner steps, {args.users} users "
        f"counted; meta step: {first['meta_inner_steps']} inner steps, "
        f"{raw.get('users_per_batch') or 32} users, support sizes "
        f"{raw.get('support_sizes')}, query {raw.get('query_size')}"
    )
    print(f"model: {first['model']}")
    print(
        f"| items | GFLOP/user adapt | + {args.candidates} candidates | + full catalogue | "
        f"meta step GFLOP/user | CPU users/s ({torch.get_num_threads()} threads) | "
        f"bound at {args.peak_tflops:g} TFLOP/s: 100% / 40% / 25% |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in results:
        gflop, bound = row["gflop_per_user"], row["bound_users_per_s_candidates"]
        rate = row["cpu_users_per_s_candidates"]
        print(
            f"| {row['items']:,} | {gflop['adapt_only']:.3f} | {gflop['candidates']:.3f} | "
            f"{gflop['catalogue']:.3f} | {row['meta_step_gflop_per_user']:.3f} | "
            + ("not timed" if rate is None else f"{rate:.3g}")
            + " | "
            + " / ".join(f"{value:,.0f}" for value in bound.values())
            + " |"
        )
    if args.json:
        options = vars(args).items()
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in options},
                    "rows": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
