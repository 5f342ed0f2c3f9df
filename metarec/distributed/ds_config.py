"""DeepSpeed JSON configs with their ``"auto"`` values filled from the training config.

``ds_configs/*.json`` leave batch sizes, learning rate, clipping and precision as
``"auto"``; `resolve_ds_config` writes in the training config's values. A value the JSON
sets explicitly must agree with the training config: a disagreement is an error naming
the key, not a silent override either way.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from metarec.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")


def load_ds_config(path: Path) -> dict[str, Any]:
    """The JSON mapping of a DeepSpeed config file, or a clear error."""
    try:
        config = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read DeepSpeed config ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a DeepSpeed config is a JSON object")
    return config


def micro_batch_size(users_per_batch: int, world_size: int, accumulation: int) -> int:
    """Users per rank per micro batch; the global batch must split evenly."""
    per_step = world_size * accumulation
    if users_per_batch % per_step:
        raise ConfigError(
            f"users_per_batch={users_per_batch} does not split evenly over {world_size} "
            f"rank(s) x {accumulation} accumulation step(s)"
        )
    return users_per_batch // per_step


def _fill(config: dict, key_path: str, wanted: Any, source: str, where: str) -> None:
    """Set ``config[key_path]`` to ``wanted`` if absent or "auto"; else require equality."""
    *parents, leaf = key_path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    current = node.get(leaf, "auto")
    if current == "auto":
        node[leaf] = wanted
    elif current != wanted:
        raise ConfigError(
            f"{where}: {key_path} is {current!r} but the training config's {source} gives "
            f'{wanted!r} (set it to "auto" or make them agree)'
        )


def resolve_ds_config(
    config: dict[str, Any],
    *,
    users_per_batch: int,
    world_size: int,
    gradient_accumulation_steps: int,
    outer_lr: float,
    gradient_clipping: float,
    precision: str,
    where: str = "DeepSpeed config",
) -> dict[str, Any]:
    """A copy of ``config`` with every training-derived value filled and checked.

    ``users_per_batch`` is the global number of users per meta step: each of the
    ``world_size`` ranks gets ``users_per_batch / (world_size * accumulation)`` per micro
    batch.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"distributed.precision {precision!r}: expected one of {PRECISIONS}")
    micro_batch = micro_batch_size(users_per_batch, world_size, gradient_accumulation_steps)
    resolved = copy.deepcopy(config)
    _fill(resolved, "train_batch_size", users_per_batch, "users_per_batch", where)
    _fill(resolved, "train_micro_batch_size_per_gpu", micro_batch,
          "users_per_batch / (ranks x accumulation)", where)  # fmt: skip
    _fill(resolved, "gradient_accumulation_steps", gradient_accumulation_steps,
          "distributed.gradient_accumulation_steps", where)  # fmt: skip
    _fill(resolved, "gradient_clipping", gradient_clipping, "distributed.gradient_clipping", where)
    _fill(resolved, "bf16.enabled", precision == "bf16", "distributed.precision", where)
    _fill(resolved, "fp16.enabled", precision == "fp16", "distributed.precision", where)
    if "optimizer" in resolved:
        _fill(resolved, "optimizer.params.lr", outer_lr, "outer_lr", where)
    if "scheduler" in resolved:
        raise ConfigError(f"{where}: scheduler is not supported (the recipe keeps a constant lr)")
    stage = resolved.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: zero_optimization.stage {stage!r}: expected 0, 1, 2 or 3")
    return resolved
