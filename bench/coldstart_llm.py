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

``--baseline-seeds 0,1,2`` fits each stochastic baseline (one with a ``seed`` in the
baselines YAML: SASRec) once per training seed on every split seed. Its per-user figure is
then the mean over those fits, so the table and the paired CI compare meta-lora with the
baseline's expected score, not with one lucky or unlucky fit; a second table gives each
training seed's mean over the split seeds and their mean ± sd. The fits other than the
YAML's own seed are written beside the baselines (``baselines_s<K>_train<T>.parquet``, from
``baselines_train<T>.yaml``: the YAML with the seed changed).

``--llm-seeds 0,1,2`` does the same for the LLM: a run per training seed (the config's
``seed``) on every split seed, the config's own seed in ``seed<S>/coldstart``, the others in
``seed<S>/coldstart_train<T>`` with results in ``llm_s<K>_train<T>.parquet``; llm-noadapt,
llm-finetune and meta-lora each get the per-user mean over their runs, and a row per
training seed in the second table. With more than one LLM seed, ``meta-lora-ensemble`` (the
runs of one split seed, each adapted on its own, their log-softmax averaged) gets its row and
its comparison with the best method other than meta-lora.

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
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from metarec.cli import main as metarec
from metarec.config import from_mapping, load_yaml
from metarec.eval.metrics import bootstrap_ci
from metarec.eval.report import comparison_table
from metarec.jobs.evaluate import ENSEMBLE_METHOD
from metarec.options import REPO_CONFIGS, Environment, config_mapping
from metarec.trained_run import TrainConfig

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


def stochastic_seeds(baselines_config: dict, names: list[str]) -> dict[str, int]:
    """The training seed of each of ``names`` that has one in the baselines YAML."""
    return {
        name: int(baselines_config[name]["seed"])
        for name in names
        if "seed" in (baselines_config.get(name) or {})
    }


def mean_over_fits(per_user: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, seed, user_id): each metric's mean over the method's fits.

    ``per_user`` has a ``fit`` column (the training seed) and may hold several fits of a
    method on the same users; a method fitted once keeps its own figures.
    """
    keys = ["method", "seed", "user_id"]
    return per_user.drop(columns="fit").groupby(keys, as_index=False).mean(numeric_only=True)


def training_seed_summary(per_user: pd.DataFrame, methods: list[str]) -> dict[str, dict]:
    """Per method: each training seed's mean over the split seeds (of each split's mean over
    its users), and the mean and sd of those. ``per_user`` as `mean_over_fits` takes it."""
    summary = {}
    for method in methods:
        rows = per_user[per_user.method == method]
        per_fit = rows.groupby(["fit", "seed"])[METRIC].mean().groupby(level="fit").mean()
        summary[method] = {
            "per_training_seed": {int(fit): float(value) for fit, value in per_fit.items()},
            "mean": float(per_fit.mean()),
            "sd": float(per_fit.std(ddof=1)) if len(per_fit) > 1 else 0.0,
        }
    return summary


def training_seeds_table(summaries: dict[str, dict[str, dict]]) -> str:
    """Markdown of `training_seed_summary` per support size."""
    lines = ["| method | support | per training seed (mean over split seeds) | mean ± sd |",
             "|---|---|---|---|"]  # fmt: skip
    for support, summary in summaries.items():
        for method, found in summary.items():
            seeds = " / ".join(f"{s}: {v:.4f}" for s, v in found["per_training_seed"].items())
            lines.append(
                f"| {method} | {support} | {seeds} | {found['mean']:.4f} ± {found['sd']:.4f} |"
            )
    return "\n".join(lines)


def paired_comparison(
    per_user: pd.DataFrame, methods: list[str], resamples: int, method: str = "meta-lora"
) -> dict:
    """``method`` (meta-lora or its ensemble) against the method with the highest mean over
    seeds other than those two.

    ``per_user``: one row per (method, seed, test user) of one support size. The
    difference is taken user by user within a seed (both methods ranked the same users),
    then pooled over seeds for the bootstrap.
    """
    means = seed_means(per_user).mean(axis=1)
    others = [name for name in methods if name not in ("meta-lora", ENSEMBLE_METHOD)]
    best = max(others, key=lambda name: means[name])
    wide = per_user.pivot_table(index=["seed", "user_id"], columns="method", values=METRIC)
    differences = (wide[method] - wide[best]).to_numpy()
    low, high = bootstrap_ci(differences, resamples)
    return {
        "best_other": best,
        "ratio": float(means[method] / means[best]),
        "difference": float(differences.mean()),
        "difference_ci": [low, high],
        "pairs": len(differences),
        "above_llm_finetune": bool(means[method] > means.get("llm-finetune", -np.inf)),
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


def comparisons_table(comparisons: dict[str, dict], method: str = "meta-lora") -> str:
    header = f"| support | best other | {method} / best | {method} − best (paired 95% CI)"
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
        "--baseline-seeds",
        default="",
        help="training seeds of the stochastic baselines (SASRec), e.g. 0,1,2: a fit per seed, "
        "their per-user mean in the tables; the YAML's own seed is always one (default: it alone)",
    )
    parser.add_argument(
        "--llm-seeds",
        default="",
        help="training seeds of the LLM run (the config's seed), e.g. 0,1,2: a run per seed, "
        "the LLM methods' per-user mean over them in the tables; the config's own seed is "
        "always one (default: it alone)",
    )
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
    baselines_yaml = load_yaml(Path(tuned) if tuned else REPO_CONFIGS / "baselines.yaml")
    own_seeds = stochastic_seeds(baselines_yaml, baselines)
    refits = {}  # training seed -> (its stochastic baselines, its baselines YAML)
    for fit in [int(seed) for seed in args.baseline_seeds.split(",") if seed]:
        names = [name for name, own in own_seeds.items() if own != fit]
        if names:
            changed = {**baselines_yaml, **{n: {**baselines_yaml[n], "seed": fit} for n in names}}
            path = (args.baselines_dir or args.run_dir) / f"baselines_train{fit}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(changed, sort_keys=False))
            refits[fit] = (names, ["--baselines-config", str(path)])
    train_mapping = config_mapping(
        args.config, args.set, None, None, Environment.from_variables(os.environ)
    )
    own_llm_seed = from_mapping(TrainConfig, train_mapping, where=str(args.config)).seed
    llm_runs = {own_llm_seed: ""}  # training seed -> suffix of its run dir and result files
    for fit in [int(seed) for seed in args.llm_seeds.split(",") if seed]:
        llm_runs.setdefault(fit, f"_train{fit}")
    ensemble = args.llm and len(llm_runs) > 1
    stochastic = list(own_seeds) + (LLM_METHODS if ensemble else [])
    methods += [ENSEMBLE_METHOD] if ensemble else []
    seconds: dict[str, float] = {}
    results: dict[str, dict] = {}
    protocols = args.protocols.split(",")
    supports = args.supports.split(",") if "coldstart" in protocols else []
    seeds = [seed for seed in args.split_seeds.split(",") if seed]
    per_user: dict[str, list[pd.DataFrame]] = {f"support {s}": [] for s in supports}
    for seed in seeds if supports else []:
        seed_dir = args.run_dir / f"seed{seed}"
        for fit, suffix in llm_runs.items() if args.llm else []:
            llm_done = all(
                evaluated(seed_dir / f"llm_s{k}{suffix}.parquet", LLM_METHODS) for k in supports
            )
            if not llm_done:
                timed(f"seed {seed}: train{suffix}", ["train", "--config", str(args.config),
                      "--split-seed", seed, "--output-dir", str(seed_dir / f"coldstart{suffix}"),
                      *overrides, "--set", f"seed={fit}"], seconds)  # fmt: skip
        for support in supports:
            protocol = ["--protocol", "coldstart", "--support-size", support, "--split-seed", seed]
            baselines_folder = (args.baselines_dir or args.run_dir) / f"seed{seed}"
            # part -> (its methods, folder, evaluate options, training seed of all its fits)
            parts = {
                f"baselines_s{support}": (baselines, baselines_folder, baselines_config, None),
                **{f"baselines_s{support}_train{fit}": (names, baselines_folder, options, fit)
                   for fit, (names, options) in refits.items()},
                **{f"llm_s{support}{suffix}": (LLM_METHODS if args.llm else [], seed_dir,
                   ["--checkpoint", str(seed_dir / f"coldstart{suffix}")], fit)
                   for fit, suffix in llm_runs.items()},
            }  # fmt: skip
            if ensemble:
                own, *others = [seed_dir / f"coldstart{suffix}" for suffix in llm_runs.values()]
                members = ["--checkpoint", str(own), "--ensemble-checkpoints",
                           ",".join(map(str, others))]  # fmt: skip
                parts[f"ensemble_s{support}"] = ([ENSEMBLE_METHOD], seed_dir, members, None)
            for part, (names, folder, options, fit) in parts.items():
                output = folder / f"{part}.json"
                users = folder / f"{part}.parquet"
                if names and not evaluated(users, names):
                    timed(f"seed {seed}: evaluate {part} support {support}", ["evaluate",
                          *protocol, "--methods", ",".join(names), "--output", str(output),
                          "--per-user-output", str(users), *options], seconds)  # fmt: skip
                if names:
                    results[f"seed_{seed}_{part}"] = json.loads(output.read_text())
                    frame = pd.read_parquet(users).assign(seed=int(seed))
                    frame["fit"] = frame["method"].map(own_seeds) if fit is None else fit
                    per_user[f"support {support}"].append(frame)
    fits = {name: pd.concat(frames) for name, frames in per_user.items() if frames}
    pooled = {name: mean_over_fits(frame) for name, frame in fits.items()}
    training_seeds = {
        name: training_seed_summary(frame, stochastic) for name, frame in fits.items()
    }
    comparisons = {
        name: paired_comparison(frame, methods, args.bootstrap_resamples)
        for name, frame in pooled.items()
        if args.llm
    }
    if pooled:
        print(f"split seeds {', '.join(seeds)}: mean over seeds (each seed's mean)\n")
        print(seeds_table(pooled, methods))
    ensemble_comparisons = {
        name: paired_comparison(frame, methods, args.bootstrap_resamples, ENSEMBLE_METHOD)
        for name, frame in pooled.items()
        if ensemble
    }
    if comparisons:
        print()
        print(comparisons_table(comparisons))
    if ensemble_comparisons:
        print()
        print(comparisons_table(ensemble_comparisons, ENSEMBLE_METHOD))
    if (refits or len(llm_runs) > 1) and pooled:
        print()
        print(training_seeds_table(training_seeds))
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
        summary = {
            "results": results,
            "comparisons": comparisons,
            "ensemble_comparisons": ensemble_comparisons,
            "training_seeds": training_seeds,
            "seconds": seconds,
        }
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
