"""The cold-start table of the LLM methods against the baselines, from one command.

    python bench/coldstart_llm.py --config configs/ml100k_smollm2.yaml \
        --run-dir runs/ml100k_smollm2 --json runs/ml100k_smollm2/table.json

Trains a meta-lora run (its ``pretrain_epochs`` stage is the llm-noadapt run), evaluates
pop/itemknn/sasrec (``--baselines``) and llm-noadapt, llm-finetune, meta-lora on
``coldstart`` at each support size, and for ``sampled`` trains a second run on the ``loo``
split (``--sampled-set`` overrides apply to it only) and adds the ``sampled`` column (hr@1
over 20 candidates). ``--protocols`` picks either or both. Prints a Markdown table (ndcg@10
with its 95% CI per support size) and the wall time of every step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from metarec.cli import main as metarec
from metarec.eval.report import comparison_table

LLM_METHODS = ["llm-noadapt", "llm-finetune", "meta-lora"]


def timed(step: str, argv: list[str], seconds: dict[str, float]) -> None:
    started = time.perf_counter()
    if metarec(argv) != 0:
        raise SystemExit(f"{step} failed: metarec {' '.join(argv)}")
    seconds[step] = time.perf_counter() - started


def table(results: dict[str, dict], methods: list[str]) -> str:
    columns = {
        f"ndcg@10 {name.replace('_', ' ')}": (summary, "ndcg@10")
        for name, summary in results.items()
        if name.startswith("support")
    }
    if "sampled" in results:
        columns["sampled hr@1"] = (results["sampled"], "hr@1")
    return comparison_table(columns, methods)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--baselines", default="pop,itemknn,sasrec")
    parser.add_argument("--supports", default="5,10,20")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--protocols", default="coldstart,sampled")
    parser.add_argument("--set", action="append", default=[], help="training override KEY=VALUE")
    parser.add_argument(
        "--sampled-set", action="append", default=[], help="override for the loo run only"
    )
    parser.add_argument("--json", type=Path, help="all results and timings as JSON")
    args = parser.parse_args()

    baselines = [name for name in args.baselines.split(",") if name]
    methods = baselines + LLM_METHODS
    overrides = [flag for assignment in args.set for flag in ("--set", assignment)]
    seconds: dict[str, float] = {}
    results: dict[str, dict] = {}
    protocols = args.protocols.split(",")
    coldstart_run = args.run_dir / "coldstart"
    supports = args.supports.split(",") if "coldstart" in protocols else []
    if supports:
        timed("train coldstart", ["train", "--config", str(args.config), "--split-seed",
              str(args.split_seed), "--output-dir", str(coldstart_run), *overrides],
              seconds)  # fmt: skip
    for support in supports:
        output = args.run_dir / f"coldstart_s{support}.json"
        timed(f"evaluate support {support}", ["evaluate", "--protocol", "coldstart",
              "--support-size", support, "--split-seed", str(args.split_seed),
              "--methods", ",".join(methods), "--checkpoint", str(coldstart_run),
              "--output", str(output)], seconds)  # fmt: skip
        results[f"support_{support}"] = json.loads(output.read_text())
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

    print(table(results, methods))
    print()
    print("| step | seconds |\n|---|---|")
    for step, value in seconds.items():
        print(f"| {step} | {value:.0f} |")
    print(f"| total | {sum(seconds.values()):.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
