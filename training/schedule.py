"""Per-iteration learning-rate arrays (DINO style): index by the global step, so resume is trivial."""

from __future__ import annotations

import math
from collections.abc import Sequence


def step_schedule(base_lr: float, epochs: int, iters_per_epoch: int, milestones: Sequence[int] = (5, 10, 15),
                  gamma: float = 0.1) -> list[float]:
    """The paper's schedule: constant within an epoch, multiplied by `gamma` at each milestone epoch.

    Returns `epochs * iters_per_epoch` values; entry t is the LR of global step t.
    """
    _check(epochs, iters_per_epoch)
    out = []
    for epoch in range(epochs):
        lr = base_lr * gamma ** sum(epoch >= m for m in milestones)
        out.extend([lr] * iters_per_epoch)
    return out


def cosine_schedule(base_lr: float, epochs: int, iters_per_epoch: int, final_lr: float = 0.0,
                    warmup_epochs: float = 0.0, per_epoch: bool = False) -> list[float]:
    """Cosine decay from `base_lr` to `final_lr` after a linear warm-up from 0 (MoCo v2: per_epoch=True).

    Per-iteration by default; `per_epoch=True` holds the value of the epoch start for the whole epoch.
    """
    _check(epochs, iters_per_epoch)
    total = epochs * iters_per_epoch
    warmup = int(round(warmup_epochs * iters_per_epoch))
    out = []
    for t in range(total):
        pos = (t // iters_per_epoch) * iters_per_epoch if per_epoch else t
        if pos < warmup:
            out.append(base_lr * (pos + 1) / warmup)
            continue
        frac = (pos - warmup) / max(total - warmup, 1)
        out.append(final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * frac)))
    return out


def build_lr_schedule(kind: str, base_lr: float, epochs: int, iters_per_epoch: int,
                      milestones: Sequence[int] = (5, 10, 15), gamma: float = 0.1,
                      warmup_epochs: float = 0.0, final_lr: float = 0.0) -> list[float]:
    """`kind` = "step" (the paper) or "cosine" (MoCo v2 style, per iteration)."""
    if kind == "step":
        return step_schedule(base_lr, epochs, iters_per_epoch, milestones, gamma)
    if kind == "cosine":
        return cosine_schedule(base_lr, epochs, iters_per_epoch, final_lr, warmup_epochs)
    raise ValueError(f"unknown LR schedule {kind!r} (use step or cosine)")


def _check(epochs: int, iters_per_epoch: int) -> None:
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"schedule needs epochs >= 1 and iters_per_epoch >= 1, got {epochs}, "
                         f"{iters_per_epoch}")
