"""The training engine: one meta step on this rank's users, under plain PyTorch or DeepSpeed.

The recipe hands the engine the users of a global meta step; the engine keeps this rank's
share, splits it into micro batches, runs forward/backward and the optimiser step, and
returns the objective averaged over all ranks. Two implementations behind one interface:

- `LocalEngine`: torch Adam; with several processes (``torchrun``) it averages gradients
  with an all-reduce before the step, so N ranks compute exactly what one would.
- `DeepSpeedEngine`: ``deepspeed.initialize`` with a resolved ``ds_configs/*.json``
  (ZeRO-2 partitions optimizer state and gradients; ZeRO-3 also the backbone and the
  LoRA initialisation). The meta objective runs inside the engine's forward (the
  `MetaStep` module the recipe hands over, `metarec.meta.meta_step.MetaStepModule`), where
  ZeRO-3 gathers each layer's weights as the inner loop reaches it; the few tensors the
  inner loop reads directly (the LoRA initialisation, id embeddings, Meta-SGD rates) are
  registered as the module's external parameters.

Resumable state (`save_state` / `load_state`) is model + optimiser for exact resumption;
the recipe adds the data position and RNG states. The plain engine's state is written once,
by rank 0 (every rank holds the same weights and Adam state); DeepSpeed's is written by every
rank, each its own shards.

`refuse_unsupported` turns away, before any work, what an engine cannot run (second-order
meta-gradients under ZeRO-3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from metarec.data.episodes import EpisodeBatch, collate
from metarec.device import to_numpy
from metarec.distributed.ds_config import load_ds_config, micro_batch_size, resolve_ds_config
from metarec.errors import ConfigError

Episode = tuple[np.ndarray, np.ndarray]  # (support items, query items)


@dataclass
class DistributedConfig:
    """How a run is spread over processes; the process count comes from the launcher."""

    deepspeed_config: Path | None = None  # e.g. ds_configs/zero3.json; None: plain PyTorch
    precision: str = "fp32"  # fp32 | bf16 | fp16 (DeepSpeed only)
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 0.0  # 0: off
    activation_checkpointing: bool = False  # the recipe applies it to the backbone
    backend: str = "auto"  # torch.distributed backend; auto: nccl on a GPU, else gloo
    # where this process computes: "cpu" or "cuda:<LOCAL_RANK>", decided by the entry point
    # (`metarec.device.resolve_device`, from --device), which overrides any YAML value
    device: str = "cpu"


class MetaStep(Protocol):
    """What the engine needs of the objective the recipe hands it.

    An `nn.Module` (DeepSpeed wraps it) whose forward is the meta objective of a micro
    batch of users; the recipe's is `metarec.meta.meta_step.MetaStepModule`.
    """

    @property
    def algorithm(self) -> str:
        """The meta-learning algorithm's name (for error messages)."""
        ...

    @property
    def second_order(self) -> bool:
        """Whether the meta-gradient differentiates the inner gradients again."""
        ...

    def __call__(
        self, support: torch.Tensor, support_lengths: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        """The module's forward: the mean meta objective of the batch, a scalar."""
        ...

    def directly_read_parameters(self) -> list[nn.Parameter]:
        """Parameters used outside their own module's forward (ZeRO-3 must gather them)."""
        ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...


def _zero3_second_order(algorithm: str) -> str:
    return (
        f"meta.algorithm={algorithm} under ZeRO-3: second-order "
        "meta-gradients differentiate the inner gradients again after ZeRO-3 has "
        "released the layer weights; use ZeRO-2 or a first-order algorithm "
        "(fomaml, reptile, proximal)"
    )


def refuse_unsupported(config: DistributedConfig, algorithm: str, second_order: bool) -> None:
    """Raise `ConfigError` if the engine ``config`` asks for cannot run ``algorithm``.

    Called by the recipe before it loads data or joins a process group, so a refused run
    fails at once with one line; today the only refusal is second order under ZeRO-3.
    """
    if config.deepspeed_config is None or not second_order:
        return
    zero = load_ds_config(config.deepspeed_config).get("zero_optimization", {})
    if isinstance(zero, dict) and zero.get("stage", 0) == 3:
        raise ConfigError(_zero3_second_order(algorithm))


def init_process_group(config: DistributedConfig, launched_world_size: int) -> None:
    """Select this process's GPU and join the launcher's process group (env:// rendezvous)
    when there is one.

    ``launched_world_size`` is what the launcher said (``WORLD_SIZE``, read by the entry
    point); DeepSpeed needs a process group even for a single process. The backend follows
    ``config.device``: NCCL for a GPU, gloo for the CPU (an explicit ``backend`` wins, but
    NCCL cannot reduce CPU tensors).
    """
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return
    if launched_world_size > 1 or config.deepspeed_config is not None:
        backend = config.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError(
                f"distributed.backend=nccl reduces GPU tensors, but this process runs on "
                f"{device} (use --device cuda, or backend gloo)"
            )
        dist.init_process_group(backend=backend)


def leave_process_group() -> None:
    """Leave the launcher's process group, if this process joined one, once every rank is
    there. A gloo group left to the interpreter's exit can abort a rank ("terminate called
    without an active exception") after the job's work is done and saved."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class LocalEngine:
    """Adam on every rank's full copy; gradients averaged across ranks before each step."""

    def __init__(self, module: MetaStep, outer_lr: float, config: DistributedConfig):
        if config.precision != "fp32":
            raise ConfigError(
                f"distributed.precision={config.precision} needs a DeepSpeed config "
                "(distributed.deepspeed_config, e.g. ds_configs/zero2.json)"
            )
        self.module = module
        self.config = config
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.params = list(self.trainable.values())
        self.optimizer = torch.optim.Adam(self.params, lr=outer_lr)
        self.gathers_weights = False

    def objective(self, batch: EpisodeBatch) -> torch.Tensor:
        return self.module(batch.support, batch.support_lengths, batch.query)

    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def train_step(self, micro_batches: list[EpisodeBatch]) -> float:
        self.optimizer.zero_grad()
        total = None
        for batch in micro_batches:
            loss = self.objective(batch) / len(micro_batches)
            loss.backward()
            # summed in float64 on the device: what adding each loss.item() gave, one sync
            part = loss.detach().double()
            total = part if total is None else total + part
        if self.world_size > 1:  # one all-reduce of all gradients, flattened
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            flat = torch.cat([grad.reshape(-1) for grad in grads])
            dist.all_reduce(flat)
            flat /= self.world_size
            sizes = [p.numel() for p in self.params]
            for param, averaged in zip(self.params, flat.split(sizes), strict=True):
                param.grad = averaged.view_as(param)
        if self.config.gradient_clipping > 0:
            nn.utils.clip_grad_norm_(self.params, self.config.gradient_clipping)
        self.optimizer.step()
        return float(to_numpy(total))  # the step's one wait for the device

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        yield

    def save_state(self, folder: Path) -> None:
        """Trainable weights (safetensors) and Adam state (tensors only) into ``folder``.

        Rank 0 alone writes them: after each step's gradient all-reduce every rank holds the
        same weights and Adam state, and every rank reads these files back on resume.
        """
        if self.rank != 0:
            return
        weights = {name: p.detach().contiguous() for name, p in self.trainable.items()}
        save_file(weights, str(folder / "trainable.safetensors"))
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load_state(self, folder: Path) -> None:
        weights = load_file(str(folder / "trainable.safetensors"))
        with torch.no_grad():
            for name, param in self.trainable.items():
                param.copy_(weights[name])
        # Adam's state moves onto its parameters' device in load_state_dict
        state = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
        self.optimizer.load_state_dict(state)


class DeepSpeedEngine:
    """``deepspeed.initialize`` around the `MetaStep` module; DeepSpeed averages and steps."""

    def __init__(
        self,
        module: MetaStep,
        outer_lr: float,
        config: DistributedConfig,
        users_per_batch: int,
    ) -> None:
        try:
            import deepspeed
        except ImportError:
            raise ConfigError(
                f"distributed.deepspeed_config={config.deepspeed_config} needs DeepSpeed: "
                'pip install "metarec[deepspeed]"'
            ) from None
        self.deepspeed = deepspeed
        world_size = dist.get_world_size()
        ds_config = resolve_ds_config(
            load_ds_config(config.deepspeed_config),
            users_per_batch=users_per_batch,
            world_size=world_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            outer_lr=outer_lr,
            gradient_clipping=config.gradient_clipping,
            precision=config.precision,
            where=str(config.deepspeed_config),
        )
        self.stage = ds_config.get("zero_optimization", {}).get("stage", 0)
        self.gathers_weights = self.stage == 3  # see `gathered`
        if self.stage == 3 and module.second_order:
            raise ConfigError(_zero3_second_order(module.algorithm))
        self.module = module
        self.rank = dist.get_rank()
        self.world_size = world_size
        params = [p for p in module.parameters() if p.requires_grad]
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=params, config=ds_config
        )
        if self.stage == 3:
            for param in module.directly_read_parameters():
                deepspeed.zero.register_external_parameter(module, param)

    def objective(self, batch: EpisodeBatch) -> torch.Tensor:
        device = self.engine.device
        return self.engine(
            batch.support.to(device), batch.support_lengths.to(device), batch.query.to(device)
        )

    def param_groups(self) -> list[dict]:
        return self.engine.optimizer.param_groups

    def train_step(self, micro_batches: list[EpisodeBatch]) -> float:
        total = None
        for batch in micro_batches:
            loss = self.objective(batch)
            self.engine.backward(loss)
            self.engine.step()  # DeepSpeed only steps at the accumulation boundary
            part = loss.detach().double() / len(micro_batches)
            total = part if total is None else total + part
        return float(to_numpy(total))  # the step's one wait for the device

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Full weights on every rank (ZeRO-3 gathers them; a no-op otherwise)."""
        if self.stage != 3:
            yield
            return
        params = list(self.module.parameters())
        with self.deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield

    def save_state(self, folder: Path) -> None:
        """Every rank writes its shards of model and optimiser into ``folder``."""
        self.engine.save_checkpoint(str(folder.parent), tag=folder.name, save_latest=False)

    def load_state(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(folder.parent), tag=folder.name, load_optimizer_states=True
        )
        if path is None:
            raise ConfigError(f"{folder}: DeepSpeed found no checkpoint to load")


def build_engine(
    module: MetaStep, outer_lr: float, config: DistributedConfig, users_per_batch: int
) -> LocalEngine | DeepSpeedEngine:
    """The engine ``config`` asks for (after `init_process_group`).

    The recipe applies ``config.activation_checkpointing`` to its backbone before this.
    """
    if config.gradient_accumulation_steps < 1:
        raise ConfigError("distributed.gradient_accumulation_steps must be at least 1")
    if config.deepspeed_config is not None:
        return DeepSpeedEngine(module, outer_lr, config, users_per_batch)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    micro_batch_size(users_per_batch, world_size, config.gradient_accumulation_steps)
    return LocalEngine(module, outer_lr, config)


def rank_micro_batches(
    episodes: list[Episode],
    rank: int,
    world_size: int,
    accumulation: int,
    device: torch.device | str | None = None,
) -> list[EpisodeBatch]:
    """This rank's micro batches of one global meta step's episodes, on ``device``.

    The step's users are cut into ``world_size * accumulation`` equal consecutive chunks;
    micro batch m of rank r is chunk ``m * world_size + r``.
    """
    chunks = world_size * accumulation
    size = len(episodes) // chunks
    starts = [(m * world_size + rank) * size for m in range(accumulation)]
    mine = [episodes[start : start + size] for start in starts]
    return [collate([s for s, _ in part], [q for _, q in part], device) for part in mine]


def all_reduce_sums(
    values: dict[str, float], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Each value summed over all ranks (unchanged in a single process); the sum runs on
    ``device``, the process group's (NCCL reduces GPU tensors only)."""
    if not dist.is_initialized():
        return dict(values)
    names = sorted(values)
    tensor = torch.tensor(
        [float(values[name]) for name in names], dtype=torch.float64, device=device
    )
    dist.all_reduce(tensor)
    return {name: float(total) for name, total in zip(names, to_numpy(tensor), strict=True)}
