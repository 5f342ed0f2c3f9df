"""Users/s of the batched rerank path against a per-user peft loop, same users and model.

Both paths adapt each user from the run's meta-learned LoRA initialisation with the same
inner steps and learning rate, retrieve from the same FAISS index by the adapted state,
drop the history's items and score the candidates. The batched path is the rerank job's
(`retrieval.rerank.rerank_batch`: stacked fast weights, ``--batch-size`` users per
pass); the alternative loads the run's peft adapter into a stock peft model for every
user and runs torch SGD on that user alone (`metarec.meta.peft_loop`).
``max_abs_score_diff`` compares the two paths' scores of the batched path's top-K items.

    python bench/rerank_throughput.py --checkpoint runs/demo --data-dir ../shared/data \
        --users 256 --json rerank_throughput.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metarec.data.prepare import DataConfig
from metarec.meta.peft_loop import PeftUserLoop
from metarec.trained_run import TrainedRun
from retrieval.build import IndexBuildConfig, build_catalogue_index
from retrieval.index import IndexConfig, load_index
from retrieval.rerank import rerank_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="metarec train run dir")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/metarec"))
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--history", type=int, default=10, help="first N items of each user")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = DataConfig(data_dir=args.data_dir, cache_dir=args.cache_dir)
    run = TrainedRun(args.checkpoint, data)
    method, dataset = run.recommender(), run.dataset
    with tempfile.TemporaryDirectory() as scratch:
        index_dir = Path(scratch) / "index"
        build_catalogue_index(
            IndexBuildConfig(index_dir, IndexConfig("flat"), args.checkpoint, data)
        )
        index = load_index(index_dir)
    histories = [s[: args.history] for s in dataset.sequences()[: args.users]]

    started = time.perf_counter()
    with method.model.frozen_item_vectors():
        batched = [
            rerank_batch(
                method, index, histories[i : i + args.batch_size], args.candidates, args.top_k
            )
            for i in range(0, len(histories), args.batch_size)
        ]
    batched_seconds = time.perf_counter() - started
    batched_items = np.concatenate([items for items, _ in batched])
    batched_scores = np.concatenate([scores for _, scores in batched])

    loop = PeftUserLoop(method.model, args.checkpoint / "checkpoint" / "adapter", method.meta)
    differences, same_lists = [], 0
    started = time.perf_counter()
    with loop.model.frozen_item_vectors():
        for user, history in enumerate(histories):
            state = loop.adapted_state(history, method.inner_steps)
            found, _ = index.search_rows(state[None].numpy(), args.candidates + len(history))
            found = found[0][(found[0] >= 0) & ~np.isin(found[0], history)][: args.candidates]
            scores = loop.scores(state, found)
            top = found[np.lexsort((found, -scores))[: args.top_k]]
            same_lists += int(np.array_equal(top, batched_items[user]))
            reference = loop.scores(state, batched_items[user])
            differences.append(np.abs(reference - batched_scores[user]).max())
    loop_seconds = time.perf_counter() - started

    result = {
        "users": len(histories),
        "history": args.history,
        "inner_steps": method.inner_steps,
        "layers": method.model.backbone.config.num_hidden_layers,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "users_per_s_batched": len(histories) / batched_seconds,
        "users_per_s_loop": len(histories) / loop_seconds,
        "speedup": loop_seconds / batched_seconds,
        "max_abs_score_diff": float(max(differences)),
        "same_top_k_fraction": same_lists / len(histories),
    }
    print("| path | users/s | seconds |")
    print("|---|---|---|")
    print(f"| per-user peft loop | {result['users_per_s_loop']:.2f} | {loop_seconds:.1f} |")
    print(f"| batched (rerank job) | {result['users_per_s_batched']:.2f} | {batched_seconds:.1f} |")
    print(
        f"speedup {result['speedup']:.1f}x; max |score diff| {result['max_abs_score_diff']:.2e}; "
        f"identical top-{args.top_k} lists for {result['same_top_k_fraction']:.1%} of users"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
