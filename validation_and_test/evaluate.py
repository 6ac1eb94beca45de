"""Callable evaluation: hyperpixels + CAM -> OT -> RHM -> keypoint transfer -> PCK (`evaluation.md`).

    model, arch, record = load_resnet("resnet50", "imagenet")
    matcher = Matcher(HyperpixelBackbone(model, arch), MatchSettings(), device)
    result = evaluate(matcher, dataset, ids=(2, 12, 13, 15), alphas=(0.05, 0.1, 0.15))
    result.summary["pck"]["0.1"]

`Matcher.score_pairs(dataset, ids, indices)` is the cheap entry point for layer searches: with
`cache_blocks=True` every image's block maps (all ids) and CAM map are cached, so another id set only
re-assembles hyper-images. Images are processed one at a time (no padding in the backbone or CAM).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from configs.runtime import DistInfo, UserError, gather_objects, synchronize
from models.backbone import HyperpixelBackbone, hyper_image, validate_ids
from models.cam import cam_map, cam_weights, linear_head, marginal
from models.geometry import receptive_field_boxes, transfer_keypoints
from models.rhm import regularized_hough_matching
from models.sinkhorn import cosine_similarity, ot_votes
from validation_and_test.feature_cache import FeatureCache
from validation_and_test.pck import PCKAccumulator, correct_keypoints, pck_length, pck_threshold
from validation_and_test.preprocess import prepare_image, scale_keypoints

GEO_SIMS = ("OTGeo", "cosGeo")
OT_SIMS = ("OTGeo", "OT")


@dataclass(frozen=True)
class MatchSettings:
    """Matching settings of `evaluation.md` §§3-9 (defaults: the faithful SCOT protocol, PF-PASCAL exp2)."""

    sim: str = "OTGeo"
    exp1: float = 1.0
    exp2: float = 0.5
    eps: float = 0.05
    sinkhorn_iters: int = 1
    solver: str = "scot"  # "scot" (exponential domain, eps doubling) or "log" (converged, log domain)
    classmap: int = 1
    hpf: bool = False  # downscale-only resize, margin pruning, RHM on max(0, cos)^3
    long_side: int = 300

    @classmethod
    def from_config(cls, cfg: Any) -> MatchSettings:
        """The settings of an `EvalConfig` (test.py and the layer search build them only here)."""
        return cls(sim=cfg.sim, exp1=cfg.exp1, exp2=cfg.exp2, eps=cfg.eps, sinkhorn_iters=cfg.sinkhorn_iters,
                   solver=cfg.solver, classmap=cfg.classmap, hpf=cfg.hpf, long_side=cfg.long_side)

    @property
    def resize_rule(self) -> str:
        return "hpf" if self.hpf else "scot"

    @property
    def needs_cam(self) -> bool:
        return self.classmap == 1 and not self.hpf and self.sim in OT_SIMS


@dataclass
class ImageFeatures:
    """One image's hyperpixels in the resized frame: feats (N, D), boxes (N, 4), centers (N, 2) px,
    weights (N,) CAM weights or None (uniform), size (W, H) resized, scale s (original -> resized)."""

    feats: torch.Tensor
    boxes: torch.Tensor
    centers: torch.Tensor
    weights: torch.Tensor | None
    size: tuple[int, int]
    scale: float

    def nbytes(self) -> int:
        ts = [self.feats, self.boxes, self.centers] + ([self.weights] if self.weights is not None else [])
        return sum(t.numel() * t.element_size() for t in ts)


@dataclass
class _ImageBlocks:
    """Cached block maps of every id (for layer searches), the CAM map and the resize scale."""

    maps: dict[int, torch.Tensor]
    cam: torch.Tensor | None
    scale: float
    size: tuple[int, int]

    def nbytes(self) -> int:
        ts = list(self.maps.values()) + ([self.cam] if self.cam is not None else [])
        return sum(t.numel() * t.element_size() for t in ts)


@dataclass
class PairPrediction:
    """Prediction of one pair: pred (K, 2) and gt (K, 2) in resized target pixels, thresholds (A,) px."""

    pred: torch.Tensor
    gt: torch.Tensor
    thresholds: torch.Tensor
    correct: torch.Tensor  # bool (A, K)
    n_uncovered: int
    trg_scale: float  # original -> resized target pixels


@dataclass
class EvalResult:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    n_pairs: int
    n_uncovered: int
    timings: dict[str, float] = field(default_factory=dict)


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


class Matcher:
    """Hyperpixel features and SCOT matching for one backbone and one set of `MatchSettings`."""

    def __init__(self, backbone: HyperpixelBackbone, settings: MatchSettings | None = None,
                 device: torch.device | str = "cpu", cache_mb: float = 2048.0, cache_blocks: bool = False):
        self.settings = settings or MatchSettings()
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        if self.settings.needs_cam:
            linear_head(self.backbone.fc)  # fail early with the --classmap 0 hint
        self.cache = FeatureCache(cache_mb)
        self.cache_blocks = cache_blocks
        self.timings: dict[str, float] = {"features": 0.0, "cam": 0.0, "match": 0.0, "transfer": 0.0}

    # ----------------------------------------------------------------------------------- features
    @torch.no_grad()
    def _blocks(self, img: torch.Tensor, ids: Sequence[int]) -> _ImageBlocks:
        """Backbone (+ CAM) of one uint8 image (3, H, W) for `ids`."""
        synchronize(self.device)
        t0 = time.perf_counter()
        x, s = prepare_image(img, self.settings.resize_rule, self.settings.long_side, self.device)
        out = self.backbone.forward_blocks(x, ids, full=self.settings.needs_cam)
        synchronize(self.device)
        t1 = time.perf_counter()
        cam = None
        if self.settings.needs_cam:
            cam = cam_map(x, self.backbone.fc, out.final, self.backbone.forward_final)
            synchronize(self.device)
        self.timings["features"] += t1 - t0
        self.timings["cam"] += time.perf_counter() - t1
        return _ImageBlocks(maps=out.maps, cam=cam, scale=s, size=(x.shape[-1], x.shape[-2]))

    def _assemble(self, blocks: _ImageBlocks, ids: tuple[int, ...]) -> ImageFeatures:
        t0 = time.perf_counter()
        hyper = hyper_image({i: blocks.maps[i] for i in ids}, ids)[0]  # (D, h, w)
        grid_h, grid_w = hyper.shape[-2:]
        jump = self.backbone.jumps[ids[0]]
        rf = self.backbone.receptive_fields[ids[0]]
        boxes, centers = receptive_field_boxes(grid_h, grid_w, jump, rf, device=hyper.device)
        feats = hyper.flatten(1).t()  # (N, D) view, row-major p = y * w + x
        weights = cam_weights(blocks.cam, centers) if blocks.cam is not None else None
        if self.settings.hpf:  # keep boxes leaving the image by at most one jump (HPF)
            width, height = blocks.size
            keep = ((boxes[:, 0] >= -jump) & (boxes[:, 1] >= -jump) & (boxes[:, 2] < width + jump)
                    & (boxes[:, 3] < height + jump))
            feats, boxes, centers = feats[keep], boxes[keep], centers[keep]
            weights = weights[keep] if weights is not None else None
        self.timings["features"] += time.perf_counter() - t0
        return ImageFeatures(feats=feats, boxes=boxes, centers=centers, weights=weights, size=blocks.size,
                             scale=blocks.scale)

    def image_features(self, img: torch.Tensor, ids: Sequence[int], key: str | None = None) -> ImageFeatures:
        """Hyper-image of a uint8 image (3, H, W) for sorted `ids`; cached under `key` when given."""
        ids = validate_ids(ids, self.backbone.n_ids)
        if self.cache_blocks:
            all_ids = tuple(range(self.backbone.n_ids))
            blocks = (self._blocks(img, all_ids) if key is None else
                      self.cache.get_or_compute((key, "blocks"), lambda: self._blocks(img, all_ids)))
            return self._assemble(blocks, ids)
        if key is None:
            return self._assemble(self._blocks(img, ids), ids)
        return self.cache.get_or_compute((key, ids), lambda: self._assemble(self._blocks(img, ids), ids))

    # ----------------------------------------------------------------------------------- matching
    @torch.no_grad()
    def confidence(self, src: ImageFeatures, trg: ImageFeatures, pair_id: Any = None) -> torch.Tensor:
        """Matching confidence (Ns, Nt) of `evaluation.md` §§7-8 for the configured `sim`."""
        st = self.settings
        synchronize(self.device)
        t0 = time.perf_counter()
        sim = cosine_similarity(src.feats, trg.feats)
        if st.hpf:  # in place: one (Ns, Nt) buffer (same values as out-of-place)
            votes, geo = sim.clamp_(min=0).pow_(3), True
        elif st.sim in OT_SIMS:
            mu = _marginal(src.weights, src.feats.shape[0], sim)
            nu = _marginal(trg.weights, trg.feats.shape[0], sim)
            try:
                votes = ot_votes(sim, mu, nu, eps=st.eps, exp2=st.exp2, n_iters=st.sinkhorn_iters,
                                 solver=st.solver)
            except ValueError as err:
                raise RuntimeError(f"pair {pair_id}: Sinkhorn failed ({err})") from err
            del sim  # not needed by RHM: free it before the Hough buffers
            geo = st.sim in GEO_SIMS
        else:
            votes, geo = sim.clamp_(min=0).pow_(st.exp1), st.sim in GEO_SIMS
        if geo:
            votes = regularized_hough_matching(votes, src.centers, trg.centers, src.size, trg.size)
        synchronize(self.device)
        self.timings["match"] += time.perf_counter() - t0
        return votes

    @torch.no_grad()
    def predict_pair(self, sample: dict[str, Any], ids: Sequence[int], alphas: Sequence[float],
                     thres: str) -> PairPrediction:
        """Transfer the source keypoints of one dataset sample and score them (thresholds from the target)."""
        src = self.image_features(sample["src_img"], ids, key=sample.get("src_name"))
        trg = self.image_features(sample["trg_img"], ids, key=sample.get("trg_name"))
        conf = self.confidence(src, trg, pair_id=sample.get("index"))
        t0 = time.perf_counter()
        src_kps = scale_keypoints(sample["src_kps"].to(self.device), src.scale)
        trg_kps = scale_keypoints(sample["trg_kps"].to(self.device), trg.scale)
        pred, n_neighbours = transfer_keypoints(conf, src.boxes, trg.boxes, src_kps)
        height, width = sample["trg_img"].shape[-2:]
        length = pck_length(thres, (height, width), sample["trg_bbox"])
        thresholds = pck_threshold(length, trg.scale, [float(a) for a in alphas]).to(self.device)
        correct = correct_keypoints(pred, trg_kps, thresholds)
        synchronize(self.device)
        self.timings["transfer"] += time.perf_counter() - t0
        return PairPrediction(pred=pred, gt=trg_kps, thresholds=thresholds, correct=correct.cpu(),
                              n_uncovered=int((n_neighbours == 0).sum()), trg_scale=trg.scale)

    def score_pairs(self, dataset: Any, ids: Sequence[int], indices: Iterable[int] | None = None,
                    alphas: Sequence[float] = (0.1,), thres: str = "auto") -> PCKAccumulator:
        """PCK accumulator over `indices` (default: all) for one id set (single process, no loader)."""
        thres = resolve_thres(dataset, thres)
        acc = PCKAccumulator(list(alphas), dataset.name)
        for i in (range(len(dataset)) if indices is None else indices):
            sample = dataset[i]
            prediction = self.predict_pair(sample, ids, alphas, thres)
            acc.add(_meta(sample, prediction), prediction.correct)
        return acc


def _marginal(weights: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    return marginal(weights)


_TENSOR_KEYS = ("src_img", "trg_img", "src_kps", "trg_kps", "src_bbox", "trg_bbox")


def _meta(sample: dict[str, Any], prediction: PairPrediction) -> dict[str, Any]:
    meta = {k: v for k, v in sample.items() if k not in _TENSOR_KEYS}
    meta["n_uncovered"] = prediction.n_uncovered
    return meta


def resolve_thres(dataset: Any, thres: str) -> str:
    """"auto" -> the dataset's default threshold type ("img" PF-PASCAL, "bbox" otherwise)."""
    if hasattr(dataset, "check_thres"):
        return dataset.check_thres(thres)
    return dataset.default_thres if thres == "auto" else thres


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
             num_workers: int = 0, progress: bool = False, on_pair: Any = None) -> EvalResult:
    """Evaluate `dataset` (first `max_pairs` pairs) and gather the per-pair results across ranks.

    `on_pair(sample, prediction)` is called for every pair (e.g. visualisation). Every rank returns the
    same merged `EvalResult` (rows sorted by pair index).
    """
    ids = validate_ids(ids, matcher.backbone.n_ids)
    thres = resolve_thres(dataset, thres)
    indices = shard_indices(len(dataset), max_pairs, info)
    acc = PCKAccumulator(list(alphas), dataset.name)
    loader = DataLoader(_Items(dataset, indices), batch_size=1, shuffle=False, collate_fn=_first,
                        num_workers=num_workers, persistent_workers=False)
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
        prediction = matcher.predict_pair(sample, ids, alphas, thres)
        n_uncovered += prediction.n_uncovered
        acc.add(_meta(sample, prediction), prediction.correct)
        if on_pair is not None:
            on_pair(sample, prediction)
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
    return EvalResult(summary=merged.summary(), rows=merged.rows(), n_pairs=n_pairs,
                      n_uncovered=sum(p[1] for p in parts), timings=timings)
