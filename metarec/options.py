"""Command-line options that several commands share, and how they become configs.

Every command module has ``add_arguments(parser)``, ``config_from_args(args, env)`` and
``run(config)``. The groups of options that many of them take (where the data is, which
training config, a run dir, remote code) are declared here once. `Environment` carries what
the entry point (`metarec.cli`, the only reader of environment variables) found there.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import yaml

from metarec.config import from_mapping, load_yaml
from metarec.data.custom import ID_TYPES
from metarec.data.dataset import Dataset
from metarec.data.prepare import DataConfig
from metarec.data.preprocess import DEDUP_POLICIES
from metarec.device import DEVICE_CHOICES, resolve_device
from metarec.errors import MetarecError
from metarec.trained_run import TrainConfig

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
T = TypeVar("T")


@dataclass
class Environment:
    """What a command takes from the environment; read by `metarec.cli` only."""

    data_dir: Path | None = None  # METAREC_DATA_DIR
    cache_dir: Path | None = None  # METAREC_CACHE_DIR
    world_size: int = 1  # WORLD_SIZE, set by torchrun / deepspeed
    rank: int = 0  # RANK
    local_rank: int = 0  # LOCAL_RANK: this process's GPU on its machine
    accelerate_deepspeed_config: Path | None = None  # under `accelerate launch` with DeepSpeed

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> Environment:
        """Pick the variables metarec uses out of ``variables`` (e.g. ``os.environ``)."""

        def path(name: str) -> Path | None:
            return Path(variables[name]) if variables.get(name) else None

        under_accelerate_deepspeed = variables.get("ACCELERATE_USE_DEEPSPEED") == "true"
        return cls(
            data_dir=path("METAREC_DATA_DIR"),
            cache_dir=path("METAREC_CACHE_DIR"),
            world_size=int(variables.get("WORLD_SIZE", "1")),
            rank=int(variables.get("RANK", "0")),
            local_rank=int(variables.get("LOCAL_RANK", "0")),
            accelerate_deepspeed_config=path("ACCELERATE_DEEPSPEED_CONFIG_FILE")
            if under_accelerate_deepspeed
            else None,
        )

    @property
    def cache_dir_or_default(self) -> Path:
        return self.cache_dir or Path("~/.cache/metarec")


def from_args(config_class: type[T], args: argparse.Namespace, **given: Any) -> T:
    """A ``config_class`` whose fields come from the options of the same name (``--top-k``
    fills ``top_k``); ``given`` sets the others and overrides."""
    options = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if hasattr(args, field.name)
    }
    return config_class(**{**options, **given})


def job_config(
    config_class: type[T], args: argparse.Namespace, env: Environment, **given: Any
) -> T:
    """`from_args`, plus the fields a job's config takes from the shared options when it has
    them: ``run`` (``--checkpoint``), ``data`` (`add_data_options`; None for a job that reads
    a run and was given no dataset: the run's own data) and ``device``."""
    fields = {field.name for field in dataclasses.fields(config_class)}
    reads_run = "run" in fields or getattr(args, "checkpoint", None) is not None
    shared = {
        "run": lambda: args.checkpoint,
        "data": lambda: data_config(args, env) if names_data(args) or not reads_run else None,
        "device": lambda: device_of(args, env),
    }
    filled = {name: value() for name, value in shared.items() if name in fields}
    return from_args(config_class, args, **{**filled, **given})


def int_list(text: str) -> list[int]:
    """An argparse type: ``"5,10,20"`` -> ``[5, 10, 20]``."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def name_list(text: str) -> list[str]:
    """``"pop, itemknn"`` -> ``["pop", "itemknn"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


# what `add_data_options` gives when an option is left out
DATA_OPTION_DEFAULTS = {"user_col": "user_id", "item_col": "item_id", "k_core": 0,
                        "id_type": "auto", "dedup": "first"}  # fmt: skip
DATA_OPTIONS = ("dataset", "data_dir", "interactions", "items", "min_rating", "time_col",
                "rating_col", "item_text_cols", *DATA_OPTION_DEFAULTS)  # fmt: skip


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        help="ml-100k, ml-1m, ml-20m, ml-25m or custom (default: a job that reads a run uses "
        "the run's own data; others ml-100k, or custom when --interactions is given)",
    )
    group.add_argument(
        "--data-dir",
        type=Path,
        help="local copy of the dataset (folder or zip); default $METAREC_DATA_DIR, "
        "else download into the cache",
    )
    group.add_argument(
        "--interactions",
        type=Path,
        help="custom: interactions table: CSV, TSV, Parquet file or folder of parts, or a "
        "folder saved by datasets' save_to_disk (a DatasetDict's split: its subfolder)",
    )
    group.add_argument("--items", type=Path, help="custom: items table, in any of those forms")
    defaults = DATA_OPTION_DEFAULTS
    group.add_argument(
        "--user-col", default=defaults["user_col"], help="custom: the user id column"
    )
    group.add_argument(
        "--item-col", default=defaults["item_col"], help="custom: the item id column"
    )
    group.add_argument(
        "--time-col",
        help="custom: the time column (seconds or ISO 8601 dates); default timestamp, and "
        "file order when the table has none",
    )
    group.add_argument("--rating-col", help="custom: the rating column; default rating, if any")
    group.add_argument(
        "--item-text-cols",
        type=name_list,
        help="custom: the items' text columns, joined with ' | ' (default: text, else all)",
    )
    group.add_argument(
        "--id-type",
        choices=ID_TYPES,
        default=defaults["id_type"],
        help="custom: auto reads a column of plain integers as integer ids, others as text; "
        "str reads every id as text",
    )
    group.add_argument("--min-rating", type=float, help="keep interactions rated at least this")
    group.add_argument(
        "--dedup",
        choices=DEDUP_POLICIES,
        default=defaults["dedup"],
        help="a repeated (user, item) keeps its first interaction, its last, or all",
    )
    group.add_argument(
        "--k-core", type=int, default=defaults["k_core"], help="k-core filter (0 = off)"
    )
    group.add_argument(
        "--cache-dir", type=Path, help="default $METAREC_CACHE_DIR, else ~/.cache/metarec"
    )


def names_data(args: argparse.Namespace) -> bool:
    """Whether any data option (`add_data_options`, bar ``--cache-dir``) was given."""
    return any(getattr(args, name) != DATA_OPTION_DEFAULTS.get(name) for name in DATA_OPTIONS)


def data_config(args: argparse.Namespace, env: Environment) -> DataConfig:
    """The `DataConfig` of `add_data_options`' options, with the environment's defaults."""
    return DataConfig(
        dataset=args.dataset or ("custom" if args.interactions else "ml-100k"),
        data_dir=args.data_dir or env.data_dir,
        interactions=args.interactions,
        items=args.items,
        min_rating=args.min_rating,
        k_core=args.k_core,
        cache_dir=args.cache_dir or env.cache_dir_or_default,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        rating_col=args.rating_col,
        item_text_cols=args.item_text_cols,
        id_type=args.id_type,
        dedup=args.dedup,
    )


def add_remote_code_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a backbone's own Python code from its model folder (off unless given)",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``: where a command that runs the model computes (`metarec.device`)."""
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="auto: this process's GPU (cuda:LOCAL_RANK) when CUDA is there, else the CPU",
    )


def device_of(args: argparse.Namespace, env: Environment) -> str:
    """The device `add_device_option`'s ``--device`` names for this process, e.g. ``cuda:1``."""
    return str(resolve_device(args.device, env.local_rank))


def add_run_options(parser: argparse.ArgumentParser, what: str) -> None:
    """A command on a trained run: the data its catalogue comes from, the run, remote code,
    the device."""
    add_data_options(parser)
    parser.add_argument("--checkpoint", type=Path, required=True, help=what)
    add_remote_code_option(parser)
    add_device_option(parser)


def add_train_config_options(parser: argparse.ArgumentParser) -> None:
    """A command driven by a training config: YAML, ``--set`` overrides, split seed, device."""
    parser.add_argument("--config", type=Path, required=True, help="YAML, e.g. configs/quick.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set meta.inner_lr=0.01 (repeatable)",
    )
    parser.add_argument("--split-seed", type=int)
    add_remote_code_option(parser)
    add_device_option(parser)


def id_positions(ids: np.ndarray, given: Sequence[object]) -> np.ndarray:
    """Indices (M,) int64 into ``ids`` (N,), a dataset's raw ids (integers or strings), of
    the raw ids ``given`` (M,), typed or as text; -1 where one is not there.

    Ids are compared as text, an integer id as written plainly (``7``, not ``07`` or
    ``+7``), which is how the data layer tells integer ids from text ones: ``--user 7``
    finds user 7 of a dataset with integer ids, and user ``"7"`` of one with text ids.
    """
    known = pd.Index(np.asarray(ids).astype(str))
    return known.get_indexer(pd.Series(given, dtype=object).astype(str)).astype(np.int64)


def history_indices(dataset: Dataset, raw_items: Sequence[object]) -> np.ndarray:
    """``--history`` raw item ids as the dataset's item indices, or an error naming the unknown."""
    positions = id_positions(dataset.item_ids, raw_items)
    unknown = [
        str(item) for item, position in zip(raw_items, positions, strict=True) if position < 0
    ]
    if unknown:
        raise MetarecError(f"--history: unknown item ids {', '.join(unknown)} in {dataset.name}")
    return positions


def check_writable(path: Path | None) -> None:
    """Fail before hours of work, not after, when an output cannot be written."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise MetarecError(f"{path}: output is not writable ({err.strerror})") from None


def apply_override(config: dict, assignment: str) -> None:
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


def config_mapping(
    path: Path,
    overrides: list[str],
    split_seed: int | None,
    output_dir: Path | None,
    env: Environment,
) -> dict:
    """A YAML config as a mapping, then ``--set`` overrides, options and environment."""
    raw = load_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    if split_seed is not None:
        raw["split_seed"] = split_seed
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    data = raw["data"] = raw.get("data") or {}
    if "data_dir" not in data and env.data_dir:
        data["data_dir"] = str(env.data_dir)
    data.setdefault("cache_dir", str(env.cache_dir_or_default))
    return raw


def allow_remote_code(config: TrainConfig, trust_remote_code: bool, where: str) -> None:
    """Model-hub code runs only when the command line says so, never from a config alone."""
    backbone = config.model.backbone
    if backbone.trust_remote_code and not trust_remote_code:
        raise MetarecError(
            f"{where}: model.backbone.trust_remote_code is true, which runs code shipped "
            "with the model; pass --trust-remote-code to allow it"
        )
    backbone.trust_remote_code = trust_remote_code


def train_config(
    args: argparse.Namespace, env: Environment, output_dir: Path | None = None
) -> TrainConfig:
    """The training config of `add_train_config_options`: YAML, ``--set``, then options and
    environment (under ``accelerate launch`` with DeepSpeed, its DeepSpeed config; the
    device of ``--device``, whatever the YAML said)."""
    raw = config_mapping(args.config, args.set, args.split_seed, output_dir, env)
    distributed = raw["distributed"] = raw.get("distributed") or {}
    if env.accelerate_deepspeed_config is not None:
        distributed.setdefault("deepspeed_config", str(env.accelerate_deepspeed_config))
    config = from_mapping(TrainConfig, raw, where=f"{args.config}: config")
    allow_remote_code(config, args.trust_remote_code, str(args.config))
    config.distributed.device = device_of(args, env)
    return config
