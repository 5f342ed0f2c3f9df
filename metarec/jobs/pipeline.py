"""The main job end to end, on one config: what a newcomer runs first (``make demo``).

    metarec pipeline --config configs/quick.yaml --run-dir runs/demo

1. data check: read, validate and preprocess the dataset (cached), print its statistics;
2. item encoding: the text encoder's vector of every item (cached for later runs);
3. meta-training: the recipe of `train/meta_train.py` into the run dir (pretraining stage,
   then meta-learning; ``run.json`` records config, seeds, commit and package versions);
4. a FAISS index of the trained item vectors (`retrieval/build.py`), in ``index/``;
5. cold-start evaluation of the baselines and the three LLM methods at each support size,
   in ``results.json``;
6. a batch rerank of the test users (`retrieval/rerank.py`), in ``rerank/``;
7. the report: ``report.md`` and ``report.html`` with the results table, the cold-start
   curve, the training curves and three sample users' recommendations, explained.

Each step prints its wall time; ``timings.json`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from metarec.atomic import atomic_file
from metarec.config import load_yaml
from metarec.data.prepare import load_dataset
from metarec.data.splits import ProtocolConfig
from metarec.errors import ConfigError
from metarec.eval.plots import coldstart_curve, training_curves
from metarec.eval.report import comparison_table
from metarec.jobs.evaluate import LLM_METHODS, EvaluateConfig, evaluate
from metarec.jobs.report import RunReport, SampleUser, write_report
from metarec.meta.explain import explained_items
from metarec.models.text_encoder import cached_text_vectors
from metarec.options import (
    REPO_CONFIGS,
    Environment,
    add_train_config_options,
    check_writable,
    from_args,
    id_positions,
    int_list,
    name_list,
    train_config,
)
from metarec.provenance import provenance
from metarec.trained_run import TrainConfig, TrainedRun
from retrieval.build import IndexBuildConfig, build_catalogue_index
from retrieval.index import IndexConfig
from retrieval.rerank import RerankConfig, run_rerank
from retrieval.shards import ShardStore
from train.meta_train import train


@dataclass
class PipelineConfig:
    """The training config plus what the later steps evaluate and show."""

    train: TrainConfig
    baselines: list[str] = field(default_factory=lambda: ["pop", "itemknn", "ease"])
    support_sizes: list[int] = field(default_factory=lambda: [5, 10, 20])
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # configs/baselines.yaml
    index: IndexConfig = field(default_factory=lambda: IndexConfig(kind="ivf", nlist=32, nprobe=4))
    rerank_support_size: int = 10
    sample_users: int = 3
    bootstrap_resamples: int = 1000

    def __post_init__(self) -> None:
        if self.rerank_support_size not in self.support_sizes:
            raise ConfigError(
                f"rerank_support_size {self.rerank_support_size} must be one of the "
                f"evaluated support sizes {self.support_sizes}"
            )


class Steps:
    """Times each step, prints it as it ends, and keeps the seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"\n==> {name}", flush=True)
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started
        print(f"<== {name}: {self.seconds[name]:.1f} s", flush=True)


def sample_users(config: PipelineConfig, rows: pd.DataFrame) -> list[SampleUser]:
    """The first test users of the rerank, their top 5 and why (`metarec.meta.explain`)."""
    remote_code = config.train.model.backbone.trust_remote_code
    device = config.train.distributed.device
    trained = TrainedRun(config.train.output_dir, config.train.data, remote_code, device)
    method, dataset = trained.recommender(), trained.dataset
    split = trained.split(config.rerank_support_size)
    titles = dataset.titles()
    users = []
    for case in split.test[: config.sample_users]:
        user_id = dataset.user_ids[case.user]
        top = rows[rows["user_id"] == user_id].sort_values("rank").head(5)
        items = id_positions(dataset.item_ids, top["item_id"])  # the rerank's raw ids
        explained = explained_items(method, case.history, items, titles, dataset.item_ids)
        recommendations = [
            (row["title"], row["score"], row["adaptation_delta"],
             [(c["title"], c["contribution"]) for c in row["contributors"][:2]])
            for row in explained
        ]  # fmt: skip
        hits = [titles[i] for i in items if i in set(case.relevant)]
        history = [titles[i] for i in case.history]
        users.append(SampleUser(user_id, history, recommendations, hits))
    return users


def run_pipeline(config: PipelineConfig) -> dict:
    """Run every step into ``config.train.output_dir``; returns results and timings."""
    run_dir = config.train.output_dir
    data = config.train.data
    remote_code = config.train.model.backbone.trust_remote_code  # as the command line allowed
    device = config.train.distributed.device  # as the command line chose (--device)
    steps = Steps()

    with steps("data check"):
        dataset = load_dataset(data)
        statistics = dataset.stats()
        for key, value in statistics.items():
            print(
                f"  {key:28s} {value:.6g}" if isinstance(value, float) else f"  {key:28s} {value}"
            )
    with steps("item encoding"):
        if config.train.model.text_encoder != "none":
            cached_text_vectors(
                dataset.item_text, config.train.model.text_encoder, data.cache_dir.expanduser()
            )
    with steps("meta-training"):
        history = train(config.train)
    with steps("FAISS index"):
        build_catalogue_index(
            IndexBuildConfig(
                run_dir / "index",
                config.index,
                run_dir,
                data,
                trust_remote_code=remote_code,
                device=device,
            )
        )
    results = {}
    methods = [*config.baselines, *LLM_METHODS]
    for support in config.support_sizes:
        with steps(f"evaluate support {support}"):
            protocol = ProtocolConfig(
                name="coldstart", support_size=support, query_size=config.train.query_size,
                split_seed=config.train.split_seed,
            )  # fmt: skip
            evaluation = evaluate(
                EvaluateConfig(
                    data=data, protocol=protocol, methods=methods,
                    hyperparameters=config.hyperparameters,
                    bootstrap_resamples=config.bootstrap_resamples, checkpoint=run_dir,
                    trust_remote_code=remote_code, device=device,
                )
            )  # fmt: skip
            results[support] = evaluation.summary
    with atomic_file(run_dir / "results.json") as temporary:
        temporary.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))
    with steps("batch rerank"):
        shutil.rmtree(run_dir / "rerank", ignore_errors=True)  # a re-run retrained the model
        rerank = RerankConfig(
            run=run_dir, index=run_dir / "index", output_dir=run_dir / "rerank", data=data,
            support_size=config.rerank_support_size, trust_remote_code=remote_code,
            device=device,
        )  # fmt: skip
        manifest = run_rerank(rerank)
        rows = ShardStore(
            rerank.output_dir / "shards", manifest["users"], rerank.shard_users
        ).read()
    with steps("report"):
        users = sample_users(config, rows)
        curves = {
            method: [
                (support, summary["methods"][method]["ndcg@10"],
                 *summary["methods"][method]["ndcg@10_ci"])
                for support, summary in results.items()
            ]
            for method in methods
        }  # fmt: skip
        coldstart_curve(curves, run_dir / "coldstart_curve.png")
        training_curves(history, run_dir / "training_curves.png")
        table = comparison_table(
            {f"ndcg@10, support {s}": (summary, "ndcg@10") for s, summary in results.items()},
            methods,
        )
        write_report(
            run_dir,
            RunReport(
                title=f"metarec run {run_dir.name}",
                introduction=(
                    f"{dataset.name}: {statistics['users']} users, {statistics['items']} items, "
                    f"{statistics['interactions']} interactions. Cold-start protocol "
                    f"(docs/protocols.md), split seed {config.train.split_seed}: "
                    f"{results[config.support_sizes[0]]['n_test_users']} unseen test users "
                    f"give their first K interactions (the support); methods rank the next "
                    f"{config.train.query_size}. Mean ndcg@10 with bootstrap 95% CIs."
                ),
                results_table=table,
                steps=steps.seconds,
                figures={
                    "ndcg@10 against support size (the cold-start curve)": "coldstart_curve.png",
                    "Validation losses before and after adaptation": "training_curves.png",
                },
                users=users,
                provenance=provenance(),
            ),
        )
    with atomic_file(run_dir / "timings.json") as temporary:
        temporary.write_text(json.dumps(steps.seconds, indent=2))
    print(f"\n{table}\n\nwrote {run_dir / 'report.md'} and {run_dir / 'report.html'}")
    print(f"total {sum(steps.seconds.values()):.0f} s")
    return {"results": results, "seconds": steps.seconds}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_config_options(parser)
    parser.add_argument("--run-dir", type=Path, required=True, help="e.g. runs/demo")
    parser.add_argument("--baselines", default="pop,itemknn,ease")
    parser.add_argument("--supports", type=int_list, default=[5, 10, 20])
    parser.add_argument("--baselines-config", type=Path, default=REPO_CONFIGS / "baselines.yaml")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000)


def config_from_args(args: argparse.Namespace, env: Environment) -> PipelineConfig:
    return from_args(
        PipelineConfig,
        args,
        train=train_config(args, env, output_dir=args.run_dir),
        baselines=name_list(args.baselines),
        support_sizes=args.supports,
        hyperparameters=load_yaml(args.baselines_config),
    )


def run(config: PipelineConfig) -> None:
    check_writable(config.train.output_dir / "report.md")
    run_pipeline(config)
