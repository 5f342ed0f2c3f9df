"""Meta-train the LoRA initialisation of the LLM user model on cold-start episodes.

    metarec train --config configs/tiny.yaml --output-dir runs/tiny

Reading order: config → setup (data, split, item text, backbone, user model, optimiser)
→ train (episodes of meta-train users, one meta step per batch of users, validation on
validation users after each epoch) → save_checkpoint (best epoch by validation ndcg@10).

Every meta step adapts a batch of users at once with the batched fast-weight inner loop
and backpropagates the algorithm's meta objective (`metarec.meta.algorithms`) into the
shared LoRA initialisation and the item side. ``meta.inner_steps = 0`` trains the same
model without adaptation (the ``llm-noadapt`` comparison: ordinary multi-user training).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from metarec.checkpoint import read_checkpoint, save_checkpoint
from metarec.data.episodes import collate, sample_episodes
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import UserCase, coldstart_split, loo_split
from metarec.errors import ConfigError
from metarec.eval.ranking import evaluate_cases
from metarec.meta.algorithms import MetaConfig, MetaSGDRates, meta_objective
from metarec.meta.personalise import episode_losses, query_loss_fn, support_loss_fn
from metarec.meta.recommender import LLMRecommender, load_trained_weights, trained_weights
from metarec.models.lora import initial_fast_weights
from metarec.models.user_model import UserModel, UserModelConfig

TRAINING_PROTOCOLS = ("coldstart", "loo")


@dataclass
class TrainConfig:
    """Everything a meta-training run depends on (saved as ``config.json`` in the run dir)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: UserModelConfig = field(default_factory=UserModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    # The users the model may train on: "coldstart" (meta-train users; evaluate on coldstart
    # with the same split_seed) or "loo" (every user's history but its last two items;
    # evaluate on loo or sampled).
    protocol: str = "coldstart"
    split_seed: int = 0
    support_sizes: list[int] = field(default_factory=lambda: [5, 10, 20])
    query_size: int = 10
    valid_support_size: int = 10
    valid_users: int = 512  # validation after each epoch scores at most this many users
    users_per_batch: int = 16
    # Ordinary multi-user training (no inner loop) before meta-training. Its best epoch is
    # saved as <output_dir>/pretrained (the llm-noadapt comparison) and starts meta-training.
    pretrain_epochs: int = 0
    # Adam's first steps move every weight by about the lr, which undoes the pretrained
    # model when meta-training starts from it: the pretraining stage has its own lr.
    pretrain_lr: float | None = None  # default: outer_lr
    epochs: int = 1
    outer_lr: float = 1e-3
    seed: int = 0
    output_dir: Path = Path("runs/meta")
    # A run dir (e.g. the llm-noadapt run) whose trained weights start this one, so
    # meta-learning refines ordinary multi-user training instead of starting from scratch.
    init_from: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in TRAINING_PROTOCOLS:
            raise ConfigError(f"protocol {self.protocol!r}: expected one of {TRAINING_PROTOCOLS}")
        if not self.support_sizes or min(self.support_sizes) < 2:
            raise ConfigError(
                f"support_sizes {self.support_sizes}: each must be at least 2 (the support "
                "loss predicts the next support item)"
            )


class MetaTrainRecipe:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def setup(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        dataset = load_dataset(config.data)
        self.n_items = dataset.n_items
        self.item_text = dataset.item_text
        if config.protocol == "coldstart":
            self.split = coldstart_split(
                dataset.sequences(), dataset.n_items, config.valid_support_size,
                config.query_size, config.split_seed,
            )  # fmt: skip
        else:
            self.split = loo_split(dataset.sequences(), dataset.n_items, dataset.user_ids)
        if config.meta.algorithm in ("maml", "metasgd"):
            config.model.backbone.attention = "eager"  # SDPA on CPU has no double backward
        self.model = UserModel.build(
            config.model,
            dataset.item_text,
            config.data.cache_dir.expanduser(),
            self.split.train_sequences,
        )
        self.rates = None
        if config.meta.algorithm == "metasgd":
            self.rates = MetaSGDRates(self.model.lora_layers, config.meta.inner_lr)
        if config.init_from is not None:
            self.load_initial_weights(config.init_from)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.rates is not None:
            trainable += list(self.rates.parameters())
        self.trainable = trainable
        self.optimizer = torch.optim.Adam(trainable, lr=config.outer_lr)
        self.writer = SummaryWriter(str(config.output_dir / "tensorboard"))
        self.history: list[dict] = []
        self.step = 0

    def load_initial_weights(self, run: Path) -> None:
        """Start from another run's weights: same model, same data and split, or an error."""
        trained_on, weights = read_checkpoint(run / "checkpoint")
        ours = json.loads(json.dumps(asdict(self.config), default=str))
        for config in (trained_on, ours):  # second-order runs switch attention: same weights
            config["model"]["backbone"].pop("attention", None)
        for key in ("model", "data", "protocol", "split_seed", "query_size", "valid_support_size"):
            if trained_on.get(key) != ours[key]:
                raise ConfigError(
                    f"init_from {run}: its {key} is {trained_on.get(key)!r}, this run's is "
                    f"{ours[key]!r} (the weights must fit the model and the split must keep "
                    "test users unseen)"
                )
        load_trained_weights(self.model, self.rates, run / "checkpoint", weights)

    def meta_step(self, episodes: list[tuple[np.ndarray, np.ndarray]], meta: MetaConfig) -> float:
        """One outer update from a batch of users' episodes; returns the meta objective."""
        batch = collate([s for s, _ in episodes], [q for _, q in episodes])
        excluded = batch.support_excluded(self.n_items)
        objective, _ = meta_objective(
            meta,
            support_loss_fn(self.model, batch),
            query_loss_fn(self.model, batch, excluded),
            initial_fast_weights(self.model.lora_layers, len(episodes)),
            self.rates,
        )
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        return objective.item()

    def validate(self, cases: list[UserCase], meta: MetaConfig) -> dict[str, float]:
        """ndcg@10 and support/query losses of validation users before and after adaptation."""
        self.model.eval()
        cases = cases[: self.config.valid_users]
        batch = collate(
            [case.history[-self.config.model.max_len :] for case in cases],
            [case.relevant for case in cases],
        )
        metrics = {
            f"valid_{name}": value
            for name, value in episode_losses(self.model, batch, meta, self.rates).items()
        }
        for label, steps in (("before", 0), ("after", meta.inner_steps)):
            method = LLMRecommender(self.model, meta, self.rates, steps)
            per_user = evaluate_cases(method.score, cases, (10,), name="meta-lora")
            metrics[f"valid_ndcg@10_{label}"] = float(per_user["ndcg@10"].mean())
        self.model.train()
        self.model.backbone.eval()  # frozen: its dropout (if any) stays off
        return metrics

    def train(self) -> list[dict]:
        config = self.config
        if config.pretrain_epochs > 0:
            pretrain = self.pretrained_config()
            self.best = -1.0
            self.optimizer = torch.optim.Adam(self.trainable, lr=pretrain.outer_lr)
            self.run_stage("pretrain", pretrain.meta, config.pretrain_epochs, pretrain)
            self.load_initial_weights(pretrain.output_dir)  # its best epoch
            self.optimizer = torch.optim.Adam(self.trainable, lr=config.outer_lr)
        self.best = -1.0
        if config.init_from is not None or config.pretrain_epochs > 0:
            # the starting point competes with every epoch: meta-training must earn its keep
            self.end_epoch("meta", {"epoch": 0, **self.validate(self.split.valid, config.meta)})
        self.run_stage("meta", config.meta, config.epochs, config)
        return self.history

    def pretrained_config(self) -> TrainConfig:
        """The config the pretraining stage's checkpoint records: a plain llm-noadapt run."""
        return replace(
            self.config,
            meta=replace(self.config.meta, inner_steps=0),
            epochs=self.config.pretrain_epochs,
            outer_lr=self.config.pretrain_lr or self.config.outer_lr,
            pretrain_epochs=0,
            pretrain_lr=None,
            output_dir=self.config.output_dir / "pretrained",
        )

    def run_stage(self, stage: str, meta: MetaConfig, epochs: int, saved_as: TrainConfig) -> None:
        """``epochs`` epochs of meta steps; checkpoints the best epoch with ``saved_as``."""
        config = self.config
        for epoch in range(epochs):
            episodes = sample_episodes(
                self.split.train_sequences, config.support_sizes, config.query_size, self.rng
            )
            started, losses = time.perf_counter(), []
            batches = range(0, len(episodes), config.users_per_batch)
            for start in tqdm(batches, desc=f"{stage} epoch {epoch + 1}", unit="batch"):
                losses.append(
                    self.meta_step(episodes[start : start + config.users_per_batch], meta)
                )
                self.writer.add_scalar(f"{stage}/objective", losses[-1], self.step)
                self.step += 1
            metrics = {
                "epoch": epoch + 1,
                "objective": float(np.mean(losses)),
                "users_per_s": len(episodes) / (time.perf_counter() - started),
                **self.validate(self.split.valid, meta),
            }
            self.end_epoch(stage, metrics, saved_as)

    def end_epoch(self, stage: str, metrics: dict, saved_as: TrainConfig | None = None) -> None:
        """Log an epoch's metrics; checkpoint it if it validates best in its stage."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"{stage}/{name}", value, metrics["epoch"])
        metrics = {"stage": stage, **metrics}
        self.history.append(metrics)
        tqdm.write(json.dumps(metrics))
        if metrics["valid_ndcg@10_after"] > self.best:
            self.best = metrics["valid_ndcg@10_after"]
            self.save_checkpoint(saved_as or self.config)

    def save_checkpoint(self, saved_as: TrainConfig | None = None) -> None:
        """The current state as ``<output_dir>/checkpoint`` of ``saved_as`` (default: this run)."""
        saved_as = saved_as or self.config
        weights = trained_weights(self.model, self.rates)
        history = self.history
        if saved_as is not self.config:
            history = [row for row in history if row["stage"] == "pretrain"]
        save_checkpoint(
            saved_as.output_dir / "checkpoint",
            self.model.lora_layers,
            saved_as.model.lora,
            saved_as.model.backbone.name,
            weights,
            asdict(saved_as),
            history,
        )

    def cleanup(self) -> None:
        self.writer.close()


def run(config: TrainConfig) -> list[dict]:
    recipe = MetaTrainRecipe(config)
    recipe.setup()
    try:
        return recipe.train()
    finally:
        recipe.cleanup()
