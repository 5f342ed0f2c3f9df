"""Users/s and peak RSS of the rerank job at 1,682 and 1,000,000 items, at two user counts.

For each catalogue size the script makes (or reuses, under ``--work-dir``):

- a synthetic dataset whose every item is seen by ``--copies`` users, each user a fan of
  two of six topics and each item a topic's (so the item side's SVD start clusters by
  topic and fan set, as learned embeddings cluster, and an IVF index has lists to probe);
- a run of the ``configs/quick.yaml`` model (SmolLM2-135M cut to 4 layers, LoRA r=8 on
  q/v, 128-d items, 3 inner steps) trained by ``metarec train`` for one short epoch: its
  item side then knows every item, so the rerank job adapts, retrieves and rescores over
  the whole catalogue. Overrides, and why: ``text_encoder none`` (MiniLM would encode 1M
  titles for hours on this CPU, and the text vectors would be one more (N, 384) table),
  ``protocol loo`` (every user trains, so every item's id embedding starts from the SVD),
  8 users per step with support 10 (a step's (users, positions, items) training scores
  must fit in memory at 1M items), no pretraining, 8 validation users;
- an IVF index of the run (``metarec index build --kind ivf``), its peak RSS measured;
- a histories file of synthetic users (``--history`` items each, from two topics).

Then ``metarec rerank`` over the first N users of that file, for each N of ``--users``, each
in a subprocess of its own: users/s is the job's own count (model and index loaded, users
read: the scoring loop only); peak RSS is the child's ``ru_maxrss`` from ``wait4``, and the
peak while scoring the largest RSS sampled from ``/proc`` after the job wrote ``job.json``
(everything loaded; loading the model has a peak of its own). The trained weights are a
handful of steps from their start: quality means nothing here, only the work per user and
the memory. The user counts are small because at 1M items the inner loop's softmax over
the catalogue makes a user about ten times dearer; on the project's 2-core CPU the 1M run
trains in about 13 minutes, once, and the default jobs then take about 10 minutes.

    OMP_NUM_THREADS=1 python bench/rerank_scale.py --json rerank_scale.json
    python bench/rerank_scale.py --items 1682 --users 64,128    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TOPICS = 6
TOPICS_PER_USER = 2
# the quick model trained so that a step fits at 1M items (see the module docstring)
TRAIN_OVERRIDES = (
    "model.text_encoder=none",
    "protocol=loo",
    "users_per_batch=8",
    "support_sizes=[10]",
    "pretrain_epochs=0",
    "epochs=1",
    "valid_users=8",
)


def synthetic_interactions(
    n_items: int, n_users: int, copies: int, rng: np.random.Generator
) -> pd.DataFrame:
    """``copies`` distinct fans of its topic for every item; each user's items shuffled."""
    tastes = np.stack([rng.choice(TOPICS, TOPICS_PER_USER, replace=False) for _ in range(n_users)])
    parts = []
    for topic in range(TOPICS):
        fans = np.flatnonzero((tastes == topic).any(axis=1))
        items = np.arange(topic, n_items, TOPICS)
        chosen = rng.random((len(items), len(fans))).argsort(axis=1)[:, :copies]
        parts.append(
            pd.DataFrame({"user_id": fans[chosen].ravel(), "item_id": items.repeat(copies)})
        )
    table = pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=rng.integers(2**31))
    table["timestamp"] = table.groupby("user_id").cumcount()
    table["rating"] = 5.0
    return table.sort_values(["user_id", "timestamp"], ignore_index=True)


def synthetic_histories(
    n_items: int, n_users: int, length: int, rng: np.random.Generator
) -> pd.DataFrame:
    """``n_users`` new users, ``length`` distinct items each from two topics."""
    rows = []
    for user in range(n_users):
        topics = rng.choice(TOPICS, TOPICS_PER_USER, replace=False)
        topic = rng.choice(topics, length)
        slots = rng.choice(-(-n_items // TOPICS) - 1, length, replace=False)  # distinct slots
        rows.append(pd.DataFrame({"user_id": user, "item_id": slots * TOPICS + topic}))
    table = pd.concat(rows, ignore_index=True)
    table["timestamp"] = table.groupby("user_id").cumcount()
    return table[table["item_id"] < n_items]


def resident_gib(pid: int) -> float | None:
    """The process's resident set now (VmRSS), or None once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(kib[1]) / 2**20 if kib else None


def child(
    command: list[str], env: dict[str, str], log: Path, marker: Path | None = None
) -> tuple[str, float, float, float | None]:
    """Run ``python -m metarec.cli command``: its stdout, wall seconds, peak RSS (GiB), and
    the largest RSS sampled (every 0.2 s) once ``marker`` exists (GiB; None without one)."""
    started = time.perf_counter()
    with log.open("w") as errors, tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "metarec.cli", *command],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=errors,
            text=True,
        )
        after_marker = None
        while (reaped := os.wait4(process.pid, os.WNOHANG))[0] == 0:
            if marker is not None and marker.exists():
                now = resident_gib(process.pid) or 0.0
                after_marker = max(after_marker or 0.0, now)
            time.sleep(0.2)
        _, status, usage = reaped  # this child's own rusage, not that of every child
        output.seek(0)
        stdout = output.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"metarec {command[0]} failed ({status}); see {log}")
    return stdout, time.perf_counter() - started, usage.ru_maxrss / 2**20, after_marker  # KiB


def prepare(
    n_items: int, args: argparse.Namespace, env: dict[str, str]
) -> tuple[Path, Path, dict, Path]:
    """The run, index, index build's figures (kept beside it) and histories file of a size."""
    folder = args.work_dir / f"items-{n_items}"
    interactions = folder / "interactions.csv"
    if not interactions.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(args.seed)
        table = synthetic_interactions(n_items, args.train_users, args.copies, rng)
        table.to_csv(interactions, index=False)
    data = ["--dataset", "custom", "--interactions", str(interactions)]
    data += ["--cache-dir", str(folder / "cache")]
    run = folder / "run"
    if not (run / "checkpoint").is_dir():
        settings = [
            "data.dataset=custom", f"data.interactions={interactions}",
            f"data.cache_dir={folder / 'cache'}", *TRAIN_OVERRIDES,
        ]  # fmt: skip
        command = ["train", "--config", str(REPO / "configs" / "quick.yaml")]
        command += [part for setting in settings for part in ("--set", setting)]
        seconds = child([*command, "--output-dir", str(run)], env, folder / "train.log")[1]
        print(f"{n_items:,} items: trained in {seconds:.0f} s", flush=True)
    index, figures = folder / "index", folder / "index_build.json"
    if not (index / "metadata.json").is_file() or not figures.is_file():
        nlist, nprobe = (1024, 32) if n_items > 100_000 else (32, 4)
        command = ["index", "build", "--checkpoint", str(run), "--output", str(index)]
        command += ["--kind", "ivf", "--nlist", str(nlist), "--nprobe", str(nprobe), *data]
        shutil.rmtree(index, ignore_errors=True)
        _, seconds, rss, _ = child(command, env, folder / "index.log")
        build = {"seconds": seconds, "peak_rss_gib": rss, "nlist": nlist, "nprobe": nprobe}
        figures.write_text(json.dumps(build))
    build = json.loads(figures.read_text())
    histories = folder / "histories.csv"  # cheap: written afresh for this --users
    table = synthetic_histories(
        n_items, max(args.users), args.history, np.random.default_rng([args.seed, 1])
    )
    table.to_csv(histories, index=False)
    return run, index, build, histories


def rerank(
    n_items: int, n_users: int, paths: tuple, args: argparse.Namespace, env: dict[str, str]
) -> dict:
    """One rerank job over the first ``n_users`` users of the histories file."""
    run, index, _, histories = paths
    folder = args.work_dir / f"items-{n_items}"
    table = pd.read_csv(histories)
    users_file = folder / f"histories-{n_users}.csv"
    table[table["user_id"] < n_users].to_csv(users_file, index=False)
    output = folder / f"rerank-{n_users}"
    shutil.rmtree(output, ignore_errors=True)  # a fresh job, not the rest of an old one
    command = [
        "rerank", "--checkpoint", str(run), "--index", str(index), "--output-dir", str(output),
        "--histories", str(users_file), "--batch-size", str(args.batch_size),
        "--shard-users", str(args.shard_users), "--candidates", "100", "--top-k", "10",
    ]  # fmt: skip
    # the job writes job.json once the model, index and users are loaded, before scoring
    log = folder / f"rerank-{n_users}.log"
    stdout, wall, rss, scoring_rss = child(command, env, log, output / "job.json")
    scored = re.search(r"this run scored (\d+) users in ([\d.]+) s", stdout)
    if scored is None:
        raise SystemExit(f"no summary line in the rerank output: {stdout[-500:]}")
    users, seconds = int(scored[1]), float(scored[2])
    return {
        "items": n_items,
        "users": users,
        "users_per_s": users / seconds,
        "scoring_seconds": seconds,
        "wall_seconds": wall,
        "peak_rss_gib": rss,
        "scoring_rss_gib": scoring_rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="1682,1000000", help="catalogue sizes")
    parser.add_argument("--users", default="128,384", help="users per rerank job")
    parser.add_argument("--history", type=int, default=10, help="items per user")
    parser.add_argument("--train-users", type=int, default=96, help="users of the dataset")
    parser.add_argument("--copies", type=int, default=3, help="users who saw each item")
    parser.add_argument("--batch-size", type=int, default=32, help="users adapted together")
    parser.add_argument("--shard-users", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the jobs")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "rerank_scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.users = [int(n) for n in args.users.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    builds, jobs = {}, []
    for n_items in (int(n) for n in args.items.split(",")):
        paths = prepare(n_items, args, env)
        builds[n_items] = paths[2]
        for n_users in args.users:
            jobs.append(rerank(n_items, n_users, paths, args, env))
            print(json.dumps(jobs[-1]), flush=True)

    smallest = min(builds)
    print(
        f"\n| items | users | users/s | peak RSS GiB | peak RSS while scoring GiB | users/s vs "
        f"{smallest:,} | peak RSS vs {smallest:,} |"
    )
    print("|---|---|---|---|---|---|---|")
    for job in jobs:
        base = next(j for j in jobs if j["items"] == smallest and j["users"] == job["users"])
        print(
            f"| {job['items']:,} | {job['users']} | {job['users_per_s']:.2f} | "
            f"{job['peak_rss_gib']:.2f} | {job['scoring_rss_gib']:.2f} | "
            f"{job['users_per_s'] / base['users_per_s']:.3f}x | "
            f"{job['peak_rss_gib'] / base['peak_rss_gib']:.2f}x |"
        )
    for n_items, build in builds.items():
        print(
            f"index build, {n_items:,} items (ivf nlist {build['nlist']}, nprobe "
            f"{build['nprobe']}): {build['seconds']:.0f} s, "
            f"peak RSS {build['peak_rss_gib']:.2f} GiB"
        )
    if args.json:
        result = {"threads": args.threads, "history": args.history, "batch_size": args.batch_size}
        args.json.write_text(json.dumps({**result, "jobs": jobs, "index_builds": builds}, indent=2))


if __name__ == "__main__":
    main()
