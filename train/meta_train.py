"""Meta-train the LoRA initialisation of the LLM user model on cold-start episodes.

    metarec train --config configs/tiny.yaml --output-dir runs/tiny
    torchrun --nproc_per_node 2 -m metarec train --config configs/tiny.yaml \
        --set distributed.deepspeed_config=ds_configs/zero3.json

Reading order: config → setup (data, split, user model, engine) → train (an optional
pretraining stage without adaptation, then the meta stage; each epoch samples one
episode per training user, takes one meta step per batch of users and validates) →
checkpoints (the best epoch of each stage, by validation ndcg@10) and resumable states.

Every meta step adapts a batch of users at once with the batched fast-weight inner loop
and backpropagates the algorithm's meta objective (`metarec.meta.algorithms`) into the
shared LoRA initialisation and the item side. ``meta.inner_steps = 0`` trains the same
model without adaptation (the ``llm-noadapt`` comparison: ordinary multi-user training).

Under a launcher (torchrun, deepspeed, accelerate) each rank takes an equal share of every
meta step's users (`metarec.distributed.engine`); validation users are shared out the same way
and the metrics summed over ranks. Only rank 0 writes checkpoints, TensorBoard and logs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from metarec.atomic import atomic_file
from metarec.checkpoint import save_checkpoint, trained_weights
from metarec.data.episodes import collate, history_windows, sample_episodes
from metarec.data.prepare import load_dataset
from metarec.data.splits import UserCase
from metarec.distributed import state
from metarec.distributed.engine import (
    all_reduce_sums,
    build_engine,
    init_process_group,
    leave_process_group,
    rank_micro_batches,
    refuse_unsupported,
)
from metarec.errors import ConfigError
from metarec.eval.ranking import evaluate_cases
from metarec.meta.algorithms import MetaConfig, MetaSGDRates
from metarec.meta.lr_schedule import stage_lr
from metarec.meta.meta_step import MetaStepModule
from metarec.meta.personalise import episode_losses
from metarec.meta.recommender import LLMRecommender
from metarec.models.activation_checkpointing import enable_activation_checkpointing
from metarec.models.user_model import UserModel
from metarec.options import (
    Environment,
    add_train_config_options,
    check_writable,
    train_config,
)
from metarec.provenance import provenance
from metarec.trained_run import TrainConfig, TrainedRun, run_split


class MetaTrainRecipe:
    def __init__(
        self,
        config: TrainConfig,
        launched_world_size: int = 1,
        kill_at_step: tuple[int, int] | None = None,
    ) -> None:
        self.config = config
        self.launched_world_size = launched_world_size
        self.kill_at_step = kill_at_step  # (rank, step): fault injection for resume tests

    def setup(self) -> None:
        config = self.config
        # what the engine cannot run is refused before any data is read
        properties = config.meta.properties
        refuse_unsupported(config.distributed, config.meta.algorithm, properties.second_order)
        init_process_group(config.distributed, self.launched_world_size)
        self.shared_output_checked = False
        if config.state_every > 0:
            self.require_shared_output_dir()
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        dataset = load_dataset(config.data)
        self.n_items = dataset.n_items
        self.item_text = dataset.item_text
        self.dataset_fingerprint = dataset.fingerprint()
        self.split = run_split(config, dataset, config.valid_support_size)
        if properties.second_order:
            config.model.backbone.attention = "eager"  # SDPA on CPU has no double backward
        self.device = torch.device(config.distributed.device)
        self.model = UserModel.build(
            config.model,
            dataset.item_text,
            config.data.cache_dir.expanduser(),
            self.split.train_sequences,
        ).to(self.device)
        unranked = self.hold_out_items()
        self.rates = None  # built after the move: the rates live beside the LoRA weights
        if config.meta.properties.learned_rates:
            self.rates = MetaSGDRates(self.model.fast_layers, config.meta.inner_lr)
        if config.init_from is not None:
            self.load_initial_weights(config.init_from)
        self.stages = self.plan()
        self.step_module = MetaStepModule(
            self.model, self.stages[0][1], self.rates, unranked, config.id_dropout
        )
        if config.distributed.activation_checkpointing:
            enable_activation_checkpointing(self.model.backbone)
        first_lr = self.stages[0][3].outer_lr
        self.engine = build_engine(
            self.step_module, first_lr, config.distributed, config.users_per_batch
        )
        self.rank, self.world_size = self.engine.rank, self.engine.world_size
        self.is_main = self.rank == 0
        self.writer = (
            SummaryWriter(str(config.output_dir / "tensorboard")) if self.is_main else None
        )
        if self.is_main:
            self.record_run()
        self.history: list[dict] = []
        self.step = 0
        self.best = -1.0
        self.position = {"stage": 0, "epoch": 0, "batch": 0, "stage_started": False}
        self.epoch_rng_state: dict | None = None  # set while an epoch is under way
        self.epoch_losses: list[float] = []

    def hold_out_items(self) -> torch.Tensor | None:
        """coldstart-items: zero the held-out items' id embeddings and return their (N,) bool
        mask, which keeps them out of every training softmax, so they stay zero (None for
        the other protocols). Zeroed here because the SVD start leaves rounding residue
        (~1e-16) at items without interactions."""
        held_out = self.split.held_out_items
        if held_out is None:
            return None
        rows = torch.from_numpy(held_out).to(self.device)
        with torch.no_grad():
            self.model.id_embedding.weight[rows] = 0.0
        unranked = torch.zeros(self.n_items, dtype=torch.bool, device=self.device)
        unranked[rows] = True
        return unranked

    def record_run(self) -> None:
        """``<output_dir>/run.json``: the resolved config, seeds, commit and package versions."""
        config = self.config
        record = {
            "config": json.loads(json.dumps(asdict(config), default=str)),
            "seeds": {
                "seed": config.seed,
                "split_seed": config.split_seed,
                "backbone_seed": config.model.backbone.seed,
            },
            "world_size": self.world_size,
            **provenance(),
        }
        with atomic_file(config.output_dir / "run.json") as temporary:
            temporary.write_text(json.dumps(record, indent=2))

    def plan(self) -> list[tuple[str, MetaConfig, int, TrainConfig]]:
        """The stages to run: (name, meta config, epochs, config its checkpoint records)."""
        config = self.config
        stages = []
        if config.pretrain_epochs > 0:
            pretrained = replace(
                config,
                meta=replace(config.meta, inner_steps=0),
                epochs=config.pretrain_epochs,
                outer_lr=config.pretrain_lr or config.outer_lr,
                lr_schedule=config.pretrain_lr_schedule or config.lr_schedule,
                pretrain_epochs=0,
                pretrain_lr=None,
                pretrain_lr_schedule=None,
                output_dir=config.output_dir / "pretrained",
            )
            stages.append(("pretrain", pretrained.meta, config.pretrain_epochs, pretrained))
        stages.append(("meta", config.meta, config.epochs, config))
        return stages

    def load_initial_weights(self, run: Path) -> None:
        """Start from another run's weights: same model, same data and split, or an error."""
        initial = TrainedRun(run)
        trained_on = json.loads(json.dumps(asdict(initial.config), default=str))
        ours = json.loads(json.dumps(asdict(self.config), default=str))
        for config in (trained_on, ours):
            # second-order runs switch attention, and remote code is the command line's
            # call: neither changes the weights
            for key in ("attention", "trust_remote_code"):
                config["model"]["backbone"].pop(key, None)
        for key in ("model", "data", "protocol", "split_seed", "query_size", "valid_support_size"):
            if trained_on.get(key) != ours[key]:
                raise ConfigError(
                    f"init_from {run}: its {key} is {trained_on.get(key)!r}, this run's is "
                    f"{ours[key]!r} (the weights must fit the model and the split must keep "
                    "test users unseen)"
                )
        initial.load_weights_into(self.model, self.rates)

    def validate(self, cases: list[UserCase], meta: MetaConfig) -> dict[str, float]:
        """ndcg@10 and support/query losses of validation users before and after adaptation.

        Each rank scores every ``world_size``-th user; sums and counts are added up over ranks.
        """
        self.model.eval()
        cases = cases[: self.config.valid_users]
        # under ZeRO-3 every rank scores every user: ranks must make the same calls while
        # the weights are gathered, and the sums below come out the same
        mine = cases if self.engine.gathers_weights else cases[self.rank :: self.world_size]
        sums = {"count": float(len(mine))}
        with self.engine.gathered():
            sums.update(self.validation_sums(mine, meta) if mine else {})
        names = [f"valid_{side}_loss_{label}" for side in ("support", "query")
                 for label in ("before", "after")]  # fmt: skip
        names += ["valid_ndcg@10_before", "valid_ndcg@10_after"]
        totals = all_reduce_sums(
            {name: sums.get(name, 0.0) for name in [*names, "count"]}, self.device
        )
        self.model.train()
        self.model.backbone.eval()  # frozen: its dropout (if any) stays off
        return {name: totals[name] / max(totals["count"], 1.0) for name in names}

    def validation_sums(self, mine: list[UserCase], meta: MetaConfig) -> dict[str, float]:
        """Sums over ``mine`` of the validation losses and ndcg@10."""
        batch = collate(
            [case.history[-self.config.model.max_len :] for case in mine],
            [case.relevant for case in mine],
            self.device,
        )
        sums = {
            f"valid_{name}": value * len(mine)
            for name, value in episode_losses(self.model, batch, meta, self.rates).items()
        }
        for label, steps in (("before", 0), ("after", meta.inner_steps)):
            method = LLMRecommender(self.model, meta, self.rates, steps)
            per_user = evaluate_cases(method.score, mine, (10,), name="meta-lora")
            sums[f"valid_ndcg@10_{label}"] = float(per_user["ndcg@10"].sum())
        return sums

    def train(self) -> list[dict]:
        for index, (stage, meta, epochs, saved_as) in enumerate(self.stages):
            if index < self.position["stage"]:
                continue
            self.step_module.meta = meta
            self.step_module.next_item = (
                stage == "pretrain" and self.config.pretrain_objective == "next_item"
            )
            if not self.position["stage_started"]:
                self.start_stage(index, stage, meta, saved_as)
            for epoch in range(self.position["epoch"], epochs):
                self.run_epoch(stage, meta, epoch, saved_as)
            self.position = {"stage": index + 1, "epoch": 0, "batch": 0, "stage_started": False}
        return self.history

    def run_epoch(self, stage: str, meta: MetaConfig, epoch: int, saved_as: TrainConfig) -> None:
        """One episode per training user, one meta step per batch of them, then validation."""
        config = self.config
        if self.epoch_rng_state is None:  # a fresh epoch (not one resumed halfway)
            self.epoch_rng_state = self.rng.bit_generator.state
            self.epoch_losses = []
        self.rng.bit_generator.state = self.epoch_rng_state
        if self.step_module.next_item:
            episodes = history_windows(self.split.train_sequences, config.model.max_len, self.rng)
        else:
            episodes = sample_episodes(
                self.split.train_sequences,
                config.support_sizes,
                config.train_query_size or config.query_size,
                self.rng,
                config.random_start,
            )
        # every step has users_per_batch users, so ranks always get equal shares
        n_batches = len(episodes) // config.users_per_batch
        started, steps_before = time.perf_counter(), len(self.epoch_losses)
        last = min(n_batches, config.max_steps_per_epoch or n_batches)
        batches = range(self.position["batch"], last)
        desc = f"{stage} epoch {epoch + 1}"
        for batch_index in tqdm(batches, desc=desc, unit="step", disable=not self.is_main):
            # every epoch of a stage has the same number of steps; saved_as is the stage's config
            lr = stage_lr(saved_as.lr_schedule, saved_as.outer_lr, epoch * last + batch_index,
                          saved_as.epochs * last)  # fmt: skip
            self.set_lr(lr)
            start = batch_index * config.users_per_batch
            self.epoch_losses.append(
                self.meta_step(episodes[start : start + config.users_per_batch])
            )
            self.position.update(epoch=epoch, batch=batch_index + 1)
            self.maybe_save_state()
        steps_now = len(self.epoch_losses) - steps_before
        metrics = {
            "epoch": epoch + 1,
            "objective": float(np.mean(self.epoch_losses)),
            "users_per_s": steps_now * config.users_per_batch / (time.perf_counter() - started),
            "batches_in_epoch": n_batches,
            **self.validate(self.split.valid, meta),
        }
        self.end_epoch(stage, metrics, saved_as)
        self.position.update(epoch=epoch + 1, batch=0)
        self.epoch_rng_state = None

    def start_stage(self, index: int, stage: str, meta: MetaConfig, saved_as: TrainConfig) -> None:
        """Start a stage's best-epoch race; the meta stage first validates where it starts."""
        self.best = -1.0
        if stage == "meta" and (index > 0 or self.config.init_from is not None):
            # the starting point competes with every epoch: meta-training must earn its keep
            self.end_epoch(stage, {"epoch": 0, **self.validate(self.split.valid, meta)}, saved_as)
        self.position.update(stage=index, stage_started=True)

    def set_lr(self, lr: float) -> None:
        for group in self.engine.param_groups():
            group["lr"] = lr
        if self.writer is not None:
            self.writer.add_scalar("train/lr", lr, self.step + 1)

    def meta_step(self, episodes: list[tuple[np.ndarray, np.ndarray]]) -> float:
        """One outer update from a global batch of users; returns the objective (all ranks)."""
        micro_batches = rank_micro_batches(
            episodes, self.rank, self.world_size,
            self.config.distributed.gradient_accumulation_steps, self.device,
        )  # fmt: skip
        local = self.engine.train_step(micro_batches)
        objective = all_reduce_sums({"objective": local}, self.device)["objective"]
        objective /= self.world_size
        self.step += 1
        if self.writer is not None:
            self.writer.add_scalar("train/objective", objective, self.step)
        return objective

    def end_epoch(self, stage: str, metrics: dict, saved_as: TrainConfig) -> None:
        """Log an epoch's metrics; checkpoint it if it validates best in its stage."""
        metrics = {"stage": stage, **metrics}
        self.history.append(metrics)
        if self.writer is not None:
            for name, value in metrics.items():
                if name != "stage":
                    self.writer.add_scalar(f"{stage}/{name}", value, metrics["epoch"])
            tqdm.write(json.dumps(metrics))
        if metrics["valid_ndcg@10_after"] > self.best:
            self.best = metrics["valid_ndcg@10_after"]
            self.save_checkpoint(saved_as)

    def save_checkpoint(self, saved_as: TrainConfig | None = None) -> None:
        """The current weights as ``<output_dir>/checkpoint`` of ``saved_as`` (rank 0 writes).

        Under ZeRO-3 every rank joins in gathering the sharded weights first.
        """
        saved_as = saved_as or self.config
        history = self.history
        if saved_as is not self.config:
            history = [row for row in history if row["stage"] == "pretrain"]
        with self.engine.gathered():
            if self.is_main:
                save_checkpoint(
                    saved_as.output_dir / "checkpoint",
                    self.model.lora_layers,
                    saved_as.model.lora,
                    saved_as.model.backbone.name,
                    trained_weights(self.model, self.rates),
                    asdict(saved_as),
                    history,
                    self.dataset_fingerprint,
                )
        self.barrier()

    def maybe_save_state(self) -> None:
        """Every ``state_every`` steps: a resumable state (see `metarec.distributed.state`)."""
        every = self.config.state_every
        if every <= 0 or self.step % every:
            return
        root = self.config.output_dir / "state"
        staging = state.staging_folder(root, self.step)
        if self.is_main:
            staging.mkdir(parents=True, exist_ok=True)
        self.barrier()
        self.engine.save_state(staging)
        self.barrier()
        if self.is_main:
            client = {
                "step": self.step,
                "position": self.position,
                "epoch_rng_state": self.epoch_rng_state,
                "epoch_losses": self.epoch_losses,
                "torch_rng_state": torch.get_rng_state().tolist(),
                "history": self.history,
                "best": self.best,
                "world_size": self.world_size,
            }
            if self.device.type == "cuda":  # dropout in the inner loop draws on the GPU
                client["cuda_rng_state"] = torch.cuda.get_rng_state(self.device).tolist()
            state.commit(staging, state.step_folder(root, self.step), client)
            state.prune(root, self.config.keep_states)
        self.barrier()
        if self.kill_at_step == (self.rank, self.step):
            os.kill(os.getpid(), signal.SIGKILL)

    def resume(self) -> bool:
        """Continue from the newest whole state under ``<output_dir>/state``, if any."""
        self.require_shared_output_dir()
        found = state.latest_state(self.config.output_dir / "state", self.report)
        if found is None:
            return False
        folder, client = found
        self.engine.load_state(folder)
        self.step = client["step"]
        self.position = client["position"]
        self.epoch_rng_state = client["epoch_rng_state"]
        self.epoch_losses = client["epoch_losses"]
        torch.set_rng_state(torch.tensor(client["torch_rng_state"], dtype=torch.uint8))
        if self.device.type == "cuda" and "cuda_rng_state" in client:
            cuda_state = torch.tensor(client["cuda_rng_state"], dtype=torch.uint8)
            torch.cuda.set_rng_state(cuda_state, self.device)
        self.history = client["history"]
        self.best = client["best"]
        self.report(f"resumed from {folder} (step {self.step})")
        return True

    def require_shared_output_dir(self) -> None:
        """With several ranks, resumable states need an output dir every rank sees (once)."""
        if not self.shared_output_checked:
            state.require_shared_output_dir(self.config.output_dir)
            self.shared_output_checked = True

    def report(self, message: str) -> None:
        if self.is_main:
            print(message, file=sys.stderr, flush=True)

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def cleanup(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(
    config: TrainConfig,
    resume: bool = False,
    launched_world_size: int = 1,
    kill_at_step: tuple[int, int] | None = None,
) -> list[dict]:
    recipe = MetaTrainRecipe(config, launched_world_size, kill_at_step)
    recipe.setup()
    try:
        if resume:
            recipe.resume()
        return recipe.train()
    finally:
        recipe.cleanup()


@dataclass
class TrainCommandConfig:
    """``metarec train``: the training config and how this process was launched."""

    train: TrainConfig
    resume: bool = False
    launched_world_size: int = 1  # processes the launcher started (WORLD_SIZE)
    rank: int = 0  # this process's rank (RANK): only rank 0 prints
    kill_at_step: tuple[int, int] | None = None  # tests: SIGKILL rank R after saving step S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_config_options(parser)
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest state in <output_dir>/state"
    )
    # fault injection for the resume tests: SIGKILL rank R right after it saves step S
    parser.add_argument("--kill-at-step", metavar="RANK:STEP", help=argparse.SUPPRESS)
    # the deepspeed launcher passes --local_rank; ranks come from the environment instead
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace, env: Environment) -> TrainCommandConfig:
    kill_at_step = None
    if args.kill_at_step:
        rank, _, step = args.kill_at_step.partition(":")
        kill_at_step = (int(rank), int(step))
    return TrainCommandConfig(
        train=train_config(args, env, output_dir=args.output_dir),
        resume=args.resume,
        launched_world_size=env.world_size,
        rank=env.rank,
        kill_at_step=kill_at_step,
    )


def run(config: TrainCommandConfig) -> None:
    check_writable(config.train.output_dir / "config.json")
    history = train(config.train, config.resume, config.launched_world_size, config.kill_at_step)
    leave_process_group()
    if config.rank == 0:
        print(json.dumps(history[-1], indent=2))
