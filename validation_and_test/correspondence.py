"""Match your own image pair from Python with the evaluation matcher (`Matcher`, presets, preprocessing).

    corr = Correspondence.from_preset("pfpascal", weights="runs/x/checkpoints/last.pth", device="cpu")
    result = corr(src_image, trg_image, [[120, 80], [200, 150]])  # PIL / ndarray / tensor images
    result.keypoints, result.confidence      # (K, 2) target pixels, (K,) in [0, 1]
    result.dense.src_points, result.dense.trg_points   # every source hyperpixel -> its best target

The keypoints come from exactly the computation `test.py` runs for a benchmark pair (same features,
confidence, arg-max transfer), returned in original target pixels (NaN: no source box holds the keypoint).
Confidence of a source hyperpixel = the share of its vote mass (the OT/Hough confidence row) that goes to
its best target hyperpixel; a keypoint's confidence is the mean over the source boxes that transfer it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from configs.runtime import UserError, resolve_device, set_faithful_numerics, synchronize
from data.io import MIN_IMAGE_SIDE, pil_to_uint8_tensor
from models.backbone import validate_ids
from models.backbone_loader import load_backbone
from validation_and_test.config import CONFIG_KEYS, EvalConfig, check_backbone, resolve_config
from validation_and_test.feature_store import disk_feature_cache
from validation_and_test.keypoints_io import check_inside, grid_keypoints
from validation_and_test.matcher import ImageFeatures, Matcher, MatchSettings
from validation_and_test.preprocess import scale_keypoints
from validation_and_test.record import settings_record

ImageLike = Union["PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821


@dataclass
class DenseMatches:
    """Every source hyperpixel -> its best target hyperpixel, original pixels: src_points (N, 2),
    trg_points (N, 2), confidence (N,) in [0, 1]; grid (h, w) with N = h * w, row-major."""

    src_points: torch.Tensor
    trg_points: torch.Tensor
    confidence: torch.Tensor
    grid: tuple[int, int]
    src_scale: float
    trg_scale: float


@dataclass
class MatchResult:
    """src_keypoints (K, 2) and keypoints (K, 2) in original source / target pixels (NaN: no source box
    holds the keypoint), confidence (K,) in [0, 1] (chance: 1 / n_target_hyperpixels), dense matches, image
    sizes (W, H), seconds taken."""

    src_keypoints: torch.Tensor
    keypoints: torch.Tensor
    confidence: torch.Tensor
    dense: DenseMatches
    src_size: tuple[int, int]
    trg_size: tuple[int, int]
    seconds: float
    n_target_hyperpixels: int


def to_uint8_image(image: Any, what: str = "image") -> torch.Tensor:
    """PIL image, ndarray (H, W[, 3|4]) or tensor (3, H, W) -> uint8 (3, H, W) RGB on the CPU.

    Float arrays and tensors are read as values in [0, 1]; alpha channels are dropped.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return pil_to_uint8_tensor(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise UserError(f"{what}: expected an array (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        tensor = torch.from_numpy(np.array(arr[:, :, :3], copy=True)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(0).expand(3, -1, -1)
        if tensor.dim() != 3 or tensor.shape[0] not in (3, 4):
            raise UserError(f"{what}: expected a tensor (3, H, W), got {tuple(tensor.shape)}")
        tensor = tensor[:3]
    else:
        raise UserError(f"{what}: expected a PIL image, a NumPy array or a tensor, "
                        f"got {type(image).__name__}")
    if tensor.is_floating_point():
        tensor = (tensor.float().clamp(0, 1) * 255).round()
    tensor = tensor.to(torch.uint8).contiguous()
    if min(tensor.shape[1:]) < MIN_IMAGE_SIDE:
        raise UserError(f"{what} is {tensor.shape[2]}x{tensor.shape[1]} pixels; each side must be at least "
                        f"{MIN_IMAGE_SIDE}")
    return tensor


class Correspondence:
    """One backbone + one set of matching settings; call it on image pairs."""

    def __init__(self, cfg: EvalConfig, preset: str = "", ids_given: bool = True) -> None:
        check_backbone(cfg, preset, ids_given)
        self.cfg = cfg
        self.preset = preset
        self.device = resolve_device(cfg.device)
        self.numerics = set_faithful_numerics(self.device, cfg.fast)
        backbone, self.weights_record = load_backbone(cfg.backbone, cfg.weights, cfg.seed)
        self.arch = backbone.name
        check_backbone(cfg, preset, ids_given, backbone.id_family)
        self.ids = validate_ids(cfg.hyperpixel, backbone.n_ids)
        self.matcher = Matcher(backbone, MatchSettings.from_config(cfg), self.device, cache_mb=0.0,
                               disk_cache=disk_feature_cache(cfg.feature_cache, self.weights_record))
        self.numerics = self.matcher.numerics(self.numerics)

    @classmethod
    def from_preset(cls, preset: str = "pfpascal", weights: str | None = None, device: str = "auto",
                    **overrides: Any) -> Correspondence:
        """Settings of `configs/eval/<preset>.yaml` (or a YAML path as `config=`), overridden by `weights`,
        `device` and any `EvalConfig` key (e.g. hyperpixel=[2, 3], sim="OT", exp2=1.0)."""
        unknown = sorted(set(overrides) - set(CONFIG_KEYS) - {"config"})
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})")
        flags = {"device": device, **overrides}
        if "config" not in overrides:  # a config file names its own dataset
            flags["dataset"] = preset
        if weights is not None:
            flags["weights"] = str(weights)
        cfg, path, ids_given = resolve_config(argparse.Namespace(**flags))
        return cls(cfg, path, ids_given)

    def record(self) -> dict[str, Any]:
        """Settings and weights identity in the form of results.json."""
        return {"hyperpixel": list(self.ids), **settings_record(
            self.cfg, thres=None, arch=self.arch, weights=self.weights_record, numerics=self.numerics,
            preset=self.preset, matcher=self.matcher)}

    def salient_box(self, features: ImageFeatures) -> tuple[float, float, float, float]:
        """Box (x1, y1, x2, y2) in resized pixels around the hyperpixels of above-minimum CAM weight
        (the whole image when CAM is off or flat)."""
        width, height = features.size
        full = (0.0, 0.0, float(width - 1), float(height - 1))
        if features.weights is None or bool((features.weights == features.weights.min()).all()):
            return full
        pts = features.centers[features.weights > features.weights.min()]
        x1, y1 = pts.min(dim=0).values.tolist()
        x2, y2 = pts.max(dim=0).values.tolist()
        return (max(x1, 0.0), max(y1, 0.0), min(x2, full[2]), min(y2, full[3]))

    @torch.no_grad()
    def __call__(self, src_image: ImageLike, trg_image: ImageLike, src_kps: Any = None, grid: int = 8
                 ) -> MatchResult:
        """Match `src_image` to `trg_image`; `src_kps` (K, 2) (x, y) source pixels, or None for a
        `grid` x `grid` grid over the source (over its CAM-salient region when CAM is on)."""
        start = time.perf_counter()
        src_img = to_uint8_image(src_image, "source image")
        trg_img = to_uint8_image(trg_image, "target image")
        src_size = (int(src_img.shape[2]), int(src_img.shape[1]))
        if src_kps is not None:
            src_kps = torch.as_tensor(src_kps, dtype=torch.float32).reshape(-1, 2).cpu()
            check_inside(src_kps, src_size)
        m = self.matcher
        src = m.image_features(src_img, self.ids)
        trg = m.image_features(trg_img, self.ids)
        if src_kps is None:
            box = self.salient_box(src)
            src_kps = (grid_keypoints(grid, box) / torch.tensor(src.scale)).clamp(min=0)
            src_kps = torch.minimum(src_kps, torch.tensor([src_size[0] - 1, src_size[1] - 1],
                                                          dtype=torch.float32))
        conf = m.confidence(src, trg)
        kps = scale_keypoints(src_kps.to(self.device), src.scale)
        pred, n_neighbours, best, inside = m.transfer(conf, src, trg, kps)  # as predict_pair
        best_votes = conf.max(dim=1).values
        if m.settings.nn:  # the cosine of the match, clamped at 0
            share = best_votes.clamp(0, 1)
        else:  # the share of the vote mass
            share = best_votes / conf.sum(dim=1).clamp_min(torch.finfo(conf.dtype).tiny)  # (Ns,)
        del conf
        kp_conf = (inside.to(share.dtype) @ share) / n_neighbours.to(share.dtype)  # NaN: no box holds it
        dense = DenseMatches(src_points=(src.centers / src.scale).cpu(),
                             trg_points=(trg.centers[best] / trg.scale).cpu(), confidence=share.cpu(),
                             grid=src.grid, src_scale=src.scale, trg_scale=trg.scale)
        synchronize(self.device)
        trg_size = (int(trg_img.shape[2]), int(trg_img.shape[1]))
        return MatchResult(src_keypoints=src_kps, keypoints=(pred / trg.scale).cpu(),
                           confidence=kp_conf.cpu(), dense=dense, src_size=src_size, trg_size=trg_size,
                           seconds=time.perf_counter() - start, n_target_hyperpixels=len(trg.boxes))
