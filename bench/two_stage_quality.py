"""What retrieval + rerank loses against scoring the whole catalogue with the same model.

On the run's coldstart test users (support ``--support-size``, the next 10 items
relevant): the full path adapts each user and ranks every catalogue item; the two-stage
path (the rerank job's `retrieval.rerank.rerank_batch`) adapts the same way, retrieves
``--candidates`` items from a FAISS index by the adapted state and rescores only those.
Both rank the history out. ndcg@10 and users/s for each index kind, plus the time of
the scoring stage alone (adaptation excluded), where the two paths differ.

    python bench/two_stage_quality.py --checkpoint runs/ml100k_smollm2 \
        --data-dir ../shared/data --json two_stage.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metarec.data.episodes import collate
from metarec.data.prepare import DataConfig
from metarec.eval.metrics import metrics_at_k
from metarec.meta.personalise import adapted_states
from metarec.trained_run import TrainedRun
from retrieval.build import IndexBuildConfig, build_catalogue_index
from retrieval.index import IndexConfig, load_index
from retrieval.rerank import rerank_batch

K = 10


def ndcg_of_lists(lists: np.ndarray, relevant: list[np.ndarray]) -> np.ndarray:
    """Per-user ndcg@10 of (U, ≥10) ranked item lists against each user's relevant items."""
    width = max(len(r) for r in relevant)
    ranks = np.full((len(lists), width), np.inf)
    for row, (items, wanted) in enumerate(zip(lists, relevant, strict=True)):
        position = {item: rank for rank, item in enumerate(items, start=1)}
        ranks[row, : len(wanted)] = [position.get(item, K + 1) for item in wanted]
    return metrics_at_k(ranks, K)[f"ndcg@{K}"]


def full_top_k(scores: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
    """(U, K) best items of (U, N) scores, history excluded, ties to the lower index."""
    lists = []
    for user_scores, history in zip(scores, histories, strict=True):
        user_scores = user_scores.copy()
        user_scores[history] = -np.inf
        lists.append(np.lexsort((np.arange(len(user_scores)), -user_scores))[:K])
    return np.array(lists)


def adapted_state_matrix(method, histories: list[np.ndarray], batch_size: int) -> torch.Tensor:
    """(U, item_dim) adapted states of every user, ``batch_size`` users at a time."""
    parts = []
    for start in range(0, len(histories), batch_size):
        part = histories[start : start + batch_size]
        batch = collate(part, [np.empty(0, dtype=np.int64)] * len(part))
        parts.append(
            adapted_states(method.model, batch, method.meta, method.rates, method.inner_steps)
        )
    return torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="coldstart run dir")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/metarec"))
    parser.add_argument("--support-size", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--kinds", default="flat,ivf,ivfpq,hnsw")
    parser.add_argument("--nlist", type=int, default=32, help="ivf*: about sqrt(items)")
    parser.add_argument("--nprobe", type=int, default=4)
    parser.add_argument("--pq-m", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data = DataConfig(data_dir=args.data_dir, cache_dir=args.cache_dir)
    run = TrainedRun(args.checkpoint, data)
    run.check_compatible("coldstart")
    method, dataset, split = run.recommender(), run.dataset, run.split(args.support_size)
    histories = [case.history for case in split.test]
    relevant = [case.relevant for case in split.test]
    batches = range(0, len(histories), args.batch_size)
    model = method.model

    rows = []
    with model.frozen_item_vectors():
        started = time.perf_counter()
        scores = method.score(histories)
        full_lists = full_top_k(scores, histories)
        full_seconds = time.perf_counter() - started
        full_ndcg = ndcg_of_lists(full_lists, relevant)
        states = adapted_state_matrix(method, histories, args.batch_size)
        started = time.perf_counter()
        full_top_k((states @ model.item_vectors().T).numpy(), histories)
        full_scoring = time.perf_counter() - started
        rows.append(
            {"path": "full catalogue", "ndcg@10": float(full_ndcg.mean()),
             "users_per_s": len(histories) / full_seconds, "scoring_ms": 1e3 * full_scoring}
        )  # fmt: skip
        for kind in [kind.strip() for kind in args.kinds.split(",") if kind.strip()]:
            config = IndexConfig(kind=kind, nlist=args.nlist, nprobe=args.nprobe, pq_m=args.pq_m)
            with tempfile.TemporaryDirectory() as scratch:
                folder = Path(scratch) / "index"
                build_catalogue_index(IndexBuildConfig(folder, config, args.checkpoint, data))
                index = load_index(folder)
            started = time.perf_counter()
            lists = np.concatenate(
                [
                    rerank_batch(method, index, histories[i : i + args.batch_size],
                                 args.candidates, K)[0]
                    for i in batches
                ]
            )  # fmt: skip
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            found, _ = index.search_rows(states.numpy(), args.candidates + args.support_size)
            with torch.no_grad():
                candidate_vectors = model.item_vectors(torch.from_numpy(found.clip(min=0)))
                torch.einsum("ud,und->un", states, candidate_vectors)
            scoring = time.perf_counter() - started
            ndcg = ndcg_of_lists(lists, relevant)
            rows.append(
                {"path": f"{kind} + rerank", "ndcg@10": float(ndcg.mean()),
                 "users_per_s": len(histories) / seconds, "scoring_ms": 1e3 * scoring,
                 "same_top10_fraction": float(np.mean((lists == full_lists).all(axis=1)))}
            )  # fmt: skip

    full = rows[0]
    print(
        f"{len(histories)} coldstart test users, support {args.support_size}, "
        f"{dataset.n_items} items, {args.candidates} candidates"
    )
    print("| path | ndcg@10 | lost vs full | users/s | scoring stage ms | same top-10 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        row["ndcg_lost_fraction"] = 1 - row["ndcg@10"] / full["ndcg@10"]
        print(
            f"| {row['path']} | {row['ndcg@10']:.4f} | {row['ndcg_lost_fraction']:.2%} | "
            f"{row['users_per_s']:.1f} | {row['scoring_ms']:.1f} | "
            f"{row.get('same_top10_fraction', 1.0):.1%} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"users": len(histories), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
