"""The one loop over pairs: predict with a `Matcher`, score PCK, gather across ranks (SCOT protocol).

    model, arch, record = load_resnet("resnet50", "imagenet")
    matcher = Matcher(HyperpixelBackbone(model, arch), MatchSettings(), device)
    result = evaluate(matcher, dataset, ids=(2, 12, 13, 15), alphas=(0.05, 0.1, 0.15))
    result.summary["pck"]["0.1"]

`test.py` and the layer search (`indices=`, one id set per call, block cache on) both call `evaluate`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from configs.runtime import DistInfo, UserError, gather_objects
from models.backbone import validate_ids
from validation_and_test.matcher import Matcher, MatchSettings, PairPrediction
from validation_and_test.pck import PCKAccumulator, correct_keypoints, pck_length, pck_threshold
from validation_and_test.preprocess import scale_keypoints

__all__ = ["EvalResult", "Matcher", "MatchSettings", "PairPrediction", "evaluate", "pair_correct",
           "pair_row", "resolve_thres", "shard_indices"]


@dataclass
class EvalResult:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    n_pairs: int
    n_uncovered: int
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, float] = field(default_factory=dict)  # per-image feature cache: hits, misses, rate


def _first(batch: list[Any]) -> Any:
    return batch[0]


class _Items(torch.utils.data.Dataset):
    """`dataset[indices[k]]`, with a `UserError` carried back from loader workers as a one-line message."""

    def __init__(self, dataset: Any, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Any:
        try:
            return self.dataset[self.indices[k]]
        except UserError as err:
            return {_ERROR_KEY: str(err)}


_ERROR_KEY = "__user_error__"


_TENSOR_KEYS = ("src_img", "trg_img", "src_kps", "trg_kps", "src_bbox", "trg_bbox")


def pair_row(sample: dict[str, Any], prediction: PairPrediction) -> dict[str, Any]:
    """The non-tensor fields of a sample plus the uncovered-keypoint count (a per-pair results row)."""
    meta = {k: v for k, v in sample.items() if k not in _TENSOR_KEYS}
    meta["n_uncovered"] = prediction.n_uncovered
    return meta


def pair_correct(sample: dict[str, Any], prediction: PairPrediction, alphas: Sequence[float],
                 thres: str) -> torch.Tensor:
    """bool (A, K): predicted keypoint within alpha * L * s_t of the true one (resized target frame),
    L from the original target (`img`: max(H, W); `bbox`: max side of the target box)."""
    trg_kps = scale_keypoints(sample["trg_kps"].to(prediction.pred.device), prediction.trg_scale)
    height, width = sample["trg_img"].shape[-2:]
    length = pck_length(thres, (height, width), sample["trg_bbox"])
    thresholds = pck_threshold(length, prediction.trg_scale, [float(a) for a in alphas])
    return correct_keypoints(prediction.pred, trg_kps, thresholds.to(prediction.pred.device)).cpu()


def resolve_thres(dataset: Any, thres: str) -> str:
    """"auto" -> the dataset's default threshold type ("img" PF-PASCAL, "bbox" otherwise); an unsupported
    one is a `UserError` (`PairDataset.check_thres`)."""
    return dataset.check_thres(thres)


def shard_indices(n: int, max_pairs: int | None, info: DistInfo | None) -> list[int]:
    """The first `max_pairs` pair indices (split order); under torchrun a contiguous block per rank, so that
    the pairs sharing an image (consecutive in the split files) stay on one rank and hit its cache."""
    total = n if max_pairs is None else min(n, max_pairs)
    if info is None or not info.distributed:
        return list(range(total))
    start = total * info.rank // info.world_size
    stop = total * (info.rank + 1) // info.world_size
    return list(range(start, stop))


def evaluate(matcher: Matcher, dataset: Any, ids: Sequence[int], alphas: Sequence[float] = (0.05, 0.1, 0.15),
             thres: str = "auto", max_pairs: int | None = None, info: DistInfo | None = None,
             num_workers: int = 0, progress: bool = False, on_pair: Any = None,
             indices: Sequence[int] | None = None) -> EvalResult:
    """Evaluate `dataset` (first `max_pairs` pairs, or exactly `indices`) and gather the per-pair results
    across ranks.

    `on_pair(sample, prediction, correct)` is called for every pair (e.g. visualisation). Every rank returns
    the same merged `EvalResult` (rows sorted by pair index).
    """
    ids = validate_ids(ids, matcher.backbone.n_ids)
    thres = resolve_thres(dataset, thres)
    indices = shard_indices(len(dataset), max_pairs, info) if indices is None else list(indices)
    hits, misses = matcher.cache.hits, matcher.cache.misses
    acc = PCKAccumulator(list(alphas), dataset.name)
    loader = DataLoader(_Items(dataset, indices), batch_size=1, shuffle=False, collate_fn=_first,
                        num_workers=num_workers, persistent_workers=False,
                        # pinned only when workers decode ahead: the copy to the GPU then overlaps compute
                        pin_memory=matcher.device.type == "cuda" and num_workers > 0)
    n_uncovered = 0
    start = time.perf_counter()
    iterator: Iterable[Any] = loader
    if progress and (info is None or info.is_main):
        from tqdm import tqdm

        iterator = tqdm(loader, total=len(indices), desc=f"{dataset.name} {dataset.split}", unit="pair",
                        dynamic_ncols=True)
    for sample in iterator:
        if _ERROR_KEY in sample:
            raise UserError(sample[_ERROR_KEY])
        prediction = matcher.predict_pair(sample, ids)
        correct = pair_correct(sample, prediction, alphas, thres)
        n_uncovered += prediction.n_uncovered
        acc.add(pair_row(sample, prediction), correct)
        if on_pair is not None:
            on_pair(sample, prediction, correct)
    elapsed = time.perf_counter() - start
    parts = gather_objects((acc, n_uncovered, len(indices)), info) if info is not None else [
        (acc, n_uncovered, len(indices))]
    merged = parts[0][0]
    if len(parts) > 1:
        merged.merge([p[0] for p in parts[1:]])
    n_pairs = sum(p[2] for p in parts)
    timings = {k: round(v, 4) for k, v in matcher.timings.items()}
    timings["total_s"] = round(elapsed, 3)
    timings["ms_per_pair"] = round(1000 * elapsed / max(len(indices), 1), 2)
    hits, misses = matcher.cache.hits - hits, matcher.cache.misses - misses
    cache = {"hits": hits, "misses": misses, "hit_rate": round(hits / max(hits + misses, 1), 4)}
    return EvalResult(summary=merged.summary(), rows=merged.rows(), n_pairs=n_pairs,
                      n_uncovered=sum(p[1] for p in parts), timings=timings, cache=cache)
