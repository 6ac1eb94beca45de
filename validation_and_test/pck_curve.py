"""PCK against alpha (0 to 0.2) for `test.py`: an `on_pair` hook that scores every pair at the curve's
alphas with the evaluation's own `pair_correct` and `PCKAccumulator`, so that the curve passes exactly
through the headline numbers at the evaluated alphas (same per-pair mean, same d <= t rule)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from configs.runtime import DistInfo, gather_objects
from validation_and_test.evaluate import pair_correct, pair_row
from validation_and_test.pck import PCKAccumulator

CURVE_ALPHAS = tuple(round(0.005 * i, 3) for i in range(41))  # 0, 0.005, ..., 0.2


class CurveCollector:
    """`on_pair(sample, prediction, correct)` hook collecting per-pair PCK at `CURVE_ALPHAS`."""

    def __init__(self, dataset: str, thres: str, alphas: tuple[float, ...] = CURVE_ALPHAS) -> None:
        self.thres = thres
        self.alphas = alphas
        self.acc = PCKAccumulator(list(alphas), dataset)

    def on_pair(self, sample: dict[str, Any], prediction: Any, correct: torch.Tensor) -> None:
        self.acc.add(pair_row(sample, prediction), pair_correct(sample, prediction, self.alphas, self.thres))

    def curve(self, info: Optional[DistInfo] = None) -> dict[str, list]:
        """{"alphas": [...], "pck": [per-pair mean PCK (%) per alpha]} over all ranks (a collective call)."""
        parts = gather_objects(self.acc, info) if info is not None else [self.acc]
        merged = PCKAccumulator(list(self.alphas), self.acc.dataset).merge(parts)
        pck = merged.summary()["pck"]
        return {"alphas": list(self.alphas), "pck": [pck[k] for k in merged.keys]}


def chain_hooks(*hooks: Optional[Callable[..., None]]) -> Callable[..., None]:
    """One `on_pair` hook calling each given hook in turn (None entries are skipped)."""
    active = [h for h in hooks if h is not None]

    def on_pair(*args: Any) -> None:
        for hook in active:
            hook(*args)

    return on_pair
