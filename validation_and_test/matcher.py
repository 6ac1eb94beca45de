"""SCOT-style matcher: hyperpixels + CAM of each image, then cosine -> OT -> RHM -> keypoint transfer.

    matcher = Matcher(load_backbone("resnet50", "imagenet")[0], MatchSettings(), device)
    prediction = matcher.predict_pair(sample, ids=(2, 12, 13, 15))  # keypoints in resized target px

The matcher predicts; scoring (PCK) belongs to the loop in `evaluate.py`. Images are processed one at a
time (no padding in the backbone or CAM) and cached per image name. With `cache_blocks=True` every
image's block maps (all ids) and CAM map are cached, so another id set only re-assembles hyperpixels
(layer searches). Hyperpixel similarities are factorised per stride by default
(`models.hyper_similarity`); `similarity="dense"` keeps the (N, D) hyperpixel product as the reference.
`matcher="nn"` / `"nn-mutual"` replace OT and RHM by the nearest neighbour on the cosine (one-way, or only
source hyperpixels whose nearest neighbour's nearest neighbour is themselves), with the same transfer.
A backbone without a classifier head (`Backbone.has_classifier`) gets uniform OT marginals (`cam_rule`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from configs.runtime import native_bf16, synchronize
from models.backbone import Backbone, hyper_image, validate_ids
from models.cam import cam_map, cam_weights, linear_head, marginal
from models.hyper_similarity import FactorisedHyperpixels, factorise, factorised_cosine
from models.rhm import regularized_hough_matching
from models.sinkhorn import cosine_similarity, ot_votes
from models.transfer import keypoint_neighbours, transfer_from_best
from validation_and_test.feature_cache import FeatureCache
from validation_and_test.feature_store import DiskFeatureCache
from validation_and_test.preprocess import prepare_image, scale_keypoints

GEO_SIMS = ("OTGeo", "cosGeo")
OT_SIMS = ("OTGeo", "OT")
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


@dataclass(frozen=True)
class MatchSettings:
    """Matching settings of the SCOT protocol (defaults: the faithful SCOT protocol, PF-PASCAL exp2)."""

    sim: str = "OTGeo"
    exp1: float = 1.0
    exp2: float = 0.5
    eps: float = 0.05
    sinkhorn_iters: int = 1
    solver: str = "scot"  # "scot" (exponential domain, eps doubling) or "log" (converged, log domain)
    classmap: int = 1
    hpf: bool = False  # downscale-only resize, margin pruning, RHM on max(0, cos)^3
    long_side: int = 300
    similarity: Literal["factorised", "dense"] = "factorised"  # dense: the (N, D) product (reference)
    fast: bool = False  # backbone and CAM under bf16 autocast where the device has native bf16 kernels
    layout: Literal["auto", "channels_last", "contiguous"] = "auto"  # network passes; auto: CPU channels_last
    matcher: str = "scot"  # scot | nn (nearest neighbour on the cosine) | nn-mutual

    @classmethod
    def from_config(cls, cfg: Any) -> MatchSettings:
        """The settings of an `EvalConfig` (test.py and the layer search build them only here)."""
        return cls(sim=cfg.sim, exp1=cfg.exp1, exp2=cfg.exp2, eps=cfg.eps, sinkhorn_iters=cfg.sinkhorn_iters,
                   solver=cfg.solver, classmap=cfg.classmap, hpf=cfg.hpf, long_side=cfg.long_side,
                   similarity=cfg.similarity, fast=cfg.fast, layout=cfg.layout,
                   matcher=cfg.matcher)

    @property
    def resize_rule(self) -> str:
        return "hpf" if self.hpf else "scot"

    @property
    def needs_cam(self) -> bool:
        return self.classmap == 1 and not self.hpf and self.sim in OT_SIMS and self.matcher == "scot"

    @property
    def nn(self) -> bool:
        return self.matcher != "scot"

    @property
    def label(self) -> str:
        """The confidence as recorded in results files."""
        if self.nn:
            return "nearest neighbour on cos" + (" (mutual)" if self.matcher == "nn-mutual" else "")
        return "HPF (RHM on max(0,cos)^3)" if self.hpf else self.sim


@dataclass
class ImageFeatures:
    """One image's hyperpixels in the resized frame: `factors` (factorised) or `dense` (N, D); boxes (N, 4),
    centers (N, 2) px, weights (N,) CAM weights or None (uniform), size (W, H) resized, scale s, grid (h, w)
    of the hyperpixels (N = h * w, row-major)."""

    factors: FactorisedHyperpixels | None
    dense: torch.Tensor | None
    boxes: torch.Tensor
    centers: torch.Tensor
    weights: torch.Tensor | None
    size: tuple[int, int]
    scale: float
    grid: tuple[int, int]

    @property
    def feats(self) -> torch.Tensor:
        """The (N, D) hyperpixel vectors (materialised from the factorised form on demand)."""
        return self.dense if self.dense is not None else self.factors.dense()

    def nbytes(self) -> int:
        ts = [t for t in (self.dense, self.boxes, self.centers, self.weights) if t is not None]
        own = sum(t.numel() * t.element_size() for t in ts)
        return own + (self.factors.nbytes() if self.factors is not None else 0)


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
    """Prediction of one pair: pred (K, 2) in resized target pixels (NaN: no source box around the
    keypoint, or with nn-mutual no mutual match among them), n_uncovered such keypoints, scales s
    (original -> resized) of both images."""

    pred: torch.Tensor
    n_uncovered: int
    src_scale: float
    trg_scale: float


def prune_window(boxes: torch.Tensor, grid: tuple[int, int], jump: int, size: tuple[int, int]
                 ) -> tuple[slice, slice]:
    """HPF margin pruning (keep boxes leaving the image by at most one jump) as (rows, cols) of the grid:
    the condition splits per axis and is monotone along each, so the kept cells form a rectangle."""
    width, height = size
    b = boxes.view(grid[0], grid[1], 4)
    keep_x = ((b[0, :, 0] >= -jump) & (b[0, :, 2] < width + jump)).nonzero().flatten()
    keep_y = ((b[:, 0, 1] >= -jump) & (b[:, 0, 3] < height + jump)).nonzero().flatten()
    return (slice(int(keep_y[0]), int(keep_y[-1]) + 1) if len(keep_y) else slice(0, 0),
            slice(int(keep_x[0]), int(keep_x[-1]) + 1) if len(keep_x) else slice(0, 0))


class Matcher:
    """Hyperpixel features and SCOT matching for one backbone and one set of `MatchSettings`."""

    def __init__(self, backbone: Backbone, settings: MatchSettings | None = None,
                 device: torch.device | str = "cpu", cache_mb: float = 2048.0, cache_blocks: bool = False,
                 bf16: bool | None = None, disk_cache: DiskFeatureCache | None = None):
        self.settings = settings or MatchSettings()
        self.device = torch.device(device)
        # backbone + CAM in bf16 (None: when `settings.fast` and the device has native bf16 kernels)
        self.bf16_path = native_bf16(self.device) or "emulated"
        self.bf16 = self.settings.fast and self.bf16_path != "emulated" if bf16 is None else bf16
        self.layout = resolve_layout(self.settings.layout, self.device)
        self.memory_format = MEMORY_FORMATS[self.layout]
        self.backbone = backbone.to(self.device).eval()
        self.cam_on = self.settings.needs_cam and backbone.has_classifier
        if self.cam_on:
            linear_head(self.backbone.fc)  # fail early with the --classmap 0 hint
        self.cache = FeatureCache(cache_mb)
        self.cache_blocks = cache_blocks
        self.disk = disk_cache  # opt-in on-disk per-image cache of the backbone (+ CAM) outputs
        self.timings: dict[str, float] = {"features": 0.0, "cam": 0.0, "match": 0.0, "transfer": 0.0}

    @property
    def cam_rule(self) -> str:
        """How the OT marginals were made (recorded in results files)."""
        if self.cam_on:
            return "CAM (classmap 1)"
        if self.settings.needs_cam:
            return "uniform: the backbone has no classifier head for CAM"
        return "uniform" if self.settings.sim in OT_SIMS and not self.settings.nn else "not used"

    def precision(self, base: str) -> str:
        """The numerics record's precision (`set_faithful_numerics`) plus the bf16 backbone and its path
        (cuda, amx, avx512_bf16; emulated where forced without native kernels) when used."""
        if not self.bf16:
            return base
        bf16 = f"bf16 backbone ({self.bf16_path})"
        return bf16 if base == "float32" else f"{base} + {bf16}"

    def numerics(self, base: dict[str, Any]) -> dict[str, Any]:
        """`set_faithful_numerics`'s record with this matcher's precision and network layout."""
        return {**base, "precision": self.precision(base["precision"]), "layout": self.layout}

    # ----------------------------------------------------------------------------------- features
    @torch.no_grad()
    def _blocks(self, img: torch.Tensor, ids: Sequence[int]) -> _ImageBlocks:
        """Backbone (+ CAM) of one uint8 image (3, H, W) for `ids`, from the disk cache when it holds them."""
        if self.disk is None:
            return self._compute_blocks(img, ids)
        st = self.settings
        key = self.disk.key(img, {"backbone": self.backbone.name, "resize_rule": st.resize_rule,
                                  "long_side": st.long_side, "ids": sorted(int(i) for i in ids),
                                  "cam": self.cam_on, "bf16": self.bf16, "layout": self.layout,
                                  "device": self.device.type})
        t0 = time.perf_counter()
        hit = self.disk.get(key)
        if hit is not None:
            self.timings["features"] += time.perf_counter() - t0
            cam = hit["cam"].to(self.device) if hit["cam"] is not None else None
            return _ImageBlocks(maps={int(i): m.to(self.device) for i, m in hit["maps"].items()}, cam=cam,
                                scale=float(hit["scale"]), size=tuple(hit["size"]))
        blocks = self._compute_blocks(img, ids)
        self.disk.put(key, {"maps": {i: m.cpu() for i, m in blocks.maps.items()},
                            "cam": blocks.cam.cpu() if blocks.cam is not None else None,
                            "scale": blocks.scale, "size": list(blocks.size)})
        return blocks

    def _compute_blocks(self, img: torch.Tensor, ids: Sequence[int]) -> _ImageBlocks:
        """Backbone (+ CAM) of one uint8 image (3, H, W) for `ids`."""
        synchronize(self.device)
        t0 = time.perf_counter()
        x, s = prepare_image(img, self.settings.resize_rule, self.settings.long_side, self.device)
        x = x.contiguous(memory_format=self.memory_format)  # the input's layout sets the convolutions'
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.backbone.forward_blocks(x, ids, full=self.cam_on)
        maps = {i: m.float().contiguous() for i, m in out.maps.items()}  # matching: one layout
        synchronize(self.device)
        t1 = time.perf_counter()
        cam = None
        if self.cam_on:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                cam = cam_map(x, self.backbone.fc, out.final, self.backbone.forward_final).float()
            synchronize(self.device)
        self.timings["features"] += t1 - t0
        self.timings["cam"] += time.perf_counter() - t1
        return _ImageBlocks(maps=maps, cam=cam, scale=s, size=(x.shape[-1], x.shape[-2]))

    def _assemble(self, blocks: _ImageBlocks, ids: tuple[int, ...]) -> ImageFeatures:
        t0 = time.perf_counter()
        maps = {i: blocks.maps[i] for i in ids}
        grid = tuple(maps[ids[0]].shape[-2:])
        jump = self.backbone.jumps[ids[0]]
        device = maps[ids[0]].device
        boxes, centers = self.backbone.boxes(ids[0], grid, blocks.size, device)
        rows, cols = (slice(None), slice(None))
        if self.settings.hpf:
            rows, cols = prune_window(boxes, grid, jump, blocks.size)
            keep = torch.zeros(grid, dtype=torch.bool, device=device)
            keep[rows, cols] = True
            boxes, centers = boxes[keep.flatten()], centers[keep.flatten()]
        factors = dense = None
        if self.settings.similarity == "dense":
            hyper = hyper_image(maps, ids)[0][:, rows, cols]  # (D, h, w)
            dense = hyper.flatten(1).t()  # (N, D), row-major p = y * w + x
        else:
            factors = factorise(maps, ids, (rows, cols))
        weights = cam_weights(blocks.cam, centers) if blocks.cam is not None else None
        self.timings["features"] += time.perf_counter() - t0
        kept = (len(range(grid[0])[rows]), len(range(grid[1])[cols]))
        return ImageFeatures(factors=factors, dense=dense, boxes=boxes, centers=centers, weights=weights,
                             size=blocks.size, scale=blocks.scale, grid=kept)

    def image_features(self, img: torch.Tensor, ids: Sequence[int], key: str | None = None) -> ImageFeatures:
        """Hyperpixels of a uint8 image (3, H, W) for sorted `ids`; cached under `key` when given."""
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
    def similarity(self, src: ImageFeatures, trg: ImageFeatures) -> torch.Tensor:
        """Raw cosine (Ns, Nt), a fresh buffer that the caller may overwrite."""
        if src.factors is not None and trg.factors is not None:
            return factorised_cosine(src.factors, trg.factors)
        return cosine_similarity(src.feats, trg.feats)

    @torch.no_grad()
    def confidence(self, src: ImageFeatures, trg: ImageFeatures, pair_id: Any = None) -> torch.Tensor:
        """Matching confidence (Ns, Nt) (OT plan and Hough votes) for the configured `sim`; every N x N
        step after the similarity works in its buffer."""
        st = self.settings
        synchronize(self.device)
        t0 = time.perf_counter()
        sim = self.similarity(src, trg)
        if st.nn:
            votes, geo = sim, False
        elif st.hpf:
            votes, geo = sim.clamp_(min=0).pow_(3), True
        elif st.sim in OT_SIMS:
            mu = _marginal(src.weights, sim.shape[0], sim)
            nu = _marginal(trg.weights, sim.shape[1], sim)
            try:
                votes = ot_votes(sim, mu, nu, eps=st.eps, exp2=st.exp2, n_iters=st.sinkhorn_iters,
                                 solver=st.solver, sim_again=lambda: self.similarity(src, trg))
            except ValueError as err:
                raise RuntimeError(f"pair {pair_id}: Sinkhorn failed ({err})") from err
            geo = st.sim in GEO_SIMS
        else:
            votes, geo = sim.clamp_(min=0).pow_(st.exp1), st.sim in GEO_SIMS
        del sim
        if geo:
            votes = regularized_hough_matching(votes, src.centers, trg.centers, src.size, trg.size,
                                               inplace=True)
        synchronize(self.device)
        self.timings["match"] += time.perf_counter() - t0
        return votes

    def transfer(self, conf: torch.Tensor, src: ImageFeatures, trg: ImageFeatures, src_kps: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keypoint transfer (resized source px (K, 2) -> resized target px) with the row-wise arg-max of
        `conf`; "nn-mutual" keeps only the source boxes whose match is mutual. Returns (pred (K, 2),
        n_neighbours (K,), best (Ns,), inside (K, Ns))."""
        best = conf.max(dim=1).indices
        inside = keypoint_neighbours(src.boxes, src_kps)
        if self.settings.matcher == "nn-mutual":
            back = conf.max(dim=0).indices  # (Nt,) best source of every target
            inside &= (back[best] == torch.arange(len(best), device=best.device)).unsqueeze(0)
        pred, n_neighbours = transfer_from_best(best, inside, src.boxes, trg.boxes, src_kps)
        return pred, n_neighbours, best, inside

    @torch.no_grad()
    def predict_pair(self, sample: dict[str, Any], ids: Sequence[int]) -> PairPrediction:
        """Transfer the source keypoints of one dataset sample to its target (resized target pixels)."""
        src = self.image_features(sample["src_img"], ids, key=sample.get("src_name"))
        trg = self.image_features(sample["trg_img"], ids, key=sample.get("trg_name"))
        conf = self.confidence(src, trg, pair_id=sample.get("index"))
        t0 = time.perf_counter()
        src_kps = scale_keypoints(sample["src_kps"].to(self.device), src.scale)
        pred, n_neighbours, _, _ = self.transfer(conf, src, trg, src_kps)
        del conf
        synchronize(self.device)
        self.timings["transfer"] += time.perf_counter() - t0
        return PairPrediction(pred=pred, n_uncovered=int((n_neighbours == 0).sum()), src_scale=src.scale,
                              trg_scale=trg.scale)


def resolve_layout(layout: str, device: torch.device) -> str:
    """The memory layout of the network passes: `auto` is channels_last on the CPU (oneDNN's fastest float32
    convolutions; per-pair PCK unchanged, docs/numerics.md) and contiguous elsewhere (not measured). Set on
    the input of each pass; the network's weights are left as given (oneDNN reorders them per call)."""
    if layout == "auto":
        return "channels_last" if device.type == "cpu" else "contiguous"
    return layout


def _marginal(weights: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    return marginal(weights)
