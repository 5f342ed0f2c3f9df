"""Where tensors live: the one device a process computes on, and the way back to the host.

Each process uses one device, decided once at the entry point (`resolve_device`, from
``--device`` and the launcher's ``LOCAL_RANK``) and passed down in the job's config as a
string: ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU. Code below the entry point
never guesses: it asks the model where it is (`model_device`) and builds its index tensors
there. Every copy of a tensor back to the host goes through `to_numpy`, so there is one
place that synchronises with the device (and one place tests replace when the model sits
on PyTorch's ``meta`` device, which holds no values).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metarec.errors import MetarecError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def model_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without any)."""
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host copy of ``tensor``, detached; half precision (bf16, fp16) widened to float32,
    float32 and float64 kept as they are."""
    tensor = tensor.detach()
    if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < 32:
        tensor = tensor.to(torch.float32)
    return tensor.cpu().numpy()


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """The device of ``--device`` ``choice`` for the process of ``local_rank`` on its machine.

    ``auto``: ``cuda:local_rank`` when CUDA is available, else the CPU; ``cuda``: the same
    GPU, or an error when there is none; ``cpu``: the CPU.
    """
    if choice not in DEVICE_CHOICES:
        raise MetarecError(f"--device {choice!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if choice == "cuda":
        raise MetarecError("--device cuda: PyTorch sees no CUDA device here (use auto or cpu)")
    return torch.device("cpu")
