"""PCK: thresholds, per-keypoint correctness and the per-pair accumulator (docs/protocol.md, PCK).

Faithful conventions (HPF/SCOT): direction source -> target, threshold from the *target*;
t = alpha * (float32(L) * s_t) in float32 with L in original target pixels (`img`: max(H, W);
`bbox`: max side of the target box -- PF-WILLOW's box is the extent of its target keypoints) and s_t the
target's resize ratio; distance sqrt(sum of squares) in float32; correct iff d <= t (inclusive);
NaN predictions (no neighbouring box) count as wrong; pair PCK = (#correct / M) * 100; headline =
mean of the per-pair values (not per class, not per keypoint). Per-keypoint and per-class numbers are
reported separately and labelled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Optional, Union

import torch

from data.spair import DIFFICULTY_KEYS

Tensor = torch.Tensor

__all__ = ["alpha_key", "pck_length", "pck_threshold", "correct_keypoints",
           "PCKAccumulator"]



def alpha_key(alpha: float) -> str:
    """'%g' key of an alpha: 0.05 -> '0.05', 0.1 -> '0.1'."""
    return f"{float(alpha):g}"


def pck_length(thres: Literal["img", "bbox"], trg_hw: Sequence[int],
               trg_bbox: Optional[Tensor] = None) -> float:
    """Reference length L in *original* target pixels.

    "img": max(H, W) of the target image (trg_hw = (H, W)); "bbox": max(x2 - x1, y2 - y1) of the target box
    (4,) computed in float32 (PF-PASCAL .mat bbox, SPair trg_bndbox, PF-WILLOW keypoint extent).
    """
    if thres == "img":
        return float(max(int(trg_hw[0]), int(trg_hw[1])))
    if thres == "bbox":
        if trg_bbox is None:
            raise ValueError("thres 'bbox' needs the target box")
        box = torch.as_tensor(trg_bbox, dtype=torch.float32).reshape(-1)
        return float(torch.maximum(box[2] - box[0], box[3] - box[1]))
    raise ValueError(f"unknown PCK threshold type {thres!r} (expected 'img' or 'bbox')")


def pck_threshold(length: float, scale: Union[float, Tensor], alpha: Union[float, Sequence[float], Tensor]
                  ) -> Tensor:
    """Distance thresholds t = alpha * (float32(L) * float32(s_t)) in resized target pixels, float32.

    `scale` is the target's resize ratio as used for the image (float32 (1 / max(H, W)) * 300 in the
    faithful mode). Returns shape () for a scalar alpha, (A,) for a sequence.
    """
    length32 = torch.tensor(length, dtype=torch.float32)
    scale32 = torch.as_tensor(scale).to(device="cpu", dtype=torch.float32)
    scaled = length32 * scale32
    if isinstance(alpha, (int, float)):
        return scaled * float(alpha)
    return torch.stack([scaled * float(a) for a in alpha])


def correct_keypoints(pred: Tensor, gt: Tensor, thresholds: Tensor) -> Tensor:
    """pred, gt (K, 2) in resized target pixels, thresholds (A,) -> bool (A, K): d <= t; NaN is wrong."""
    dist = (pred.to(torch.float32) - gt.to(torch.float32)).pow(2).sum(dim=-1).pow(0.5)
    thr = torch.as_tensor(thresholds, dtype=torch.float32, device=dist.device).reshape(-1)
    return dist.unsqueeze(0) <= thr.unsqueeze(1)


def _mean_percent(values: Iterable[float]) -> Optional[float]:
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else None


class PCKAccumulator:
    """Collects per-pair correctness; summarises as in HPF/SCOT (per-pair mean) plus labelled extras.

    `add(meta, correct)`: meta needs `index`, `src_name`, `trg_name`, `class_name` (SPair: the four
    difficulty flags; optional `n_uncovered`); correct is bool (A, K) for this accumulator's alphas.
    Results do not depend on the order of `add` calls or on sharding (`merge`).
    """

    def __init__(self, alphas: Sequence[float], dataset: str):
        self.alphas = [float(a) for a in alphas]
        self.keys = [alpha_key(a) for a in self.alphas]
        self.dataset = dataset
        self.records: dict[int, dict[str, Any]] = {}

    # --------------------------------------------------------------------------------- collect
    def add(self, meta: dict, correct: Tensor) -> None:
        correct = torch.as_tensor(correct, dtype=torch.bool)
        if correct.dim() != 2 or correct.shape[0] != len(self.alphas) or correct.shape[1] < 1:
            raise ValueError(f"correct must be bool (A={len(self.alphas)}, K>=1), got {tuple(correct.shape)}")
        index = int(meta["index"])
        rec: dict[str, Any] = {
            "index": index,
            "src": str(meta["src_name"]),
            "trg": str(meta["trg_name"]),
            "class": str(meta["class_name"]),
            "n_kps": int(correct.shape[1]),
            "n_correct": [int(c) for c in correct.sum(dim=1).tolist()],
            "n_uncovered": int(meta.get("n_uncovered", 0)),
        }
        if self.dataset == "spair":
            for factor in DIFFICULTY_KEYS:
                if factor in meta:
                    rec[factor] = int(meta[factor])
        self._put(rec)

    def _put(self, rec: dict[str, Any]) -> None:
        old = self.records.get(rec["index"])
        if old is not None and old != rec:
            raise ValueError(f"pair {rec['index']} added twice with different results")
        self.records[rec["index"]] = rec

    def merge(self, others: Iterable[PCKAccumulator]) -> PCKAccumulator:
        """Add the pairs of other accumulators (e.g. gathered from torchrun ranks); duplicates of the same
        pair (a distributed sampler's padding) are dropped. Returns self."""
        for other in others:
            if other is self:
                continue
            if other.keys != self.keys:
                raise ValueError(f"cannot merge accumulators with alphas {other.keys} and {self.keys}")
            for rec in other.records.values():
                self._put(rec)
        return self

    def __len__(self) -> int:
        return len(self.records)

    # --------------------------------------------------------------------------------- report
    def _pair_pck(self, rec: dict[str, Any]) -> list[float]:
        return [(c / rec["n_kps"]) * 100 for c in rec["n_correct"]]

    def _per_pair_mean(self, recs: Sequence[dict[str, Any]]) -> dict[str, Optional[float]]:
        per_pair = [self._pair_pck(r) for r in recs]
        return {k: _mean_percent(p[a] for p in per_pair) for a, k in enumerate(self.keys)}

    def rows(self) -> list[dict[str, Any]]:
        """per_pair.csv rows sorted by index: index, src, trg, class, n_kps, pck_<alpha> (percent)."""
        out = []
        for index in sorted(self.records):
            rec = self.records[index]
            row = {"index": index, "src": rec["src"], "trg": rec["trg"], "class": rec["class"],
                   "n_kps": rec["n_kps"]}
            row.update({f"pck_{k}": v for k, v in zip(self.keys, self._pair_pck(rec))})
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        """`pck` (headline: mean of per-pair PCK, percent), `pck_per_keypoint` (all keypoints pooled),
        `per_class` ({class: {alpha: per-pair mean}}), `n_pairs`, `n_keypoints`, `n_uncovered`, and for SPair
        `per_difficulty` ({factor: {level: {alpha: per-pair mean}}})."""
        recs = [self.records[i] for i in sorted(self.records)]
        n_kps = sum(r["n_kps"] for r in recs)
        out: dict[str, Any] = {
            "n_pairs": len(recs),
            "n_keypoints": n_kps,
            "n_uncovered": sum(r["n_uncovered"] for r in recs),
            "averaging": "per pair (mean of per-pair #correct/M), d <= t",
            "pck": self._per_pair_mean(recs),
            "pck_per_keypoint": {
                k: (sum(r["n_correct"][a] for r in recs) / n_kps * 100 if n_kps else None)
                for a, k in enumerate(self.keys)
            },
        }
        classes: dict[str, list[dict[str, Any]]] = {}
        for r in recs:
            classes.setdefault(r["class"], []).append(r)
        out["per_class"] = {c: self._per_pair_mean(rs) for c, rs in sorted(classes.items())}
        if self.dataset == "spair":
            breakdown: dict[str, dict[str, dict[str, Optional[float]]]] = {}
            for factor in DIFFICULTY_KEYS:
                levels: dict[int, list[dict[str, Any]]] = {}
                for r in recs:
                    if factor in r:
                        levels.setdefault(r[factor], []).append(r)
                breakdown[factor] = {str(lv): self._per_pair_mean(rs) for lv, rs in sorted(levels.items())}
            out["per_difficulty"] = breakdown
        return out
