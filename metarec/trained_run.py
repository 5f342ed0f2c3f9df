"""A trained run, loaded once: the one owner of "a run" for every job.

A ``metarec train`` run dir holds ``checkpoint/`` (`metarec.checkpoint`) and, when it was
trained with ``pretrain_epochs``, ``pretrained/`` (its ``llm-noadapt`` run, a run dir of its
own). `TrainedRun` reads the checkpoint once and answers what jobs ask of a run:

- ``config``: the resolved `TrainConfig` it was trained with;
- ``dataset``: the data a job gives it (default: the run's own), refused when its items
  table is not the one the run scores;
- ``model`` / ``recommender()``: the user model with its meta-learned initialisation,
  built on first use;
- ``split(support_size)``: its protocol split, built by `run_split`, the only function
  that builds a run's split (the training recipe calls it too);
- ``check_compatible(protocol)``: refuses a job that would score users the run trained on
  (another protocol, split seed or data), in one line naming the difference;
- ``fingerprint``: names every weight file it scores with (adapter included) and the items
  table, so an index or a rerank job built from it refuses a changed run.

`TrainConfig` lives here, below the recipes, because a run is read back as one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from metarec.checkpoint import (
    load_trained_weights,
    read_checkpoint,
    read_dataset_fingerprint,
    weight_files_sha256,
)
from metarec.config import from_mapping
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig, load_dataset
from metarec.data.splits import ProtocolConfig, Split, make_split
from metarec.distributed.engine import DistributedConfig
from metarec.errors import ConfigError, MetarecError
from metarec.meta.algorithms import MetaConfig, MetaSGDRates
from metarec.meta.lr_schedule import LR_SCHEDULES
from metarec.meta.recommender import LLMRecommender
from metarec.models.user_model import UserModel, UserModelConfig

# the protocols a run may train on, each with those it may be evaluated on: the ones whose
# test users it held out, and whose held-out items (coldstart-items) it never trained on
EVALUABLE_ON = {
    "coldstart": ("coldstart",),
    "coldstart-items": ("coldstart-items",),
    "loo": ("loo", "sampled"),
}
TRAINING_PROTOCOLS = tuple(EVALUABLE_ON)


PRETRAIN_OBJECTIVES = ("episodes", "next_item")


@dataclass
class TrainConfig:
    """Everything a meta-training run depends on (saved as ``config.json`` in the run dir)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: UserModelConfig = field(default_factory=UserModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    # The users the model may train on: "coldstart" (meta-train users; evaluate on coldstart
    # with the same split_seed), "coldstart-items" (the same users without the held-out
    # items; evaluate on coldstart-items with the same split_seed) or "loo" (every user's
    # history but its last two items; evaluate on loo or sampled).
    protocol: str = "coldstart"
    split_seed: int = 0
    support_sizes: list[int] = field(default_factory=lambda: [5, 10, 20])
    query_size: int = 10
    # Training episodes' query length (default: query_size, which validation and the
    # protocol's test users keep). Every query item is scored from the one state after the
    # support, so a longer query gives each episode more targets at no extra forward pass.
    train_query_size: int | None = None
    valid_support_size: int = 10
    valid_users: int = 512  # validation after each epoch scores at most this many users
    users_per_batch: int = 16
    # Ordinary multi-user training (no inner loop) before meta-training. Its best epoch is
    # saved as <output_dir>/pretrained (the llm-noadapt comparison).
    pretrain_epochs: int = 0
    # Meta-training continues from the last ordinary epoch's weights and Adam state (not
    # the best epoch's) at outer_lr, usually smaller: a large step would undo what
    # pretraining learned.
    pretrain_lr: float | None = None  # default: outer_lr
    pretrain_lr_schedule: str | None = None  # default: lr_schedule
    # What ordinary training learns from: "episodes" (each user's first-K support ranking
    # the next query items, one state per user, as meta-training does) or "next_item"
    # (next-item prediction at every position of consecutive windows of model.max_len items
    # covering each whole training history, as SASRec trains: about 100 times more targets).
    pretrain_objective: str = "episodes"
    # The fraction of items whose id embedding each training step hides (DropoutNet), drawn
    # afresh per step: those items are placed and scored by their text alone, so the text
    # path learns to rank items that have no id embedding yet (coldstart-items' new items).
    id_dropout: float = 0.0
    # The fraction of each epoch's episodes whose support starts at a random position of the
    # training history instead of its first item (`metarec.data.episodes.sample_episodes`)
    random_start: float = 0.0
    epochs: int = 1
    # Caps every epoch at this many steps (0: no cap), to measure throughput on a big
    # dataset without training on all of it; epochs still report their full batch count.
    max_steps_per_epoch: int = 0
    outer_lr: float = 1e-3
    # How the stage's learning rate moves over its steps: "constant", or "cosine" (from the
    # stage's rate down to zero at its end, so its last epochs settle instead of jumping
    # around; `metarec.meta.lr_schedule`). pretrain_lr_schedule is the ordinary stage's.
    lr_schedule: str = "constant"
    seed: int = 0
    output_dir: Path = Path("runs/meta")
    # A run dir (e.g. the llm-noadapt run) whose trained weights start this one, so
    # meta-learning refines ordinary multi-user training instead of starting from scratch.
    init_from: Path | None = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # Resumable state every this many meta steps (0: none) under <output_dir>/state,
    # keeping the newest keep_states; `metarec train --resume` continues from the newest.
    state_every: int = 0
    keep_states: int = 2

    def __post_init__(self) -> None:
        if self.protocol not in TRAINING_PROTOCOLS:
            raise ConfigError(f"protocol {self.protocol!r}: expected one of {TRAINING_PROTOCOLS}")
        if self.pretrain_objective not in PRETRAIN_OBJECTIVES:
            raise ConfigError(
                f"pretrain_objective {self.pretrain_objective!r}: expected one of "
                f"{PRETRAIN_OBJECTIVES}"
            )
        if not 0 <= self.id_dropout < 1:
            raise ConfigError(f"id_dropout {self.id_dropout}: expected a fraction in [0, 1)")
        if not 0 <= self.random_start <= 1:
            raise ConfigError(f"random_start {self.random_start}: expected a fraction in [0, 1]")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule {self.lr_schedule!r}: expected one of {LR_SCHEDULES}")
        if self.pretrain_lr_schedule not in (None, *LR_SCHEDULES):
            raise ConfigError(
                f"pretrain_lr_schedule {self.pretrain_lr_schedule!r}: expected one of "
                f"{LR_SCHEDULES} (or unset: lr_schedule's)"
            )
        if self.train_query_size is not None and self.train_query_size < 1:
            raise ConfigError(
                f"train_query_size {self.train_query_size}: at least 1 (or unset: query_size)"
            )
        if self.max_steps_per_epoch < 0:
            raise ConfigError(
                f"max_steps_per_epoch {self.max_steps_per_epoch}: 0 (no cap) or a step count"
            )
        if not self.support_sizes or min(self.support_sizes) < 2:
            raise ConfigError(
                f"support_sizes {self.support_sizes}: each must be at least 2 (the support "
                "loss predicts the next support item)"
            )


def run_split(config: TrainConfig, dataset: Dataset, support_size: int) -> Split:
    """The split of a run trained with ``config``: its protocol, split seed and query size,
    validation and test users each given their first ``support_size`` items (coldstart,
    coldstart-items)."""
    protocol = ProtocolConfig(
        name=config.protocol,
        support_size=support_size,
        query_size=config.query_size,
        split_seed=config.split_seed,
    )
    return make_split(dataset.sequences(), dataset.n_items, protocol, dataset.user_ids)


def _data_differences(trained: DataConfig, given: DataConfig) -> list[str]:
    """Which preprocessing options of ``given`` differ from those a run trained on."""
    fields = ("dataset", "min_rating", "k_core", "interactions")
    return [
        f"{name} {getattr(trained, name)!s} (given {getattr(given, name)!s})"
        for name in fields
        if getattr(trained, name) != getattr(given, name)
    ]


def _refusal_reason(trained: str, protocol: str) -> str:
    """Why a run trained on the ``trained`` split may not be scored on ``protocol``."""
    if trained == "coldstart" and protocol == "coldstart-items":
        return "whose held-out items it trained on"
    if trained == "coldstart-items" and protocol == "coldstart":
        return "whose baselines train on the items it held out"
    return "whose test users it trained on"


class TrainedRun:
    """A ``metarec train`` run dir, read once; its dataset and model are built on first use."""

    def __init__(
        self,
        folder: Path,
        data: DataConfig | None = None,
        trust_remote_code: bool = False,
        device: str = "cpu",
    ) -> None:
        """``data``: where the job's data is (default: as the run was trained).
        ``trust_remote_code``: whether the backbone may run code from its model folder, as
        the job's command line says, whatever the training run was allowed.
        ``device``: where the model computes, as the job decided (`metarec.device`),
        wherever the run was trained."""
        self.folder = folder
        self.checkpoint = folder / "checkpoint"
        raw, self.weights = read_checkpoint(self.checkpoint)
        self.config = from_mapping(TrainConfig, raw, where=f"{self.checkpoint}/config.json")
        self.config.model.backbone.trust_remote_code = trust_remote_code
        self.config.distributed.device = str(device)
        self.trained_data = read_dataset_fingerprint(self.checkpoint)
        self.data = data or self.config.data

    @cached_property
    def dataset(self) -> Dataset:
        """The job's dataset, refused unless its items table is the one the run scores."""
        dataset = load_dataset(self.data)
        catalogue = self.weights["model.id_embedding.weight"].shape[0]
        if catalogue != dataset.n_items:
            raise MetarecError(
                f"{self.folder}: scores {catalogue} items, the data has {dataset.n_items}"
            )
        given = dataset.fingerprint()
        if self.trained_data and self.trained_data["items"] != given["items"]:
            raise MetarecError(
                f"{self.folder}: trained on another items table (fingerprint "
                f"{self.trained_data['items']}, the data's is {given['items']})"
            )
        return dataset

    @cached_property
    def _model_and_rates(self) -> tuple[UserModel, MetaSGDRates | None]:
        config = self.config
        model = UserModel.build(
            config.model, self.dataset.item_text, self.data.cache_dir.expanduser()
        ).to(config.distributed.device)
        rates = None  # built after the move: the rates live beside the LoRA weights
        if config.meta.properties.learned_rates:
            rates = MetaSGDRates(model.fast_layers, config.meta.inner_lr)
        load_trained_weights(model, rates, self.checkpoint, self.weights)
        return model.eval(), rates

    @property
    def model(self) -> UserModel:
        """The user model with the run's meta-learned LoRA initialisation and item side."""
        return self._model_and_rates[0]

    @property
    def rates(self) -> MetaSGDRates | None:
        """Meta-SGD's learned inner learning rates, for runs that learned them."""
        return self._model_and_rates[1]

    def recommender(
        self, inner_steps: int | None = None, meta: MetaConfig | None = None
    ) -> LLMRecommender:
        """The run as a method: adapt with ``meta`` (default: as trained), then score.

        Recommenders of one run share its model: adaptation never changes it.
        """
        return LLMRecommender(self.model, meta or self.config.meta, self.rates, inner_steps)

    def load_weights_into(self, model: UserModel, rates: MetaSGDRates | None) -> None:
        """Copy the run's trained weights into another model of the same shape."""
        load_trained_weights(model, rates, self.checkpoint, self.weights)

    def split(self, support_size: int) -> Split:
        """The run's split of its dataset (see `run_split`)."""
        return run_split(self.config, self.dataset, support_size)

    def check_compatible(self, protocol: str, split_seed: int | None = None) -> None:
        """Refuse to score users the run may have trained on: ``protocol``'s test users (of
        ``split_seed``, default the run's) on the job's data must be ones it held out, and
        coldstart-items' held-out items ones it never trained on."""
        trained = self.config
        allowed = EVALUABLE_ON[trained.protocol]
        if protocol not in allowed:
            raise ConfigError(
                f"{self.folder}: trained on the {trained.protocol} split, so it can be "
                f"evaluated on {' or '.join(allowed)}, not {protocol} "
                f"({_refusal_reason(trained.protocol, protocol)})"
            )
        if self.trained_data is None:  # saved before checkpoints recorded their data
            differences = _data_differences(trained.data, self.data)
        else:  # the content decides: the same data read from another path is the same data
            given = self.dataset.fingerprint()["interactions"]
            recorded = self.trained_data["interactions"]
            differences = (
                []
                if recorded == given
                else [f"interactions fingerprint {recorded} (given {given})"]
            )
        seeded = trained.protocol in ("coldstart", "coldstart-items")
        if seeded and split_seed not in (None, trained.split_seed):
            differences.append(f"split seed {trained.split_seed} (given {split_seed})")
        if differences:
            raise ConfigError(
                f"{self.folder}: trained on other data or another split: "
                f"{'; '.join(differences)}; scoring here would test its training users"
            )

    @cached_property
    def fingerprint(self) -> str:
        """Names what the run scores with: its weight files (adapter included) and items."""
        material = {
            "weights": weight_files_sha256(self.checkpoint),
            "items": self.dataset.fingerprint()["items"],
        }
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        return f"metarec:{digest[:16]}"
