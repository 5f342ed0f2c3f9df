"""Exact against approximate FAISS search: recall@100 and queries/s on 1M synthetic items.

Items and queries are drawn from one mixture of Gaussian clusters (learned item
embeddings are clustered; uniform noise would be the worst case for any index). The
exact answer is `IndexFlatIP`; IVF is swept over ``nprobe`` and HNSW over ``efSearch``.
Every index is built with `retrieval.index.build_index`, the code path of
`metarec index build`. The headline is the fastest approximate setting whose recall@100
reaches ``--target-recall``.

    python bench/faiss_retrieval.py --json faiss_retrieval.json
    python bench/faiss_retrieval.py --items 100000 --kinds ivf    # a quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
from gpu_common import clustered

from retrieval.index import IndexConfig, build_index


def timed_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Rows (Q, k) and queries/s, best of two runs."""
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        _, rows = index.search(queries, k)
        best = min(best, time.perf_counter() - started)
    return rows, len(queries) / best


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    pairs = zip(found, exact, strict=True)
    return float(np.mean([len(np.intersect1d(f, e)) / len(e) for f, e in pairs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=10_000, help="mixture components")
    parser.add_argument("--kinds", default="ivf,hnsw")
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--nprobes", default="8,16,32,64")
    parser.add_argument("--ef-searches", default="32,64,128,256")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    items = clustered(args.items, centres, 0.5, rng)
    queries = clustered(args.queries, centres, 0.5, rng)

    rows = []
    started = time.perf_counter()
    exact_index = build_index(items, IndexConfig(kind="flat"))
    build_seconds = {"flat": time.perf_counter() - started}
    exact, exact_qps = timed_search(exact_index, queries, args.k)
    rows.append({"index": "flat (exact)", "setting": "-", "recall@100": 1.0, "qps": exact_qps})
    del exact_index

    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    sweeps = {
        "ivf": ("nprobe", [int(v) for v in args.nprobes.split(",")]),
        "hnsw": ("efSearch", [int(v) for v in args.ef_searches.split(",")]),
    }
    for kind in kinds:
        config = IndexConfig(kind=kind, nlist=args.nlist, train_size=max(100_000, 40 * args.nlist))
        started = time.perf_counter()
        index = build_index(items, config)
        build_seconds[kind] = time.perf_counter() - started
        knob, values = sweeps[kind]
        for value in values:
            if kind == "ivf":
                index.nprobe = value
            else:
                index.hnsw.efSearch = value
            found, qps = timed_search(index, queries, args.k)
            rows.append(
                {"index": kind, "setting": f"{knob}={value}", "recall@100": recall(found, exact),
                 "qps": qps}
            )  # fmt: skip
        del index

    approximate = rows[1:]
    reaching = [row for row in approximate if row["recall@100"] >= args.target_recall]
    best = max(reaching, key=lambda row: row["qps"]) if reaching else max(
        approximate, key=lambda row: row["recall@100"]
    )  # fmt: skip
    print(f"{args.items:,} items x {args.dim} dims, {args.queries} queries, top-{args.k}")
    print("| index | setting | recall@100 | queries/s | x exact |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['index']} | {row['setting']} | {row['recall@100']:.4f} | "
            f"{row['qps']:.0f} | {row['qps'] / exact_qps:.1f} |"
        )
    print("build seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in build_seconds.items()))
    print(
        f"best: {best['index']} {best['setting']}: recall@100 {best['recall@100']:.4f} at "
        f"{best['qps'] / exact_qps:.1f}x the exact queries/s"
    )
    if args.json:
        result = {
            "items": args.items,
            "dim": args.dim,
            "queries": args.queries,
            "recall@100": best["recall@100"],
            "qps_ratio": best["qps"] / exact_qps,
            "best": best,
            "build_seconds": build_seconds,
            "rows": rows,
            "threads": faiss.omp_get_max_threads(),
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
