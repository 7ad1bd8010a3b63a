"""The optimizers and learning-rate schedules training can use (``train.optimizer``, ``train.schedule``).

An optimizer is built as ``build(parameters, lr=train.lr, **its keys)`` (torch's own classes, imported when
one is built); a schedule is ``rate(lr, progress, epochs)``: the learning rate ``progress`` epochs into a run
of ``epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.registry import registry
from pipeline.schema import key

OPTIMIZERS = registry("optimizer")
SCHEDULES = registry("schedule")


@dataclass
class AdamConfig:
    weight_decay: float = key(0.0, "L2 penalty added to the gradient", min=0.0, max=10.0, affects="training")


@dataclass
class AdamWConfig:
    weight_decay: float = key(0.0, "decoupled weight decay", min=0.0, max=10.0, affects="training")


OPTIMIZERS.register("adam", AdamConfig, "torch.optim:Adam", "Adam")
OPTIMIZERS.register("adamw", AdamWConfig, "torch.optim:AdamW", "Adam with decoupled weight decay")


@SCHEDULES.register("none")
def constant(lr: float, progress: float, epochs: int) -> float:
    """train.lr throughout."""
    return lr


@SCHEDULES.register("cosine")
def cosine(lr: float, progress: float, epochs: int) -> float:
    """Cosine from train.lr down to 0 over train.epochs."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress / epochs, 1.0)))
