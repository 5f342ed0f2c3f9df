"""Knowledge distillation: a meta-trained teacher run teaches a smaller student, then
meta-fine-tuning continues on the student alone.

    metarec distill --teacher runs/demo --config configs/quick.yaml \
        --set model.backbone.num_layers=2 --output-dir runs/student

The student is the training config (fewer layers, or another backbone with the same item
dimensions); it starts from the teacher's item side and the teacher's LoRA initialisation of
every layer both have. In the ``distill`` stage each episode's query loss becomes

    w · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − w) · cross-entropy,

the teacher's scores taken after *its* adaptation on the same support, the student's after
its own, both over the catalogue with the support excluded: the student learns what the
adapted teacher would rank. The ``meta`` stage then meta-trains the student as usual
(`train/meta_train.py`), starting from the distilled weights.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from metarec.data.episodes import EpisodeBatch
from metarec.distributed.engine import leave_process_group
from metarec.errors import ConfigError
from metarec.meta.algorithms import MetaConfig
from metarec.meta.inner_loop import LossFn
from metarec.meta.personalise import adapted_scores, last_states, query_loss_fn
from metarec.meta.recommender import LLMRecommender
from metarec.models.user_model import UserModel
from metarec.options import (
    Environment,
    add_train_config_options,
    check_writable,
    from_args,
    train_config,
)
from metarec.trained_run import TrainConfig, TrainedRun
from train.meta_train import MetaTrainRecipe


@dataclass
class DistillConfig:
    train: TrainConfig  # the student, and its meta-fine-tuning
    teacher: Path  # a metarec train run dir
    distill_epochs: int = 2
    temperature: float = 2.0
    weight: float = 0.5  # w: the distillation term's share of the query loss


def distillation_loss(teacher: LLMRecommender, temperature: float, weight: float):
    """A query-loss builder (see `MetaStepModule.query_loss`) with the teacher's targets."""

    def build(model: UserModel, batch: EpisodeBatch, excluded: torch.Tensor) -> LossFn:
        with torch.no_grad():
            teacher_scores = adapted_scores(
                teacher.model, batch, teacher.meta, teacher.rates, teacher.inner_steps
            )
        target = torch.softmax(
            teacher_scores.masked_fill(excluded, float("-inf")) / temperature, -1
        )
        cross_entropy = query_loss_fn(model, batch, excluded)

        def loss(fast) -> torch.Tensor:
            scores = model.scores(last_states(model, batch, fast))
            log_student = torch.log_softmax(
                scores.masked_fill(excluded, float("-inf")) / temperature, -1
            )
            gap = target * (torch.log(target.clamp_min(1e-30)) - log_student)
            divergence = torch.where(excluded, torch.zeros_like(gap), gap).sum(dim=-1)
            return weight * temperature**2 * divergence + (1 - weight) * cross_entropy(fast)

        return loss

    return build


class DistillRecipe(MetaTrainRecipe):
    """The meta-training recipe with a distillation stage first and a teacher beside it."""

    def __init__(self, config: DistillConfig) -> None:
        super().__init__(config.train)
        self.distill = config

    def plan(self) -> list[tuple[str, MetaConfig, int, TrainConfig]]:
        config = self.config
        distilled = replace(config, epochs=self.distill.distill_epochs,
                            output_dir=config.output_dir / "distilled")  # fmt: skip
        return [
            ("distill", config.meta, self.distill.distill_epochs, distilled),
            ("meta", config.meta, config.epochs, config),
        ]

    def setup(self) -> None:
        if self.config.pretrain_epochs or self.config.init_from is not None:
            raise ConfigError("distill: the student starts from the teacher; no pretraining stage")
        super().setup()
        teacher = TrainedRun(
            self.distill.teacher,
            self.config.data,
            self.config.model.backbone.trust_remote_code,
            self.config.distributed.device,  # beside the student
        )
        self.teacher = teacher.recommender()
        self.teacher.model.requires_grad_(False)
        copied = self.start_from_teacher(teacher.weights)
        print(f"student starts from {copied} teacher tensors")

    def start_from_teacher(self, weights: dict[str, torch.Tensor]) -> int:
        """Copy every teacher tensor the student has with the same shape (item side, LoRA
        of shared layers, the teacher checkpoint's ``weights``); returns how many."""
        teacher_lora = {
            name: tensor
            for layer_name, layer in self.teacher.model.lora_layers.items()
            for name, tensor in (
                (f"backbone.{layer_name}.lora_A.weight", layer.lora_A.weight),
                (f"backbone.{layer_name}.lora_B.weight", layer.lora_B.weight),
            )
        }
        sources = {**{k.removeprefix("model."): v for k, v in weights.items()}, **teacher_lora}
        copied = 0
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                source = sources.get(name)
                if source is not None and source.shape == parameter.shape:
                    parameter.copy_(source)
                    copied += 1
        return copied

    def run_epoch(self, stage: str, meta: MetaConfig, epoch: int, saved_as: TrainConfig) -> None:
        if stage == "distill":
            self.step_module.query_loss = distillation_loss(
                self.teacher, self.distill.temperature, self.distill.weight
            )
        else:
            self.step_module.query_loss = query_loss_fn
        super().run_epoch(stage, meta, epoch, saved_as)


def distill(config: DistillConfig) -> list[dict]:
    recipe = DistillRecipe(config)
    recipe.setup()
    try:
        return recipe.train()
    finally:
        recipe.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_config_options(parser)
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's run dir")
    parser.add_argument("--output-dir", type=Path, help="the student's run dir")
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--weight", type=float, default=0.5, help="share of the KL term")


def config_from_args(args: argparse.Namespace, env: Environment) -> DistillConfig:
    return from_args(DistillConfig, args, train=train_config(args, env, args.output_dir))


def run(config: DistillConfig) -> None:
    check_writable(config.train.output_dir / "config.json")
    history = distill(config)
    leave_process_group()
    print(json.dumps(history[-1], indent=2))
