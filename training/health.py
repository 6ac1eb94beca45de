"""Training health: set-ups that keep a branch from learning, and a MoCo loss stuck at chance.

    for msg in setup_warnings(cfg, world_size, num_images): log.warning(msg)
    watch = ChanceWatch(cfg.moco.queue_size); msg = watch.update(loss_moco)   # at every log step

Each warning is one line that names the config key to change.
"""

from __future__ import annotations

import math

from training.config import TrainConfig


def moco_chance_loss(queue_size: int) -> float:
    """InfoNCE of a uniform guess among the positive and K negatives: ln(K + 1)."""
    return math.log(queue_size + 1)


def setup_warnings(cfg: TrainConfig, world_size: int, num_images: int) -> list[str]:
    """One-line warnings about a run whose set-up keeps MoCo from learning (empty when MoCo is off)."""
    if cfg.moco.loss_weight == 0:
        return []
    msgs = []
    if world_size == 1 and cfg.moco.bn_splits == 1 and cfg.moco.shuffle != "none":
        msgs.append("MoCo in one process with moco.bn_splits=1: queries and keys share BatchNorm statistics "
                    "(no Shuffle-BN), which lets MoCo cheat; set moco.bn_splits >= 2 (8 mimics 8 GPUs)")
    if num_images and cfg.moco.queue_size >= num_images:
        msgs.append(f"moco.queue_size={cfg.moco.queue_size} is not smaller than the {num_images} training "
                    f"images: each image's own keys are among its negatives; use a queue below "
                    f"{max(num_images - cfg.batch_size * world_size, 1)} (images - global batch)")
    return msgs


class ChanceWatch:
    """Warns once when the logged MoCo loss stays within `tolerance` of ln(K+1) for `patience` logs."""

    def __init__(self, queue_size: int, patience: int = 3, tolerance: float = 0.02) -> None:
        self.chance = moco_chance_loss(queue_size)
        self.patience, self.tolerance = patience, tolerance
        self.streak, self.warned = 0, False

    def update(self, loss_moco: float | None) -> str | None:
        """Feed one logged loss; returns the warning the first time the streak reaches `patience`."""
        if loss_moco is None:
            return None
        self.streak = self.streak + 1 if loss_moco >= (1.0 - self.tolerance) * self.chance else 0
        if self.streak >= self.patience and not self.warned:
            self.warned = True
            return (f"MoCo loss {loss_moco:.3f} has stayed at chance ln(K+1) = {self.chance:.3f} for "
                    f"{self.streak} logs: the image branch is not learning (check moco.queue_size, "
                    f"moco.momentum, moco.bn_splits and the learning rate)")
        return None
