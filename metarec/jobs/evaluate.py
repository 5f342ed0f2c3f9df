"""The evaluation job: fit each method on a protocol split and measure it on the test users.

Reads a dataset, builds the protocol's split, fits every requested method on what the
protocol allows, ranks the test users' relevant items and summarises each metric as a
mean with a bootstrap 95% confidence interval. Results come back as a JSON-ready dict;
`metarec.eval.report` renders and writes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from metarec.baselines import build_baseline
from metarec.baselines.base import Recommender
from metarec.baselines.fusion import Fusion, FusionConfig
from metarec.checkpoint import read_checkpoint
from metarec.config import from_mapping
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import ProtocolConfig, Split, make_split
from metarec.errors import ConfigError
from metarec.eval.beyond import beyond_accuracy, user_counts
from metarec.eval.metrics import bootstrap_ci
from metarec.eval.ranking import ranked_cases
from metarec.meta.algorithms import MetaConfig
from metarec.meta.recommender import LLMRecommender
from metarec.models.item_init import svd_item_embeddings


@dataclass
class EvaluateConfig:
    """What to evaluate: the data, the protocol, the methods and their hyper-parameters."""

    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    methods: list[str] = field(default_factory=lambda: ["pop", "itemknn"])
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    checkpoint: Path | None = None
    baseline_checkpoint: Path | None = None
    trust_remote_code: bool = False  # let the runs' backbones run code from their model folders


LLM_METHODS = ("llm-noadapt", "llm-finetune", "meta-lora")
FUSION_METHODS = ("fusion", "fusion-stack")
DIVERSITY_DIM = 64  # the shared item embedding diversity@K is measured in


def _check_llm_methods(config: EvaluateConfig, names: list[str]) -> None:
    """Fail before loading anything when an LLM method lacks its checkpoint.

    A meta-lora run trained with ``pretrain_epochs`` holds its own llm-noadapt run in
    ``pretrained/``, the default ``baseline_checkpoint``.
    """
    own_baseline = config.checkpoint and config.checkpoint / "pretrained"
    if config.baseline_checkpoint is None and own_baseline and own_baseline.is_dir():
        config.baseline_checkpoint = own_baseline
    wanted = [name for name in names if name in LLM_METHODS]
    needs_meta = "meta-lora" in wanted or "llm-finetune" in wanted
    if needs_meta and config.checkpoint is None:
        raise ConfigError("meta-lora and llm-finetune need --checkpoint (a meta-lora run dir)")
    needs_baseline = "llm-noadapt" in wanted or "llm-finetune" in wanted
    if needs_baseline and config.baseline_checkpoint is None:
        raise ConfigError(
            "llm-noadapt and llm-finetune need --baseline-checkpoint (a run trained with "
            "meta.inner_steps=0)"
        )


def check_same_split(
    method: LLMRecommender, run: Path, protocol: str, split_seed: int, data_config: DataConfig
) -> None:
    """Refuse to score users the model may have trained on: ``protocol``'s test users of
    ``split_seed`` on ``data_config``'s data must be ones the run held out."""
    trained = method.trained_on
    data = trained.get("data", {})
    trained_protocol = trained.get("protocol", "coldstart")
    allowed = ("coldstart",) if trained_protocol == "coldstart" else ("loo", "sampled")
    if protocol not in allowed:
        raise ConfigError(
            f"{run}: trained on the {trained_protocol} split, so it can be evaluated on "
            f"{' or '.join(allowed)}, not {protocol} (whose test users it trained on)"
        )
    same = (
        (trained_protocol == "loo" or trained.get("split_seed") == split_seed)
        and data.get("dataset") == data_config.dataset
        and data.get("min_rating") == data_config.min_rating
        and data.get("k_core") == data_config.k_core
        and data.get("interactions") == (data_config.interactions and str(data_config.interactions))
    )
    if not same:
        raise ConfigError(
            f"{run}: trained on dataset {data.get('dataset')} with split seed "
            f"{trained.get('split_seed')}; evaluating on another split would score its "
            "training users"
        )


def _llm_method(name: str, config: EvaluateConfig, dataset: Dataset) -> Recommender:
    """meta-lora: the meta-learned init adapted; llm-noadapt: the normally trained model;
    llm-finetune: that model fine-tuned with meta-lora's inner steps and (initial) inner lr."""
    cache_dir = config.data.cache_dir.expanduser()
    run = config.checkpoint if name == "meta-lora" else config.baseline_checkpoint
    method = LLMRecommender.from_checkpoint(
        run / "checkpoint", dataset.item_text, cache_dir, trust_remote_code=config.trust_remote_code
    )
    check_same_split(method, run, config.protocol.name, config.protocol.split_seed, config.data)
    if name == "llm-noadapt":
        method.inner_steps = 0
    if name == "llm-finetune":
        meta_lora_config, _ = read_checkpoint(config.checkpoint / "checkpoint")
        meta_lora = from_mapping(MetaConfig, meta_lora_config["meta"], where="meta-lora meta")
        method.meta = MetaConfig(
            algorithm="fomaml", inner_steps=meta_lora.inner_steps, inner_lr=meta_lora.inner_lr
        )
        method.inner_steps = meta_lora.inner_steps
    return method


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
    """Mean of each per-user metric plus ``<metric>_ci``: its bootstrap 95% interval."""
    summary: dict[str, float | list[float]] = {}
    for name, values in per_user.items():
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
    classical = {
        name: build_baseline(name, config.hyperparameters)
        for name in standalone + members
        if name not in LLM_METHODS
    }
    dataset = load_dataset(config.data)
    built = {
        name: classical[name] if name in classical else _llm_method(name, config, dataset)
        for name in standalone + members
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
        per_user[name], lists = ranked_cases(method.score, split.test, ks, name=name)
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
    return Evaluation(dataset, split, per_user, summary)
