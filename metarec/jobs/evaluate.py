"""``metarec evaluate``: fit each method on a protocol split and measure it on the test users.

Reads a dataset, builds the protocol's split, fits every requested method on what the
protocol allows, ranks the test users' relevant items and summarises each metric as a
mean with a bootstrap 95% confidence interval. Results come back as a JSON-ready dict;
`metarec.eval.report` renders and writes them.

    metarec evaluate --dataset ml-100k --protocol coldstart --support-size 10 \\
        --methods pop,itemknn,sasrec --output results.json
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from metarec.baselines import build_baseline
from metarec.baselines.fusion import Fusion, FusionConfig
from metarec.config import from_mapping, load_yaml
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import PROTOCOLS, ProtocolConfig, Split, make_split
from metarec.errors import ConfigError
from metarec.eval.beyond import beyond_accuracy, user_counts
from metarec.eval.metrics import bootstrap_ci
from metarec.eval.ranking import ranked_cases
from metarec.eval.recommender import Recommender
from metarec.eval.report import markdown_table, write_json, write_per_user
from metarec.meta.algorithms import MetaConfig
from metarec.meta.ensemble import EnsembleRecommender
from metarec.models.item_init import svd_item_embeddings
from metarec.models.text_encoder import cached_text_vectors
from metarec.options import (
    REPO_CONFIGS,
    Environment,
    add_data_options,
    add_device_option,
    add_remote_code_option,
    check_writable,
    from_args,
    int_list,
    job_config,
    name_list,
)
from metarec.trained_run import TrainedRun


@dataclass
class EvaluateConfig:
    """What to evaluate: the data, the protocol, the methods and their hyper-parameters."""

    data: DataConfig | None = None  # None: the data of the --checkpoint run, else ml-100k
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    methods: list[str] = field(default_factory=lambda: ["pop", "itemknn"])
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    checkpoint: Path | None = None
    baseline_checkpoint: Path | None = None
    # meta-lora-ensemble: these runs (trained alike, other seeds) with --checkpoint's
    ensemble_checkpoints: list[Path] = field(default_factory=list)
    trust_remote_code: bool = False  # let the runs' backbones run code from their model folders
    device: str = "cpu"  # where the LLM methods compute (--device, resolved by config_from_args)
    output: Path | None = None  # results JSON
    per_user_output: Path | None = None  # per-user metrics Parquet


LLM_METHODS = ("llm-noadapt", "llm-finetune", "meta-lora")  # what one trained run gives
ENSEMBLE_METHOD = "meta-lora-ensemble"  # meta-lora of several runs as one
RUN_METHODS = (*LLM_METHODS, ENSEMBLE_METHOD)  # the methods read from trained runs
FUSION_METHODS = ("fusion", "fusion-stack")
# learn items from interactions alone: an item no training user interacted with gets no
# learned score (0 from pop, itemknn, userknn and ease), so they cannot rank new items
INTERACTION_ONLY_METHODS = ("pop", "itemknn", "userknn", "ease", "sasrec")
DIVERSITY_DIM = 64  # the shared item embedding diversity@K is measured in


def _check_llm_methods(config: EvaluateConfig, names: list[str]) -> None:
    """Fail before loading anything when an LLM method lacks its checkpoint.

    A meta-lora run trained with ``pretrain_epochs`` holds its own llm-noadapt run in
    ``pretrained/``, the default ``baseline_checkpoint``.
    """
    own_baseline = config.checkpoint and config.checkpoint / "pretrained"
    if config.baseline_checkpoint is None and own_baseline and own_baseline.is_dir():
        config.baseline_checkpoint = own_baseline
    wanted = [name for name in names if name in RUN_METHODS]
    needs_meta = {"meta-lora", "llm-finetune", ENSEMBLE_METHOD} & set(wanted)
    if needs_meta and config.checkpoint is None:
        needing = ", ".join(sorted(needs_meta))
        raise ConfigError(f"{needing}: needs --checkpoint (a meta-lora run dir)")
    if ENSEMBLE_METHOD in wanted and not config.ensemble_checkpoints:
        raise ConfigError(
            "meta-lora-ensemble needs --ensemble-checkpoints: the other meta-lora run dirs "
            "(trained alike with other seeds) whose scores are averaged with --checkpoint's"
        )
    needs_baseline = "llm-noadapt" in wanted or "llm-finetune" in wanted
    if needs_baseline and config.baseline_checkpoint is None:
        raise ConfigError(
            "llm-noadapt and llm-finetune need --baseline-checkpoint (a run trained with "
            "meta.inner_steps=0)"
        )


def _llm_methods(names: list[str], config: EvaluateConfig) -> dict[str, Recommender]:
    """meta-lora: the meta-learned init adapted; llm-noadapt: the normally trained model;
    llm-finetune: that model fine-tuned with meta-lora's inner steps and (initial) inner lr;
    meta-lora-ensemble: meta-lora of --checkpoint and of each --ensemble-checkpoints run.

    Each run is loaded once and refused if it may have trained on the protocol's test users.
    """
    runs: dict[Path, TrainedRun] = {}

    def run_of(folder: Path) -> TrainedRun:
        if folder not in runs:
            runs[folder] = TrainedRun(folder, config.data, config.trust_remote_code, config.device)
            runs[folder].check_compatible(config.protocol.name, config.protocol.split_seed)
        return runs[folder]

    methods: dict[str, Recommender] = {}
    for name in names:
        if name == "meta-lora":
            methods[name] = run_of(config.checkpoint).recommender()
        elif name == ENSEMBLE_METHOD:
            folders = [config.checkpoint, *config.ensemble_checkpoints]
            methods[name] = EnsembleRecommender([run_of(f).recommender() for f in folders])
        elif name == "llm-noadapt":
            methods[name] = run_of(config.baseline_checkpoint).recommender(inner_steps=0)
        elif name == "llm-finetune":
            meta_lora = TrainedRun(config.checkpoint).config.meta
            finetune = MetaConfig(
                algorithm="fomaml", inner_steps=meta_lora.inner_steps, inner_lr=meta_lora.inner_lr
            )
            methods[name] = run_of(config.baseline_checkpoint).recommender(meta=finetune)
    return methods


@dataclass
class Evaluation:
    """Per-user metrics of each method on one split, and their JSON-ready summary."""

    dataset: Dataset
    split: Split
    per_user: dict[str, dict[str, np.ndarray]]
    summary: dict[str, Any]


def summarise(
    per_user: dict[str, np.ndarray], resamples: int, seed: int
) -> dict[str, float | list[float]]:
    """Mean of each per-user metric plus ``<metric>_ci``: its bootstrap 95% interval.

    NaN marks a user a metric does not cover (``held_out_*``: no held-out query item); a
    metric covering no user is left out.
    """
    summary: dict[str, float | list[float]] = {}
    for name, all_values in per_user.items():
        values = all_values[~np.isnan(all_values)]
        if not len(values):
            continue
        summary[name] = float(values.mean())
        summary[f"{name}_ci"] = list(bootstrap_ci(values, resamples, seed=seed))
    return summary


def evaluate(config: EvaluateConfig) -> Evaluation:
    """Run every method of ``config`` on its protocol split."""
    if not config.methods:
        raise ConfigError("no method to evaluate: pass --methods, e.g. pop,itemknn")
    if config.bootstrap_resamples < 1:
        raise ConfigError(f"bootstrap_resamples={config.bootstrap_resamples}: must be at least 1")
    fusion = from_mapping(FusionConfig, config.hyperparameters.get("fusion"), where="fusion")
    fused = [name for name in config.methods if name in FUSION_METHODS]
    # members evaluated alone are built once, fitted once, and fused after them
    members = [name for name in (fusion.members if fused else []) if name not in config.methods]
    standalone = [name for name in config.methods if name not in FUSION_METHODS]
    _check_llm_methods(config, standalone + members)
    if config.data is None:
        config.data = (
            TrainedRun(config.checkpoint).config.data if config.checkpoint else DataConfig()
        )
    dataset = load_dataset(config.data)
    # the text baselines' item vectors, encoded (or read from the cache) when they are fitted
    text_vectors = partial(
        cached_text_vectors, dataset.item_text, cache_dir=config.data.cache_dir.expanduser()
    )
    classical = {
        name: build_baseline(name, config.hyperparameters, text_vectors)
        for name in standalone + members
        if name not in RUN_METHODS
    }
    llm = _llm_methods([name for name in standalone + members if name in RUN_METHODS], config)
    built = {
        name: classical[name] if name in classical else llm[name] for name in standalone + members
    }
    prefitted: set[str] = set()
    methods = {name: built[name] for name in standalone}
    for name in fused:
        chosen = {member: built[member] for member in fusion.members}
        methods[name] = Fusion(fusion, chosen, stacking=name == "fusion-stack", prefitted=prefitted)
    split = make_split(dataset.sequences(), dataset.n_items, config.protocol, dataset.user_ids)
    ks = config.protocol.cutoffs()
    # beyond-accuracy references, from what methods may train on and the same for all of them
    popularity = user_counts(split.train_sequences, split.n_items)
    embeddings = svd_item_embeddings(split.train_sequences, split.n_items, DIVERSITY_DIM)
    per_user: dict[str, dict[str, np.ndarray]] = {}
    catalogue: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    for name, method in tqdm(methods.items(), desc="methods", unit="method"):
        started = time.perf_counter()
        method.fit(split.train_sequences, split.n_items, split.valid)
        prefitted.add(name)
        fitted = time.perf_counter()
        per_user[name], lists = ranked_cases(
            method.score, split.test, ks, name=name, held_out=split.held_out_items
        )
        catalogue[name] = {}
        for k in ks:
            overall, by_user = beyond_accuracy(
                lists, k, popularity, len(split.train_sequences), embeddings
            )
            catalogue[name].update(overall)
            per_user[name].update(by_user)
        seconds[name] = {"fit": fitted - started, "evaluate": time.perf_counter() - fitted}
    summary = {
        "protocol": {
            **config.protocol.describe(),
            "dataset": dataset.name,
            "min_rating": config.data.min_rating,
            "k_core": config.data.k_core,
        },
        "n_test_users": len(split.test),
        "split": split.counts,
        "methods": {
            name: {
                **summarise(metrics, config.bootstrap_resamples, config.bootstrap_seed),
                **catalogue[name],
            }
            for name, metrics in per_user.items()
        },
        "seconds": seconds,
        "fusion_weights": {name: methods[name].weights for name in fused},
    }
    if split.held_out_items is not None:
        summary["cannot_rank_new_items"] = [
            name for name in methods if name in INTERACTION_ONLY_METHODS
        ]
    return Evaluation(dataset, split, per_user, summary)


def held_out_note(summary: dict[str, Any]) -> str:
    """The footnote a coldstart-items table needs: what ``held_out_*`` measures, over how
    many users, and which methods cannot rank a held-out item ("" for other protocols)."""
    if "cannot_rank_new_items" not in summary:
        return ""
    split = summary["split"]
    note = (
        f"held_out_*: only the query items among the {split['held_out_items']} held-out items "
        f"count as relevant, over the {split['test_users_with_held_out_query']} test users "
        "who have one; the other metrics count every query item."
    )
    blind = summary["cannot_rank_new_items"]
    if blind:
        note += (
            f" {', '.join(blind)} learn items from interactions only and cannot rank a "
            "held-out item (no learned score: 0 from pop, itemknn, userknn and ease)."
        )
    return note


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_options(parser)
    protocol = parser.add_argument_group("protocol (docs/protocols.md)")
    protocol.add_argument("--protocol", choices=PROTOCOLS, default="coldstart")
    protocol.add_argument("--support-size", type=int, default=10)
    protocol.add_argument("--query-size", type=int, default=10)
    protocol.add_argument("--split-seed", type=int, default=0)
    protocol.add_argument("--num-negatives", type=int, default=19)
    protocol.add_argument("--sample-seed", type=int, default=0)
    protocol.add_argument("--k", type=int_list, help="cutoffs, e.g. 10,20 (protocol default)")
    parser.add_argument(
        "--methods",
        default="pop,itemknn",
        help="comma-separated: pop, itemknn, userknn, ease, sasrec, content, llm-noadapt, "
        "llm-finetune, meta-lora, meta-lora-ensemble",
    )
    parser.add_argument("--baselines-config", type=Path, default=REPO_CONFIGS / "baselines.yaml")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000)
    parser.add_argument("--checkpoint", type=Path, help="meta-lora run dir (metarec train)")
    parser.add_argument(
        "--ensemble-checkpoints",
        type=lambda text: [Path(part) for part in name_list(text)],
        default=[],
        help="meta-lora-ensemble: other meta-lora run dirs, comma-separated, trained alike "
        "with other seeds; their adapted scores are averaged with --checkpoint's",
    )
    parser.add_argument(
        "--baseline-checkpoint",
        type=Path,
        help="run dir trained with meta.inner_steps=0 (default: <checkpoint>/pretrained if there)",
    )
    parser.add_argument("--output", type=Path, help="results JSON")
    parser.add_argument("--per-user-output", type=Path, help="per-user metrics Parquet")
    add_remote_code_option(parser)
    add_device_option(parser)


def config_from_args(args: argparse.Namespace, env: Environment) -> EvaluateConfig:
    return job_config(
        EvaluateConfig,
        args,
        env,
        protocol=from_args(ProtocolConfig, args, name=args.protocol, ks=args.k),
        methods=name_list(args.methods),
        hyperparameters=load_yaml(args.baselines_config),
    )


def run(config: EvaluateConfig) -> None:
    """Evaluate, print the Markdown table, write the JSON and per-user Parquet asked for."""
    for output in (config.output, config.per_user_output):
        check_writable(output)
    result = evaluate(config)
    print(markdown_table(result.summary))
    note = held_out_note(result.summary)
    if note:
        print(f"\n{note}")
    if config.output:
        write_json(config.output, result.summary)
        print(f"wrote {config.output}")
    if config.per_user_output:
        test_users = result.dataset.user_ids[[case.user for case in result.split.test]]
        write_per_user(config.per_user_output, result.per_user, test_users)
        print(f"wrote {config.per_user_output}")
