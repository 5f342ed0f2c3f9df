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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from metarec.checkpoint import save_checkpoint
from metarec.data.episodes import collate, sample_episodes
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import UserCase, coldstart_split
from metarec.errors import ConfigError
from metarec.eval.ranking import evaluate_cases
from metarec.meta.algorithms import MetaConfig, MetaSGDRates, meta_objective
from metarec.meta.personalise import episode_losses, query_loss_fn, support_loss_fn
from metarec.meta.recommender import LLMRecommender, trained_weights
from metarec.models.lora import initial_fast_weights
from metarec.models.user_model import UserModel, UserModelConfig


@dataclass
class TrainConfig:
    """Everything a meta-training run depends on (saved as ``config.json`` in the run dir)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: UserModelConfig = field(default_factory=UserModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    split_seed: int = 0
    support_sizes: list[int] = field(default_factory=lambda: [5, 10, 20])
    query_size: int = 10
    valid_support_size: int = 10
    users_per_batch: int = 16
    epochs: int = 1
    outer_lr: float = 1e-3
    seed: int = 0
    output_dir: Path = Path("runs/meta")

    def __post_init__(self) -> None:
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
        self.split = coldstart_split(
            dataset.sequences(), dataset.n_items, config.valid_support_size,
            config.query_size, config.split_seed,
        )  # fmt: skip
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
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.rates is not None:
            trainable += list(self.rates.parameters())
        self.optimizer = torch.optim.Adam(trainable, lr=config.outer_lr)
        self.writer = SummaryWriter(str(config.output_dir / "tensorboard"))
        self.history: list[dict] = []
        self.step = 0

    def meta_step(self, episodes: list[tuple[np.ndarray, np.ndarray]]) -> float:
        """One outer update from a batch of users' episodes; returns the meta objective."""
        batch = collate([s for s, _ in episodes], [q for _, q in episodes])
        excluded = batch.support_excluded(self.n_items)
        objective, _ = meta_objective(
            self.config.meta,
            support_loss_fn(self.model, batch),
            query_loss_fn(self.model, batch, excluded),
            initial_fast_weights(self.model.lora_layers, len(episodes)),
            self.rates,
        )
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        return objective.item()

    def validate(self, cases: list[UserCase]) -> dict[str, float]:
        """ndcg@10 and support/query losses of validation users before and after adaptation."""
        self.model.eval()
        sample = cases[:512]  # losses are a diagnostic: a bounded sample is enough
        batch = collate([case.history for case in sample], [case.relevant for case in sample])
        metrics = {
            f"valid_{name}": value
            for name, value in episode_losses(
                self.model, batch, self.config.meta, self.rates
            ).items()
        }
        for label, steps in (("before", 0), ("after", self.config.meta.inner_steps)):
            method = LLMRecommender(self.model, self.config.meta, self.rates, steps)
            per_user = evaluate_cases(method.score, cases, (10,), name="meta-lora")
            metrics[f"valid_ndcg@10_{label}"] = float(per_user["ndcg@10"].mean())
        self.model.train()
        self.model.backbone.eval()  # frozen: its dropout (if any) stays off
        return metrics

    def train(self) -> list[dict]:
        config = self.config
        best = -1.0
        for epoch in range(config.epochs):
            episodes = sample_episodes(
                self.split.train_sequences, config.support_sizes, config.query_size, self.rng
            )
            started, losses = time.perf_counter(), []
            batches = range(0, len(episodes), config.users_per_batch)
            for start in tqdm(batches, desc=f"epoch {epoch + 1}", unit="batch"):
                losses.append(self.meta_step(episodes[start : start + config.users_per_batch]))
                self.writer.add_scalar("train/meta_objective", losses[-1], self.step)
                self.step += 1
            metrics = {
                "epoch": epoch + 1,
                "meta_objective": float(np.mean(losses)),
                "users_per_s": len(episodes) / (time.perf_counter() - started),
            }
            metrics.update(self.validate(self.split.valid))
            for name, value in metrics.items():
                self.writer.add_scalar(f"epoch/{name}", value, epoch + 1)
            self.history.append(metrics)
            tqdm.write(json.dumps(metrics))
            if metrics["valid_ndcg@10_after"] > best:
                best = metrics["valid_ndcg@10_after"]
                self.save_checkpoint()
        return self.history

    def save_checkpoint(self) -> None:
        """The current state as ``<output_dir>/checkpoint`` (see `metarec.checkpoint`)."""
        weights = trained_weights(self.model, self.rates)
        save_checkpoint(
            self.config.output_dir / "checkpoint",
            self.model.lora_layers,
            self.config.model.lora,
            self.config.model.backbone.name,
            weights,
            asdict(self.config),
            self.history,
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
