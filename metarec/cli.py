"""The `metarec` command: the only place that reads argv and environment variables.

It turns options into typed configs and calls the job; user-facing errors
(`MetarecError`) become a one-line message and exit status 2.

    metarec data prepare --dataset ml-100k --data-dir ../shared/data
    metarec evaluate --dataset ml-100k --protocol coldstart --support-size 10 \
        --methods pop,itemknn,sasrec --output results.json
    metarec train --config configs/tiny.yaml --output-dir runs/tiny --set meta.inner_lr=0.1
    metarec index build --checkpoint runs/tiny --output runs/tiny/index --kind ivf
    metarec rerank --checkpoint runs/tiny --index runs/tiny/index --output-dir runs/tiny/rerank
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from metarec.config import from_mapping, load_yaml
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import PROTOCOLS, ProtocolConfig
from metarec.errors import MetarecError
from metarec.eval.report import write_json

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


def _add_remote_code_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a backbone's own Python code from its model folder (off unless given)",
    )


def _add_run_options(parser: argparse.ArgumentParser, what: str) -> None:
    """A command on a trained run: the data its catalogue comes from, the run, remote code."""
    _add_data_options(parser)
    parser.add_argument("--checkpoint", type=Path, required=True, help=what)
    _add_remote_code_option(parser)


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


def _history_indices(dataset: Dataset, raw_items: list[int]) -> np.ndarray:
    """``--history`` raw item ids as the dataset's item indices, or an error naming the unknown."""
    positions = dataset.item_positions()
    unknown = [item for item in raw_items if item not in positions]
    if unknown:
        raise MetarecError(f"--history: unknown item ids {unknown} in {dataset.name}")
    return np.array([positions[item] for item in raw_items], dtype=np.int64)


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
    from metarec.eval.report import markdown_table, write_per_user

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
        trust_remote_code=args.trust_remote_code,
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
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise MetarecError(f"--set {assignment!r}: the value is not valid YAML ({err})") from None


def _config_mapping(
    path: Path, overrides: list[str], split_seed: int | None, output_dir: Path | None
) -> dict:
    """A YAML config as a mapping, then ``--set`` overrides, options and environment."""
    raw = load_yaml(path)
    for assignment in overrides:
        _apply_override(raw, assignment)
    if split_seed is not None:
        raw["split_seed"] = split_seed
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    data = raw["data"] = raw.get("data") or {}
    env_data_dir = os.environ.get("METAREC_DATA_DIR")
    if "data_dir" not in data and env_data_dir:
        data["data_dir"] = env_data_dir
    data.setdefault("cache_dir", os.environ.get("METAREC_CACHE_DIR", "~/.cache/metarec"))
    return raw


def _train_config(args: argparse.Namespace):
    """The training config: YAML, then ``--set`` overrides, then options and environment."""
    from train.meta_train import TrainConfig

    raw = _config_mapping(args.config, args.set, getattr(args, "split_seed", None),
                          args.output_dir)  # fmt: skip
    distributed = raw["distributed"] = raw.get("distributed") or {}
    accelerate_ds_config = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" and accelerate_ds_config:
        # under `accelerate launch --config_file launch/accelerate/zero3.yaml`
        distributed.setdefault("deepspeed_config", accelerate_ds_config)
    config = from_mapping(TrainConfig, raw, where=f"{args.config}: config")
    _allow_remote_code(config.model.backbone, args, str(args.config))
    return config


def _allow_remote_code(backbone, args: argparse.Namespace, where: str) -> None:
    """Model-hub code runs only when the command line says so, never from a config alone."""
    if backbone.trust_remote_code and not args.trust_remote_code:
        raise MetarecError(
            f"{where}: model.backbone.trust_remote_code is true, which runs code shipped "
            "with the model; pass --trust-remote-code to allow it"
        )
    backbone.trust_remote_code = args.trust_remote_code


def cmd_pipeline(args: argparse.Namespace) -> None:
    from train.pipeline import PipelineConfig, run_pipeline

    args.output_dir = args.run_dir
    config = PipelineConfig(
        train=_train_config(args),
        baselines=[name.strip() for name in args.baselines.split(",") if name.strip()],
        support_sizes=args.supports,
        hyperparameters=load_yaml(args.baselines_config),
        bootstrap_resamples=args.bootstrap_resamples,
    )
    _check_writable(config.train.output_dir / "report.md")
    run_pipeline(config)


def cmd_config_show(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    args.output_dir = None
    config = json.loads(json.dumps(asdict(_train_config(args)), default=str))
    print(yaml.safe_dump(config, sort_keys=False), end="")


def cmd_train(args: argparse.Namespace) -> None:
    from train.meta_train import run

    config = _train_config(args)
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


def _index_config(args: argparse.Namespace):
    from retrieval.index import IndexConfig

    return IndexConfig(
        kind=args.kind,
        nlist=args.nlist,
        nprobe=args.nprobe,
        pq_m=args.pq_m,
        pq_bits=args.pq_bits,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        train_size=args.train_size,
    )


def cmd_index_build(args: argparse.Namespace) -> None:
    from retrieval.catalogue import IndexBuildConfig, build_catalogue_index

    _check_writable(args.output)
    config = IndexBuildConfig(
        output=args.output,
        index=_index_config(args),
        run=args.checkpoint,
        data=_data_config(args),
        vectors=args.vectors,
        item_ids=args.item_ids,
        encoder=args.encoder,
        chunk_rows=args.chunk_rows,
        trust_remote_code=args.trust_remote_code,
    )
    print(json.dumps(build_catalogue_index(config), indent=2))


def cmd_index_search(args: argparse.Namespace) -> None:

    from retrieval.catalogue import load_run
    from retrieval.index import load_index
    from retrieval.rerank import rerank_batch

    if (args.queries is None) == (args.checkpoint is None):
        raise MetarecError("index search: give --queries, or --checkpoint with --history")
    if args.queries is not None:
        index = load_index(args.index)
        try:
            queries = np.load(args.queries, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise MetarecError(f"{args.queries}: cannot read queries ({err})") from None
        ids, scores = index.search(np.atleast_2d(queries), args.k)
        answers = [
            [{"item_id": int(i), "score": float(v)} for i, v in zip(row, values, strict=True)]
            for row, values in zip(ids, scores, strict=True)
        ]
    else:
        if not args.history:
            raise MetarecError("index search --checkpoint needs --history ITEM,ITEM,...")
        method, dataset, fingerprint = load_run(
            args.checkpoint, _data_config(args), args.trust_remote_code
        )
        index = load_index(args.index, encoder=fingerprint)
        history = _history_indices(dataset, args.history)
        with method.model.frozen_item_vectors():
            items, scores = rerank_batch(method, index, [history], args.k, args.k)
        answers = [
            [
                {"item_id": int(dataset.item_ids[i]), "score": float(v),
                 "text": dataset.item_text[i]}
                for i, v in zip(items[0], scores[0], strict=True) if i >= 0
            ]
        ]  # fmt: skip
    for number, answer in enumerate(answers):
        print(f"query {number}:")
        for rank, hit in enumerate(answer, start=1):
            text = f"  {hit['text']}" if "text" in hit else ""
            print(f"  {rank:3d}  {hit['item_id']:>10}  {hit['score']:9.4f}{text}")
    if args.output:
        _check_writable(args.output)
        write_json(args.output, answers)


def cmd_rerank(args: argparse.Namespace) -> None:
    from metarec.dist.engine import DistributedConfig, init_process_group
    from retrieval.rerank import RerankConfig, run_rerank

    _check_writable(args.output_dir / "job.json")
    config = RerankConfig(
        run=args.checkpoint,
        index=args.index,
        output_dir=args.output_dir,
        data=_data_config(args),
        histories=args.histories,
        split_users=args.split_users,
        support_size=args.support_size,
        candidates=args.candidates,
        top_k=args.top_k,
        batch_size=args.batch_size,
        shard_users=args.shard_users,
        inner_steps=args.inner_steps,
        trust_remote_code=args.trust_remote_code,
    )
    init_process_group(DistributedConfig(), int(os.environ.get("WORLD_SIZE", "1")))
    manifest = run_rerank(config, kill_after_shards=args.kill_after_shards)
    if manifest:
        seconds = manifest["seconds_this_run"]
        users = manifest["users_this_run"]
        print(
            f"{manifest['users']} users in {len(manifest['shards'])} shards, each once; "
            f"this run scored {users} users in {seconds:.1f} s "
            f"({users / max(seconds, 1e-9):.1f} users/s); "
            f"wrote {args.output_dir / 'manifest.json'}"
        )


def cmd_explain(args: argparse.Namespace) -> None:

    from metarec.meta.explain import explained_items
    from retrieval.catalogue import load_run

    method, dataset, _ = load_run(args.checkpoint, _data_config(args), args.trust_remote_code)
    if (args.user is None) == (args.history is None):
        raise MetarecError("explain: give --user (a user id of the dataset) or --history")
    if args.history is not None:
        history = _history_indices(dataset, args.history)
    else:
        users = np.flatnonzero(dataset.user_ids == args.user)
        if len(users) == 0:
            raise MetarecError(f"--user {args.user}: no such user in {dataset.name}")
        history = dataset.sequences()[users[0]][: args.support_size]
    scores = method.score([history])[0]
    scores[history] = -np.inf
    items = np.argsort(-scores, kind="stable")[: args.k]
    title = dataset.titles()
    answer = {
        "user_id": args.user,
        "history": [{"item_id": int(dataset.item_ids[i]), "title": title[i]} for i in history],
        "recommendations": explained_items(method, history, items, title, dataset.item_ids),
    }
    print(f"history: {'; '.join(title[i] for i in history)}")
    print("| # | item | score | adaptation Δ | history items that added most |")
    print("|---|---|---|---|---|")
    for row in answer["recommendations"]:
        reasons = ", ".join(
            f"{c['title']} ({c['contribution']:+.3f})" for c in row["contributors"][:3]
        )
        print(
            f"| {row['rank']} | {row['title']} | {row['score']:.3f} | "
            f"{row['adaptation_delta']:+.3f} | {reasons} |"
        )
    if args.output:
        _check_writable(args.output)
        write_json(args.output, answer)


def cmd_online(args: argparse.Namespace) -> None:
    from metarec.data.splits import coldstart_users
    from metarec.eval.online import OnlineConfig, replay
    from retrieval.catalogue import load_run

    config = OnlineConfig(
        start=args.start,
        events=args.events,
        window=args.window,
        incremental_lr_scale=args.incremental_lr_scale,
        batch_size=args.batch_size,
    )
    _check_writable(args.output)
    method, dataset, _ = load_run(args.checkpoint, _data_config(args), args.trust_remote_code)
    if method.trained_on.get("protocol", "coldstart") != "coldstart":
        raise MetarecError(
            f"{args.checkpoint}: online replays coldstart test users; not a coldstart run"
        )
    _, valid_users, test_users = coldstart_users(
        dataset.n_users, method.trained_on.get("split_seed", 0)
    )
    users = test_users if args.split_users == "test" else valid_users  # valid: to pick settings
    sequences = dataset.sequences()
    streams = [
        sequences[u] for u in sorted(users) if len(sequences[u]) >= config.start + config.events
    ]
    results = {}
    for strategy in [name.strip() for name in args.strategies.split(",") if name.strip()]:
        results[strategy], _ = replay(method, streams, strategy, config)
    print(
        f"{len(streams)} {args.split_users} users, first {config.start} items given, "
        f"{config.events} events each"
    )
    print("| strategy | ndcg@10 | hr@10 | adaptation token-steps | adaptation s |")
    print("|---|---|---|---|---|")
    for strategy, row in results.items():
        print(
            f"| {strategy} | {row['ndcg@10']:.4f} | {row['hr@10']:.4f} | "
            f"{row['adaptation_token_steps']} | {row['adaptation_seconds']:.1f} |"
        )
    if args.output:
        write_json(args.output, {"config": vars(config), "strategies": results})


def cmd_tune(args: argparse.Namespace) -> None:
    from train.tune import SearchSpace, TuneConfig, tune

    args.output_dir = None
    space = SearchSpace()
    if args.space is not None:
        space = from_mapping(SearchSpace, load_yaml(args.space), where=f"{args.space}: space")
    config = TuneConfig(
        train=_train_config(args),
        study_dir=args.study_dir,
        sampler=args.sampler,
        trials=args.trials,
        space=space,
        seed=args.seed,
    )
    best = tune(config)
    print(json.dumps(best, indent=2))
    print(f"wrote {args.study_dir / 'best.yaml'}")


def cmd_bandit(args: argparse.Namespace) -> None:
    from metarec.eval.bandit import BanditConfig, compare_policies
    from metarec.eval.plots import reward_curves
    from retrieval.catalogue import load_run

    config = BanditConfig(
        support_size=args.support_size, rounds=args.rounds, arms=args.arms, pool=args.pool,
        epsilon=args.epsilon, alpha=args.alpha, seed=args.seed,
    )  # fmt: skip
    for output in (args.output, args.plot):
        _check_writable(output)
    method, dataset, _ = load_run(args.checkpoint, _data_config(args), args.trust_remote_code)
    results, rewards = compare_policies(method, dataset, config)
    print(f"{results['events']} logged events: {results['users']} cold users x {config.rounds} "
          f"rounds, {config.arms} arms from the top {config.pool}")  # fmt: skip
    print("| policy | counted events | CTR (95% CI) | x greedy |\n|---|---|---|---|")
    for kind, row in results["policies"].items():
        low, high = row["ctr_ci"]
        print(f"| {kind} | {row['events']} | {row['ctr']:.4f} [{low:.4f}, {high:.4f}] | "
              f"{row['vs_greedy']:.2f} |")  # fmt: skip
    if args.plot:
        reward_curves(rewards, args.plot)
    if args.output:
        write_json(args.output, {"config": vars(config), **results})


def cmd_rl_train(args: argparse.Namespace) -> None:
    from train.meta_train import TrainConfig
    from train.rl_policy import RLConfig, train

    raw = _config_mapping(args.config, args.set, args.split_seed, args.output_dir)
    config = from_mapping(RLConfig, raw, where=f"{args.config}: config")
    base_train = None
    if config.base_config is not None:
        base = _config_mapping(config.base_config, [], config.split_seed, config.base_run)
        base["data"] = {**base["data"], **raw["data"]}
        base_train = from_mapping(TrainConfig, base, where=f"{config.base_config}: config")
        _allow_remote_code(base_train.model.backbone, args, str(config.base_config))
    _check_writable(config.output_dir / "config.json")
    _print_rl_results(train(config, base_train, args.trust_remote_code))
    print(f"wrote {config.output_dir / 'results.json'}")


def cmd_rl_evaluate(args: argparse.Namespace) -> None:
    from train.rl_policy import evaluate_run

    _check_writable(args.output)
    env_data_dir, env_cache_dir = (
        os.environ.get("METAREC_DATA_DIR"),
        os.environ.get("METAREC_CACHE_DIR"),
    )
    results = evaluate_run(
        args.checkpoint,
        args.data_dir or (Path(env_data_dir) if env_data_dir else None),
        args.cache_dir or (Path(env_cache_dir) if env_cache_dir else None),
    )
    _print_rl_results(results)
    if args.output:
        write_json(args.output, results)
        print(f"wrote {args.output}")


def _print_rl_results(results: dict) -> None:
    print(f"{results['users']} test users x {results['episodes_per_user']} simulated sessions")
    print("| policy | discounted return (95% CI) | session length | SNIPS on test logs (95% CI) |")
    print("|---|---|---|---|")
    for name in ("greedy", "softmax", "learned"):
        low, high = results["return_ci"][name]
        snips = results["ope"]["policies"][name]["snips"]
        print(f"| {name} | {results[f'return_{name}']:.3f} [{low:.3f}, {high:.3f}] | "
              f"{results['session_length'][name]:.2f} | {snips['value']:.3f} "
              f"[{snips['ci'][0]:.3f}, {snips['ci'][1]:.3f}] |")  # fmt: skip
    print(f"learned / greedy: {results['learned_vs_greedy']:.3f}")


def cmd_distill(args: argparse.Namespace) -> None:
    from train.distill import DistillConfig, distill

    config = DistillConfig(
        train=_train_config(args),
        teacher=args.teacher,
        distill_epochs=args.distill_epochs,
        temperature=args.temperature,
        weight=args.weight,
    )
    _check_writable(config.train.output_dir / "config.json")
    history = distill(config)
    print(json.dumps(history[-1], indent=2))


def _add_train_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="YAML, e.g. configs/quick.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set meta.inner_lr=0.01 (repeatable)",
    )
    parser.add_argument("--split-seed", type=int)
    _add_remote_code_option(parser)


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
    _add_remote_code_option(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    train = commands.add_parser("train", help="meta-train the LLM user model's LoRA init")
    _add_train_config_options(train)
    train.add_argument("--output-dir", type=Path)
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest state in <output_dir>/state"
    )
    # fault injection for the resume tests: SIGKILL rank R right after it saves step S
    train.add_argument("--kill-at-step", metavar="RANK:STEP", help=argparse.SUPPRESS)
    # the deepspeed launcher passes --local_rank; ranks come from the environment instead
    train.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    train.set_defaults(handler=cmd_train)

    pipeline = commands.add_parser(
        "pipeline",
        help="the main job end to end: data, encoding, training, index, evaluation, rerank, report",
    )
    _add_train_config_options(pipeline)
    pipeline.add_argument("--run-dir", type=Path, required=True, help="e.g. runs/demo")
    pipeline.add_argument("--baselines", default="pop,itemknn,ease")
    pipeline.add_argument("--supports", type=_int_list, default=[5, 10, 20])
    pipeline.add_argument("--baselines-config", type=Path, default=REPO_CONFIGS / "baselines.yaml")
    pipeline.add_argument("--bootstrap-resamples", type=int, default=1000)
    pipeline.set_defaults(handler=cmd_pipeline)

    config = commands.add_parser("config", help="training configs")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser(
        "show", help="print the resolved training config (defaults, YAML, --set overrides)"
    )
    _add_train_config_options(show)
    show.set_defaults(handler=cmd_config_show)

    index = commands.add_parser("index", help="FAISS index over the catalogue")
    index_commands = index.add_subparsers(dest="index_command", required=True)
    build = index_commands.add_parser(
        "build", help="encode the catalogue with a run's item side (or take --vectors) and index it"
    )
    _add_data_options(build)
    build.add_argument("--checkpoint", type=Path, help="metarec train run dir")
    build.add_argument("--vectors", type=Path, help="(N, d) float32 .npy instead of a run")
    build.add_argument("--item-ids", type=Path, help="(N,) int64 .npy for --vectors")
    build.add_argument("--encoder", default="external", help="name of --vectors' encoder")
    build.add_argument("--output", type=Path, required=True, help="index folder to write")
    build.add_argument("--chunk-rows", type=int, default=65536, help="rows encoded/added at once")
    knobs = build.add_argument_group("index (retrieval/index.py)")
    knobs.add_argument("--kind", choices=("flat", "ivf", "ivfpq", "hnsw"), default="flat")
    knobs.add_argument("--nlist", type=int, default=1024, help="ivf*: coarse clusters")
    knobs.add_argument("--nprobe", type=int, default=32, help="ivf*: clusters searched")
    knobs.add_argument("--pq-m", type=int, default=16, help="ivfpq: sub-quantisers")
    knobs.add_argument("--pq-bits", type=int, default=8, help="ivfpq: bits per code")
    knobs.add_argument("--hnsw-m", type=int, default=32, help="hnsw: neighbours per node")
    knobs.add_argument("--ef-search", type=int, default=128, help="hnsw: search breadth")
    knobs.add_argument("--train-size", type=int, default=100_000, help="ivf*: training sample")
    _add_remote_code_option(build)
    build.set_defaults(handler=cmd_index_build)

    search = index_commands.add_parser("search", help="ad-hoc queries against an index folder")
    _add_data_options(search)
    search.add_argument("--index", type=Path, required=True)
    search.add_argument("--queries", type=Path, help="(Q, d) float32 .npy of query vectors")
    search.add_argument("--checkpoint", type=Path, help="run dir: adapt to --history and search")
    search.add_argument("--history", type=_int_list, help="raw item ids, oldest first")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--output", type=Path, help="answers as JSON")
    _add_remote_code_option(search)
    search.set_defaults(handler=cmd_index_search)

    rerank = commands.add_parser(
        "rerank", help="batch job: adapt users, retrieve, rescore, write top-K Parquet shards"
    )
    _add_run_options(rerank, "metarec train run dir")
    rerank.add_argument("--index", type=Path, required=True, help="built from that run")
    rerank.add_argument("--output-dir", type=Path, required=True)
    rerank.add_argument(
        "--histories", type=Path, help="CSV/Parquet: user_id, item_id[, timestamp] (raw ids)"
    )
    rerank.add_argument(
        "--split-users",
        choices=("test", "valid"),
        default="test",
        help="without --histories: these users of the run's coldstart split",
    )
    rerank.add_argument("--support-size", type=int, default=10, help="with --split-users")
    rerank.add_argument("--candidates", type=int, default=100, help="retrieved per user")
    rerank.add_argument("--top-k", type=int, default=10, help="written per user")
    rerank.add_argument("--batch-size", type=int, default=32, help="users adapted together")
    rerank.add_argument("--shard-users", type=int, default=256, help="users per output shard")
    rerank.add_argument("--inner-steps", type=int, help="default: the run's meta.inner_steps")
    # fault injection for the exactly-once tests: SIGKILL after writing N shards
    rerank.add_argument("--kill-after-shards", type=int, help=argparse.SUPPRESS)
    rerank.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    rerank.set_defaults(handler=cmd_rerank)

    explain = commands.add_parser(
        "explain", help="why a run recommends what it does to one user (leave-one-out)"
    )
    _add_run_options(explain, "metarec train run dir")
    explain.add_argument("--user", type=int, help="raw user id: explains its first interactions")
    explain.add_argument("--support-size", type=int, default=10, help="with --user")
    explain.add_argument("--history", type=_int_list, help="raw item ids, oldest first")
    explain.add_argument("--k", type=int, default=5, help="recommendations to explain")
    explain.add_argument("--output", type=Path, help="the explanation as JSON")
    explain.set_defaults(handler=cmd_explain)

    online = commands.add_parser(
        "online", help="replay test users' streams: no updates vs full re-adaptation vs incremental"
    )
    _add_run_options(online, "coldstart run dir")
    online.add_argument("--strategies", default="none,full,incremental")
    online.add_argument("--split-users", choices=("test", "valid"), default="test")
    online.add_argument("--start", type=int, default=5, help="items given before the first event")
    online.add_argument("--events", type=int, default=15, help="scored events per user")
    online.add_argument("--window", type=int, default=5, help="incremental: recent items per step")
    online.add_argument(
        "--incremental-lr-scale", type=float, default=0.3, help="incremental step lr / inner lr"
    )
    online.add_argument("--batch-size", type=int, default=64)
    online.add_argument("--output", type=Path, help="results JSON")
    online.set_defaults(handler=cmd_online)

    tune = commands.add_parser(
        "tune", help="hyper-parameter search (Optuna: grid, random, TPE) on validation users"
    )
    _add_train_config_options(tune)
    tune.add_argument("--study-dir", type=Path, required=True, help="trials, study.db, best.yaml")
    tune.add_argument("--sampler", choices=("grid", "random", "tpe"), default="tpe")
    tune.add_argument("--trials", type=int, default=20, help="finished trials to reach")
    tune.add_argument("--space", type=Path, help="YAML search space (train/tune.py SearchSpace)")
    tune.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    tune.set_defaults(handler=cmd_tune)

    bandit = commands.add_parser(
        "bandit", help="replay evaluation of exploration policies over adapted candidates"
    )
    _add_run_options(bandit, "coldstart run dir")
    bandit.add_argument("--support-size", type=int, default=10)
    bandit.add_argument("--rounds", type=int, default=20, help="logged displays per user")
    bandit.add_argument("--arms", type=int, default=5, help="arms per display")
    bandit.add_argument("--pool", type=int, default=50, help="arms come from this top-N")
    bandit.add_argument("--epsilon", type=float, default=0.1)
    bandit.add_argument("--alpha", type=float, default=1.0, help="LinUCB width, Thompson scale")
    bandit.add_argument("--seed", type=int, default=0)
    bandit.add_argument("--output", type=Path, help="results JSON")
    bandit.add_argument("--plot", type=Path, help="cumulative reward curves PNG")
    bandit.set_defaults(handler=cmd_bandit)

    distill = commands.add_parser(
        "distill",
        help="distil a meta-trained teacher run into a smaller student, then meta-train it",
    )
    _add_train_config_options(distill)
    distill.add_argument("--teacher", type=Path, required=True, help="the teacher's run dir")
    distill.add_argument("--output-dir", type=Path, help="the student's run dir")
    distill.add_argument("--distill-epochs", type=int, default=2)
    distill.add_argument("--temperature", type=float, default=2.0)
    distill.add_argument("--weight", type=float, default=0.5, help="share of the KL term")
    distill.set_defaults(handler=cmd_distill)

    rl = commands.add_parser("rl", help="a slate policy for long-term reward (REINFORCE)")
    rl_commands = rl.add_subparsers(dest="rl_command", required=True)
    rl_train = rl_commands.add_parser(
        "train", help="fit the simulator, train the policy, evaluate on test users"
    )
    _add_train_config_options(rl_train)
    rl_train.add_argument("--output-dir", type=Path, help="the RL run dir")
    rl_train.set_defaults(handler=cmd_rl_train)
    rl_evaluate = rl_commands.add_parser("evaluate", help="re-evaluate a trained RL run")
    rl_evaluate.add_argument(
        "--data-dir", type=Path, help="where the run's dataset is now (default: as trained, "
        "or $METAREC_DATA_DIR)",
    )  # fmt: skip
    rl_evaluate.add_argument("--cache-dir", type=Path, help="default: as trained")
    rl_evaluate.add_argument("--checkpoint", type=Path, required=True, help="the RL run dir")
    rl_evaluate.add_argument("--output", type=Path, help="results JSON")
    rl_evaluate.set_defaults(handler=cmd_rl_evaluate)
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
