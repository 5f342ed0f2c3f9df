"""The `metarec` command: the only place that reads argv and environment variables.

It turns options into typed configs and calls the job; user-facing errors
(`MetarecError`) become a one-line message and exit status 2.

    metarec data prepare --dataset ml-100k --data-dir ../shared/data
    metarec evaluate --dataset ml-100k --protocol coldstart --support-size 10 \
        --methods pop,itemknn,sasrec --output results.json
    metarec train --config configs/tiny.yaml --output-dir runs/tiny --set meta.inner_lr=0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from metarec.config import from_mapping, load_yaml
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import PROTOCOLS, ProtocolConfig
from metarec.errors import MetarecError

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="ml-100k", help="ml-100k, ml-1m or custom")
    group.add_argument(
        "--data-dir",
        type=Path,
        help="local copy of the dataset (folder or zip); default $METAREC_DATA_DIR, "
        "else download into the cache",
    )
    group.add_argument("--interactions", type=Path, help="custom: interactions CSV/Parquet")
    group.add_argument("--items", type=Path, help="custom: items CSV/Parquet")
    group.add_argument("--min-rating", type=float, help="keep interactions rated at least this")
    group.add_argument("--k-core", type=int, default=0, help="k-core filter (0 = off)")
    group.add_argument(
        "--cache-dir", type=Path, help="default $METAREC_CACHE_DIR, else ~/.cache/metarec"
    )


def _data_config(args: argparse.Namespace) -> DataConfig:
    env_data_dir = os.environ.get("METAREC_DATA_DIR")
    cache_dir = args.cache_dir or Path(os.environ.get("METAREC_CACHE_DIR", "~/.cache/metarec"))
    return DataConfig(
        dataset=args.dataset,
        data_dir=args.data_dir or (Path(env_data_dir) if env_data_dir else None),
        interactions=args.interactions,
        items=args.items,
        min_rating=args.min_rating,
        k_core=args.k_core,
        cache_dir=cache_dir,
    )


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _check_writable(path: Path | None) -> None:
    """Fail before hours of work, not after, when an output cannot be written."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise MetarecError(f"{path}: output is not writable ({err.strerror})") from None


def cmd_data_prepare(args: argparse.Namespace) -> None:
    dataset = load_dataset(_data_config(args))
    for key, value in dataset.stats().items():
        print(f"{key:28s} {value:.6g}" if isinstance(value, float) else f"{key:28s} {value}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from metarec.eval.evaluate import EvaluateConfig, evaluate
    from metarec.eval.report import markdown_table, write_json, write_per_user

    for output in (args.output, args.per_user_output):
        _check_writable(output)
    config = EvaluateConfig(
        data=_data_config(args),
        protocol=ProtocolConfig(
            name=args.protocol,
            support_size=args.support_size,
            query_size=args.query_size,
            split_seed=args.split_seed,
            num_negatives=args.num_negatives,
            sample_seed=args.sample_seed,
            ks=args.k,
        ),
        methods=[name.strip() for name in args.methods.split(",") if name.strip()],
        hyperparameters=load_yaml(args.baselines_config),
        bootstrap_resamples=args.bootstrap_resamples,
        checkpoint=args.checkpoint,
        baseline_checkpoint=args.baseline_checkpoint,
    )
    result = evaluate(config)
    print(markdown_table(result.summary))
    if args.output:
        write_json(args.output, result.summary)
        print(f"wrote {args.output}")
    if args.per_user_output:
        test_users = result.dataset.user_ids[[case.user for case in result.split.test]]
        write_per_user(args.per_user_output, result.per_user, test_users)
        print(f"wrote {args.per_user_output}")


def _apply_override(config: dict, assignment: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML) inside a nested config mapping."""
    key, separator, value = assignment.partition("=")
    if not separator:
        raise MetarecError(f"--set {assignment!r}: expected KEY=VALUE, e.g. meta.inner_lr=0.01")
    *parents, leaf = key.strip().split(".")
    node = config
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise MetarecError(f"--set {assignment!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(value)


def cmd_train(args: argparse.Namespace) -> None:
    from train.meta_train import TrainConfig, run

    raw = load_yaml(args.config)
    for assignment in args.set:
        _apply_override(raw, assignment)
    if args.split_seed is not None:
        raw["split_seed"] = args.split_seed
    if args.output_dir is not None:
        raw["output_dir"] = str(args.output_dir)
    data = raw["data"] = raw.get("data") or {}
    env_data_dir = os.environ.get("METAREC_DATA_DIR")
    if "data_dir" not in data and env_data_dir:
        data["data_dir"] = env_data_dir
    data.setdefault("cache_dir", os.environ.get("METAREC_CACHE_DIR", "~/.cache/metarec"))
    distributed = raw["distributed"] = raw.get("distributed") or {}
    accelerate_ds_config = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" and accelerate_ds_config:
        # under `accelerate launch --config_file launch/accelerate/zero3.yaml`
        distributed.setdefault("deepspeed_config", accelerate_ds_config)
    config = from_mapping(TrainConfig, raw, where=str(args.config))
    _check_writable(config.output_dir / "config.json")
    kill_at_step = None
    if args.kill_at_step:
        rank, _, step = args.kill_at_step.partition(":")
        kill_at_step = (int(rank), int(step))
    history = run(
        config,
        resume=args.resume,
        launched_world_size=int(os.environ.get("WORLD_SIZE", "1")),
        kill_at_step=kill_at_step,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(history[-1], indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metarec", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="dataset commands")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser("prepare", help="validate, preprocess and cache a dataset")
    _add_data_options(prepare)
    prepare.set_defaults(handler=cmd_data_prepare)

    evaluate = commands.add_parser("evaluate", help="evaluate methods on a protocol")
    _add_data_options(evaluate)
    protocol = evaluate.add_argument_group("protocol (docs/protocols.md)")
    protocol.add_argument("--protocol", choices=PROTOCOLS, default="coldstart")
    protocol.add_argument("--support-size", type=int, default=10)
    protocol.add_argument("--query-size", type=int, default=10)
    protocol.add_argument("--split-seed", type=int, default=0)
    protocol.add_argument("--num-negatives", type=int, default=19)
    protocol.add_argument("--sample-seed", type=int, default=0)
    protocol.add_argument("--k", type=_int_list, help="cutoffs, e.g. 10,20 (protocol default)")
    evaluate.add_argument(
        "--methods",
        default="pop,itemknn",
        help="comma-separated: pop, itemknn, userknn, ease, sasrec, llm-noadapt, llm-finetune, "
        "meta-lora",
    )
    evaluate.add_argument("--baselines-config", type=Path, default=REPO_CONFIGS / "baselines.yaml")
    evaluate.add_argument("--bootstrap-resamples", type=int, default=1000)
    evaluate.add_argument("--checkpoint", type=Path, help="meta-lora run dir (metarec train)")
    evaluate.add_argument(
        "--baseline-checkpoint",
        type=Path,
        help="run dir trained with meta.inner_steps=0 (default: <checkpoint>/pretrained if there)",
    )
    evaluate.add_argument("--output", type=Path, help="results JSON")
    evaluate.add_argument("--per-user-output", type=Path, help="per-user metrics Parquet")
    evaluate.set_defaults(handler=cmd_evaluate)

    train = commands.add_parser("train", help="meta-train the LLM user model's LoRA init")
    train.add_argument("--config", type=Path, required=True, help="YAML, e.g. configs/tiny.yaml")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set meta.inner_lr=0.01",
    )
    train.add_argument("--split-seed", type=int)
    train.add_argument("--output-dir", type=Path)
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest state in <output_dir>/state"
    )
    # fault injection for the resume tests: SIGKILL rank R right after it saves step S
    train.add_argument("--kill-at-step", metavar="RANK:STEP", help=argparse.SUPPRESS)
    # the deepspeed launcher passes --local_rank; ranks come from the environment instead
    train.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    train.set_defaults(handler=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except MetarecError as err:
        print(f"metarec: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
