"""Every step of metarec at 200k, 2M and 20M interactions: seconds and peak RSS of each.

For each size, a synthetic dataset shaped like ml-20m (`metarec data synth`: users in
proportion, a 27,000-item catalogue, power-law popularity and history lengths) goes
through the commands a user runs, each one a fresh process measured on its own (wall
seconds; peak RSS from ``wait4``):

- ``prepare``: `metarec data prepare` into an empty prepared cache (read, validate,
  dedup, k-core, save);
- ``pop``, ``itemknn``, ``ease``: `metarec evaluate` on the coldstart split (support 10)
  with full ranking; fit and evaluation seconds come from its JSON. EASE refuses above
  ``ease.max_items`` and the table shows the refusal;
- ``train``: `metarec train` with ``configs/quick.yaml`` capped at ``--train-steps`` meta
  steps; users/s is the meta stage's, and one epoch's time is extrapolated from it and the
  epoch's full batch count;
- ``index``: `metarec index build` from that run (the whole catalogue, chunked);
- ``rerank``: `metarec rerank` of ``--rerank-users`` users' histories, and of twice as
  many, so a peak RSS that grows with users shows;
- ``explain``: `metarec explain` of one user.

``--model-steps-only`` reruns train, index, rerank and explain on data already there.

The same train and rerank steps on ml-100k give the reference users/s. Prints one
Markdown table per size and the growth from the smallest to the largest size, and writes
everything to ``--json``.

    python bench/scale.py --interactions 200000,2000000,20000000 --work /tmp/scale \
        --json docs/bench_results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
ML20M_USERS_PER_INTERACTION = 140_000 / 20_000_000
CATALOGUE = 27_000
GOALS = {
    "prepare": "≤ 90 s, ≤ 4 GiB",
    "pop": "fit ≤ 5 min; eval ≤ 6 GiB",
    "itemknn": "fit ≤ 5 min; eval ≤ 6 GiB",
    "ease": "fit ≤ 5 min or refusal",
    "train": "users/s within 20% of ml-100k",
    "index": "RSS: the vectors only",
    "rerank": "≤ 4 GiB, flat in users; users/s within 20%",
    "rerank x2 users": "same RSS as rerank",
    "explain": "no dense items×items",
}


def measured(argv: list[str], log: Path) -> dict:
    """Run ``argv`` to completion; its wall seconds, peak RSS (GiB), exit status, last error."""
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    lines = log.read_text(errors="replace").strip().splitlines()
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,  # ru_maxrss is in KiB on Linux
        "exit": os.waitstatus_to_exitcode(status),
        "last_line": lines[-1] if lines else "",
        "command": " ".join(argv),
    }


def metarec(*args: str) -> list[str]:
    return [sys.executable, "-m", "metarec", *args]


def data_options(folder: Path, cache: Path) -> list[str]:
    """How `data synth`'s Parquet tables are read (the custom format's column options)."""
    return [
        "--dataset",
        "custom",
        "--interactions",
        str(folder / "interactions.parquet"),
        "--items",
        str(folder / "items.parquet"),
        "--time-col",
        "timestamp",
        "--rating-col",
        "rating",
        "--item-text-cols",
        "title,genres",
        "--cache-dir",
        str(cache),
    ]


def data_section(folder: Path, cache: Path) -> dict:
    return {
        "dataset": "custom",
        "interactions": str(folder / "interactions.parquet"),
        "items": str(folder / "items.parquet"),
        "time_col": "timestamp",
        "rating_col": "rating",
        "item_text_cols": ["title", "genres"],
        "cache_dir": str(cache),
    }


def train_config(work: Path, data: dict, steps: int) -> Path:
    """configs/quick.yaml on ``data``: no pretraining, one meta epoch capped at ``steps``."""
    config = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())
    config.update(data=data, pretrain_epochs=0, epochs=1, max_steps_per_epoch=steps, valid_users=64)
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sample_histories(folder: Path, users: int, path: Path) -> Path:
    """The first 10 interactions of ``users`` users spread over the dataset (raw ids)."""
    table = pd.read_parquet(folder / "interactions.parquet", columns=["user_id", "item_id"])
    chosen = table["user_id"].drop_duplicates().iloc[:: max(1, table["user_id"].nunique() // users)]
    picked = table[table["user_id"].isin(chosen.iloc[:users])].groupby("user_id").head(10)
    picked.to_parquet(path, index=False)
    return path


def train_figures(run: Path) -> dict:
    """users/s of the meta stage and the extrapolated epoch, from the run's metrics."""
    metrics = json.loads((run / "checkpoint" / "metrics.json").read_text())
    meta = [row for row in metrics if row.get("stage") == "meta" and "users_per_s" in row][-1]
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    users = meta["batches_in_epoch"] * config["users_per_batch"]
    return {
        "users_per_s": meta["users_per_s"],
        "epoch_batches": meta["batches_in_epoch"],
        "epoch_hours": users / meta["users_per_s"] / 3600,
    }


def rerank_users_per_s(log: Path) -> float:
    """The job's own users/s (adapt, retrieve, rescore; model loading excluded)."""
    found = re.findall(r"\(([\d.]+) users/s\)", log.read_text(errors="replace"))
    return float(found[-1]) if found else float("nan")


def downstream_steps(
    work: Path, data: dict, history_source: Path, args: argparse.Namespace
) -> dict[str, dict]:
    """train, index, rerank (two user counts) and explain on ``data``."""
    results: dict[str, dict] = {}
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    config = train_config(work, data, args.train_steps)
    results["train"] = measured(
        metarec("train", "--config", str(config), "--output-dir", str(run)), work / "train.log"
    )
    if results["train"]["exit"] != 0:
        return results
    results["train"].update(train_figures(run))
    index = work / "index"
    shutil.rmtree(index, ignore_errors=True)
    results["index"] = measured(
        metarec("index", "build", "--checkpoint", str(run), "--output", str(index)),
        work / "index.log",
    )
    for label, users in (("rerank", args.rerank_users), ("rerank x2 users", 2 * args.rerank_users)):
        output = work / label.replace(" ", "_")
        shutil.rmtree(output, ignore_errors=True)
        histories = sample_histories(history_source, users, work / f"histories_{users}.parquet")
        log = work / f"{label.replace(' ', '_')}.log"
        results[label] = measured(
            metarec(
                "rerank",
                "--checkpoint",
                str(run),
                "--index",
                str(index),
                "--output-dir",
                str(output),
                "--histories",
                str(histories),
            ),
            log,
        )
        if results[label]["exit"] == 0:
            results[label]["users_per_s"] = rerank_users_per_s(log)
    first_user = pd.read_parquet(work / f"histories_{args.rerank_users}.parquet")["user_id"].iloc[0]
    results["explain"] = measured(
        metarec("explain", "--checkpoint", str(run), "--user", str(first_user)),
        work / "explain.log",
    )
    return results


def size_steps(interactions: int, args: argparse.Namespace) -> dict[str, dict]:
    """Every step on a synthetic dataset of ``interactions`` interactions."""
    work = args.work / f"n{interactions}"
    work.mkdir(parents=True, exist_ok=True)
    folder, cache = work / "data", args.work / "cache"  # item text vectors are shared
    users = max(50, round(interactions * ML20M_USERS_PER_INTERACTION))
    results: dict[str, dict] = {}
    if not (folder / "interactions.parquet").is_file():
        results["synth"] = measured(
            metarec(
                "data",
                "synth",
                "--users",
                str(users),
                "--items",
                str(CATALOGUE),
                "--interactions",
                str(interactions),
                "--seed",
                "0",
                "--output",
                str(folder),
            ),
            work / "synth.log",
        )
    if not args.model_steps_only:
        results.update(data_steps(work, folder, cache))
    results.update(downstream_steps(work, data_section(folder, cache), folder, args))
    return results


def data_steps(work: Path, folder: Path, cache: Path) -> dict[str, dict]:
    """prepare, then pop, item-kNN and EASE evaluated on the prepared data."""
    results: dict[str, dict] = {}
    shutil.rmtree(cache / "prepared", ignore_errors=True)
    options = data_options(folder, cache)
    results["prepare"] = measured(metarec("data", "prepare", *options), work / "prepare.log")
    baselines = work / "baselines.yaml"
    baselines.write_text(
        yaml.safe_dump({"itemknn": {"neighbours": 100}, "ease": {"lambdas": [100.0, 500.0]}})
    )
    for method in ("pop", "itemknn", "ease"):
        output = work / f"{method}.json"
        output.unlink(missing_ok=True)
        results[method] = measured(
            metarec(
                "evaluate",
                *options,
                "--protocol",
                "coldstart",
                "--support-size",
                "10",
                "--methods",
                method,
                "--baselines-config",
                str(baselines),
                "--bootstrap-resamples",
                "200",
                "--output",
                str(output),
            ),
            work / f"{method}.log",
        )
        if results[method]["exit"] == 0:
            summary = json.loads(output.read_text())
            results[method].update(
                fit_seconds=summary["seconds"][method]["fit"],
                eval_seconds=summary["seconds"][method]["evaluate"],
                ndcg10=summary["methods"][method]["ndcg@10"],
                test_users=summary["n_test_users"],
            )
    return results


def reference_steps(args: argparse.Namespace) -> dict[str, dict]:
    """train and rerank on ml-100k with the same settings: the users/s to compare with."""
    work = args.work / "ml-100k"
    work.mkdir(parents=True, exist_ok=True)
    data = {"dataset": "ml-100k", "cache_dir": str(args.work / "cache")}
    if args.data_dir:
        data["data_dir"] = str(args.data_dir)
    raw = work / "raw"
    if not (raw / "interactions.parquet").is_file():
        raw.mkdir(exist_ok=True)
        columns = ["user_id", "item_id", "rating", "timestamp"]
        ratings = pd.read_csv(args.data_dir / "ml-100k" / "u.data", sep="\t", names=columns)
        ratings.to_parquet(raw / "interactions.parquet", index=False)
    steps = downstream_steps(work, data, raw, args)
    return {name: steps[name] for name in ("train", "rerank", "rerank x2 users") if name in steps}


def cell(result: dict | None, key: str, digits: int = 1) -> str:
    if result is None or key not in result:
        return "–"
    return f"{result[key]:.{digits}f}"


def table(label: str, results: dict[str, dict], reference: dict[str, dict]) -> str:
    lines = [
        f"### {label}",
        "",
        "| step | goal | seconds | peak RSS (GiB) | figures |",
        "|---|---|---|---|---|",
    ]
    for step, result in results.items():
        figures = ""
        if result["exit"] != 0:
            figures = f"exit {result['exit']}: {result['last_line'][:200]}"
        elif "fit_seconds" in result:
            figures = (
                f"fit {result['fit_seconds']:.1f} s, evaluate {result['eval_seconds']:.1f} "
                f"s ({result['test_users']:,} users), ndcg@10 {result['ndcg10']:.4f}"
            )
        elif "users_per_s" in result:
            figures = f"{result['users_per_s']:.2f} users/s"
            base = reference.get(step, {}).get("users_per_s")
            if base:
                figures += f" ({result['users_per_s'] / base:.2f}× ml-100k's {base:.2f})"
            if "epoch_hours" in result:
                figures += (
                    f"; one epoch ({result['epoch_batches']:,} steps) ≈ "
                    f"{result['epoch_hours']:.1f} h"
                )
        lines.append(
            f"| {step} | {GOALS.get(step, '')} | {cell(result, 'seconds')} | "
            f"{cell(result, 'peak_rss_gib', 2)} | {figures} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", default="200000,2000000,20000000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/metarec_scale"))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="holds ml-100k/ (the reference users/s)",
    )
    parser.add_argument("--train-steps", type=int, default=8, help="meta steps measured")
    parser.add_argument("--rerank-users", type=int, default=128)
    parser.add_argument(
        "--model-steps-only",
        action="store_true",
        help="skip prepare and the baselines: train, index, rerank and explain only",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    reference = reference_steps(args)
    print(table("ml-100k reference (quick config)", reference, {}), flush=True)
    by_size = {}
    for interactions in [int(n) for n in args.interactions.split(",")]:
        by_size[interactions] = size_steps(interactions, args)
        print(
            "\n" + table(f"{interactions:,} interactions", by_size[interactions], reference),
            flush=True,
        )
    sizes = sorted(by_size)
    if len(sizes) > 1:
        small, large = by_size[sizes[0]], by_size[sizes[-1]]
        factor = sizes[-1] / sizes[0]
        print(f"\n### Growth from {sizes[0]:,} to {sizes[-1]:,} interactions ({factor:.0f}×)\n")
        print("| step | seconds × | peak RSS × |\n|---|---|---|")
        for step in large:
            if step in small and small[step]["exit"] == 0 and large[step]["exit"] == 0:
                print(
                    f"| {step} | {large[step]['seconds'] / small[step]['seconds']:.1f} | "
                    f"{large[step]['peak_rss_gib'] / small[step]['peak_rss_gib']:.1f} |"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"reference": reference, "sizes": {str(n): r for n, r in by_size.items()}}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
