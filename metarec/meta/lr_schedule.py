"""The outer learning rate over a training stage: constant, or a cosine decay to zero.

Each stage (ordinary training, then meta-training) runs its own schedule from its own base
rate. The rate is a function of the step's position in the stage alone, so a resumed run
sets exactly the rates the uninterrupted one did.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")


def stage_lr(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """The learning rate of the stage's ``step``-th update (0-based) of ``total_steps``.

    "cosine" is half a cosine from ``base_lr`` at step 0 towards 0 after the last step:
    ``base_lr * (1 + cos(pi * step / total_steps)) / 2``, so the last update still moves.
    """
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    raise ValueError(f"lr schedule {schedule!r}: expected one of {LR_SCHEDULES}")
