"""The cold-start table of the LLM methods against the baselines over split seeds, in one command.

    python bench/coldstart_llm.py --config configs/ml100k_smollm2.yaml \
        --run-dir runs/ml100k_smollm2 --split-seeds 0,1,2 --json runs/ml100k_smollm2/table.json

For each split seed, trains a meta-lora run on that seed's meta-train users (its
``pretrain_epochs`` stage is the llm-noadapt run) and evaluates the baselines
(``--baselines``) and llm-noadapt, llm-finetune, meta-lora on ``coldstart`` at each support
size, keeping every test user's metrics. The table gives each method's ndcg@10 as the mean
over the seeds of each seed's mean (and each seed's figure); below it, meta-lora against the
best other method: their ratio and a paired bootstrap 95% CI of meta-lora − best other, over
the (seed, test user) pairs pooled across seeds.

The baselines and the LLM methods are evaluated separately, and results already there are
reused (the command continues where it stopped): a seed's baseline results in
``--baselines-dir`` (``seed<S>/baselines_s<K>.parquet`` holding every asked-for method), so
settings of the LLM compared on the same seeds share one baselines evaluation (``--no-llm``
makes just that; the baselines are deterministic given their seeds), and a seed whose LLM
results exist for every support size is neither trained nor evaluated again.

``--protocols sampled`` trains a second run on the ``loo`` split (``--sampled-set`` overrides
apply to it only) and adds the ``sampled`` table (hr@1 over 20 candidates). Prints Markdown
and the wall time of every step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.cli import main as metarec
from metarec.eval.metrics import bootstrap_ci
from metarec.eval.report import comparison_table

LLM_METHODS = ["llm-noadapt", "llm-finetune", "meta-lora"]
METRIC = "ndcg@10"


def timed(step: str, argv: list[str], seconds: dict[str, float]) -> None:
    started = time.perf_counter()
    if metarec(argv) != 0:
        raise SystemExit(f"{step} failed: metarec {' '.join(argv)}")
    seconds[step] = time.perf_counter() - started


def evaluated(per_user_file: Path, methods: list[str]) -> bool:
    """Whether ``per_user_file`` exists and holds every one of ``methods``."""
    if not per_user_file.is_file():
        return False
    return set(methods) <= set(pd.read_parquet(per_user_file, columns=["method"])["method"])


def seed_means(per_user: pd.DataFrame) -> pd.DataFrame:
    """(method × seed) mean ndcg@10 of per-user rows with columns method, seed, user_id."""
    return per_user.pivot_table(index="method", columns="seed", values=METRIC, aggfunc="mean")


def paired_comparison(per_user: pd.DataFrame, methods: list[str], resamples: int) -> dict:
    """meta-lora against the other method with the highest mean over seeds.

    ``per_user``: one row per (method, seed, test user) of one support size. The
    difference is taken user by user within a seed (both methods ranked the same users),
    then pooled over seeds for the bootstrap.
    """
    means = seed_means(per_user).mean(axis=1)
    others = [name for name in methods if name != "meta-lora"]
    best = max(others, key=lambda name: means[name])
    wide = per_user.pivot_table(index=["seed", "user_id"], columns="method", values=METRIC)
    differences = (wide["meta-lora"] - wide[best]).to_numpy()
    low, high = bootstrap_ci(differences, resamples)
    return {
        "best_other": best,
        "ratio": float(means["meta-lora"] / means[best]),
        "difference": float(differences.mean()),
        "difference_ci": [low, high],
        "pairs": len(differences),
        "above_llm_finetune": bool(means["meta-lora"] > means.get("llm-finetune", -np.inf)),
    }


def seeds_table(per_user: dict[str, pd.DataFrame], methods: list[str]) -> str:
    """Markdown: mean over seeds (each seed's mean in brackets) per method and support size."""
    lines = ["| method | " + " | ".join(f"{METRIC} {name}" for name in per_user) + " |"]
    lines.append("|---|" + "---|" * len(per_user))
    means = {name: seed_means(frame) for name, frame in per_user.items()}
    for method in methods:
        cells = []
        for table in means.values():
            row = table.loc[method]
            seeds = " / ".join(f"{value:.4f}" for value in row)
            cells.append(f"{row.mean():.4f} ({seeds})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_table(comparisons: dict[str, dict]) -> str:
    header = "| support | best other | meta-lora / best | meta-lora − best (paired 95% CI)"
    lines = [header + " | pairs |", "|---|---|---|---|---|"]
    for name, found in comparisons.items():
        low, high = found["difference_ci"]
        lines.append(
            f"| {name} | {found['best_other']} | {found['ratio']:.3f}× | "
            f"{found['difference']:+.4f} [{low:+.4f}, {high:+.4f}] | {found['pairs']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--baselines", default="pop,itemknn,ease,sasrec")
    parser.add_argument("--baselines-config", help="baselines YAML, e.g. tune-baselines output")
    parser.add_argument(
        "--baselines-dir",
        type=Path,
        help="where the baselines' per-seed results are (reused when there; default --run-dir): "
        "runs of other LLM settings on the same seeds share one baselines evaluation",
    )
    parser.add_argument(
        "--no-llm", dest="llm", action="store_false", help="the baselines only (no training)"
    )
    parser.add_argument("--supports", default="5,10,20")
    parser.add_argument("--split-seeds", default="0", help="comma-separated, one run each")
    parser.add_argument("--protocols", default="coldstart,sampled")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], help="training override KEY=VALUE")
    parser.add_argument(
        "--sampled-set", action="append", default=[], help="override for the loo run only"
    )
    parser.add_argument("--json", type=Path, help="all results and timings as JSON")
    args = parser.parse_args()

    baselines = [name for name in args.baselines.split(",") if name]
    methods = baselines + (LLM_METHODS if args.llm else [])
    overrides = [flag for assignment in args.set for flag in ("--set", assignment)]
    tuned = args.baselines_config
    baselines_config = ["--baselines-config", tuned] if tuned else []
    seconds: dict[str, float] = {}
    results: dict[str, dict] = {}
    protocols = args.protocols.split(",")
    supports = args.supports.split(",") if "coldstart" in protocols else []
    seeds = [seed for seed in args.split_seeds.split(",") if seed]
    per_user: dict[str, list[pd.DataFrame]] = {f"support {s}": [] for s in supports}
    for seed in seeds if supports else []:
        seed_dir = args.run_dir / f"seed{seed}"
        run = seed_dir / "coldstart"
        llm_done = all(evaluated(seed_dir / f"llm_s{k}.parquet", LLM_METHODS) for k in supports)
        if args.llm and not llm_done:
            timed(f"seed {seed}: train", ["train", "--config", str(args.config), "--split-seed",
                  seed, "--output-dir", str(run), *overrides], seconds)  # fmt: skip
        for support in supports:
            protocol = ["--protocol", "coldstart", "--support-size", support, "--split-seed", seed]
            parts = {
                "baselines": (baselines, (args.baselines_dir or args.run_dir) / f"seed{seed}",
                              baselines_config),
                "llm": (LLM_METHODS if args.llm else [], seed_dir, ["--checkpoint", str(run)]),
            }  # fmt: skip
            for part, (names, folder, options) in parts.items():
                output = folder / f"{part}_s{support}.json"
                users = folder / f"{part}_s{support}.parquet"
                if names and not evaluated(users, names):
                    timed(f"seed {seed}: evaluate {part} support {support}", ["evaluate",
                          *protocol, "--methods", ",".join(names), "--output", str(output),
                          "--per-user-output", str(users), *options], seconds)  # fmt: skip
                if names:
                    results[f"seed_{seed}_support_{support}_{part}"] = json.loads(
                        output.read_text()
                    )
                    per_user[f"support {support}"].append(
                        pd.read_parquet(users).assign(seed=int(seed))
                    )
    pooled = {name: pd.concat(frames) for name, frames in per_user.items() if frames}
    comparisons = {
        name: paired_comparison(frame, methods, args.bootstrap_resamples)
        for name, frame in pooled.items()
        if args.llm
    }
    if pooled:
        print(f"split seeds {', '.join(seeds)}: mean over seeds (each seed's mean)\n")
        print(seeds_table(pooled, methods))
    if comparisons:
        print()
        print(comparisons_table(comparisons))
    if "sampled" in protocols:
        loo_run = args.run_dir / "loo"
        loo_overrides = [f for a in args.sampled_set for f in ("--set", a)]
        timed("train loo", ["train", "--config", str(args.config), "--output-dir",
              str(loo_run), "--set", "protocol=loo", *overrides, *loo_overrides],
              seconds)  # fmt: skip
        output = args.run_dir / "sampled.json"
        sampled_methods = [name for name in methods if name != "sasrec"]  # hours on loo here
        timed("evaluate sampled", ["evaluate", "--protocol", "sampled", "--methods",
              ",".join(sampled_methods), "--checkpoint", str(loo_run),
              "--output", str(output)], seconds)  # fmt: skip
        results["sampled"] = json.loads(output.read_text())
        print()
        print(comparison_table({"sampled hr@1": (results["sampled"], "hr@1")}, sampled_methods))

    print()
    print("| step | seconds |\n|---|---|")
    for step, value in seconds.items():
        print(f"| {step} | {value:.0f} |")
    print(f"| total | {sum(seconds.values()):.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"results": results, "comparisons": comparisons, "seconds": seconds}
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
