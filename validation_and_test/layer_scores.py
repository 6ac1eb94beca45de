"""Scores of a hyperpixel id set for the layer search (higher is better).

- `PCKScore`: PCK@alpha over labelled pairs, through the evaluation loop (`evaluate`).
- `CycleScore`: label-free, minus the cycle re-localisation error of attention-guided crops, defined
  below (ours; the original's inconsistencies fixed; docs/protocol.md, Label-free layer score).

Cycle score, for every scored pair i (source I_s, target I_t of the split):

1. Frame. Both images are prepared exactly as for matching (`preprocess.prepare_image`: ImageNet
   normalisation, SCOT resize to long side 300, aspect kept); every coordinate below is a *continuous*
   pixel coordinate of that resized frame (pixel k covers [k, k + 1)). Crop, scorer and ground truth all
   live in it: no second resolution, no squashing, non-square images and maps are fine.
2. Augmentation, one per pair, keyed by pair index: `numpy.random.default_rng([seed, i])` draws
   flip ~ Bernoulli(`flip_prob`), then angle ~ U[-`rotate_deg`, +`rotate_deg`] degrees. The augmented
   image is the source flipped (x -> -x) and rotated about its centre c = (W/2, H/2):
   source point p = c + M (q - c) for augmented point q, M = Flip . Rot(angle).
3. Attention-guided crop. a(h, w) = cos(mean(F4), F4(h, w)) with F4 = the last block's output after its
   ReLU (layer4); its arg-max cell (first in row-major order) has source centre (u j4 + 1/2, v j4 + 1/2).
   Mapped into the augmented frame, it gives the P x P crop's top-left corner o = round(q - P/2) clamped
   to the image (P = min(`patch`, W, H)). The crop is resampled once, bilinearly (`grid_sample`,
   align_corners=False, zero padding = the ImageNet mean colour), straight from the source:
   crop pixel k samples source point p(k + 1/2) with p(x) = M x + c + M (o - c), no scale change.
4. Hyperpixels of a candidate id set: `hyper_image` of the crop, source and target (smallest id's grid,
   jump j), flattened row-major and L2-normalised per hyperpixel (the whole concatenated vector).
5. Walk (the training branch's `soft_argmax_walk`). A02 = f0 f2^T / T (crop -> target), A21 = f2 f1^T / T
   (target -> source), T = `temperature`; prediction of crop cell a: p_hat(a) = softmax_row(A02)
   softmax_row(A21) c1, with c1(j) = (u j + 1/2, v j + 1/2) the receptive-field centre of source cell j
   (the same convention as the GT; the training branch's `cell_centres` are cell middles instead).
6. Ground truth of crop cell a = (u, v): p((u j + 1/2, v j + 1/2)) exactly (the source point its receptive
   field centre was sampled from). Valid iff it lies inside the source image [0, W] x [0, H].
7. Pair error = mean over valid cells and both coordinates of (p_hat - GT)^2 (resized-frame px^2).
   Set score = minus the mean pair error over the scored pairs (higher is better).

Cost: the backbone runs once per image and once per crop (all ids cached at native resolution, bounded
by `cache_mb`); a candidate set costs the hyper-image assembly and two affinity products per pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from configs.runtime import UserError
from models.backbone import HyperpixelBackbone, hyper_image, validate_ids
from models.cycle import masked_coordinate_mse, self_attention, soft_argmax_walk
from validation_and_test.evaluate import evaluate, resolve_thres
from validation_and_test.feature_cache import FeatureCache
from validation_and_test.preprocess import prepare_image


@dataclass(frozen=True)
class CycleScoreSettings:
    seed: int = 0  # crops: numpy default_rng([seed, pair index])
    patch: int = 128  # crop side P in resized-frame pixels (clamped to the image)
    rotate_deg: float = 10.0
    flip_prob: float = 0.5
    temperature: float = 0.0007
    resize_rule: str = "scot"
    long_side: int = 300

    def __post_init__(self) -> None:
        if self.patch < 1 or self.temperature <= 0 or self.rotate_deg < 0 or not 0 <= self.flip_prob <= 1:
            raise UserError(f"cycle score: need patch >= 1, temperature > 0, rotate >= 0, "
                            f"flip_prob in [0, 1]; got {self}")


@dataclass
class CropSpec:
    """One pair's crop: flip, angle (deg), top-left `origin` (x, y) in the augmented frame, side `patch`,
    `affine` (2, 3): crop px (x, y) -> source px, source `size` (W, H), all continuous resized-frame px."""

    index: int
    flip: bool
    angle_deg: float
    origin: tuple[int, int]
    patch: int
    affine: torch.Tensor
    size: tuple[int, int]


@dataclass
class _Blocks:
    maps: dict[int, torch.Tensor]
    size: tuple[int, int]  # (W, H) of the network input

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.maps.values())


# ------------------------------------------------------------------------------------------ pure geometry
def pair_augmentation(seed: int, index: int, flip_prob: float, rotate_deg: float) -> tuple[bool, float]:
    """(flip, angle in degrees) of pair `index`, a pure function of (seed, index)."""
    rng = np.random.default_rng([int(seed), int(index)])
    flip = bool(rng.random() < flip_prob)
    angle = float((rng.random() * 2.0 - 1.0) * rotate_deg)
    return flip, angle


def augmentation_matrix(flip: bool, angle_deg: float) -> torch.Tensor:
    """M (2, 2) float64 = Flip . Rot(angle): source offset = M @ augmented offset (about the centre)."""
    rad = math.radians(angle_deg)
    rot = torch.tensor([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]], dtype=torch.float64)
    flip_m = torch.diag(torch.tensor([-1.0 if flip else 1.0, 1.0], dtype=torch.float64))
    return flip_m @ rot


def attention_peak(final: torch.Tensor, jump: int) -> tuple[float, float]:
    """Arg-max of cos(mean(F4), F4(h, w)) over a (1, C, h, w) map -> its cell centre (x, y) in px."""
    idx = int(self_attention(final.double()).flatten().argmax())
    width = final.shape[-1]
    return (idx % width) * jump + 0.5, (idx // width) * jump + 0.5


def make_crop_spec(index: int, size: tuple[int, int], peak: tuple[float, float],
                   settings: CycleScoreSettings) -> CropSpec:
    """Crop of pair `index` for a source of `size` (W, H) whose attention peaks at source point `peak`."""
    width, height = size
    patch = int(min(settings.patch, width, height))
    flip, angle = pair_augmentation(settings.seed, index, settings.flip_prob, settings.rotate_deg)
    m = augmentation_matrix(flip, angle)
    centre = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    q = centre + m.t() @ (torch.tensor(peak, dtype=torch.float64) - centre)  # M orthogonal: M^-1 = M^T
    ox = int(min(max(math.floor(float(q[0]) - patch / 2.0 + 0.5), 0), width - patch))
    oy = int(min(max(math.floor(float(q[1]) - patch / 2.0 + 0.5), 0), height - patch))
    shift = centre + m @ (torch.tensor([ox, oy], dtype=torch.float64) - centre)
    affine = torch.cat([m, shift[:, None]], dim=1)
    return CropSpec(index=index, flip=flip, angle_deg=angle, origin=(ox, oy), patch=patch, affine=affine,
                    size=(width, height))


def crop_to_source(spec: CropSpec, points: torch.Tensor) -> torch.Tensor:
    """Crop points (N, 2) (x, y) px -> source points (N, 2) px (float64)."""
    a = spec.affine
    return points.double() @ a[:, :2].t() + a[:, 2]


def crop_image(x: torch.Tensor, spec: CropSpec) -> torch.Tensor:
    """Resample the P x P crop from the prepared source x (1, C, H, W) (bilinear, zero padding)."""
    width, height = spec.size
    if tuple(x.shape[-2:]) != (height, width):
        raise ValueError(f"crop spec is for {height}x{width}, image is {tuple(x.shape[-2:])}")
    k = torch.arange(spec.patch, dtype=torch.float64) + 0.5
    ys, xs = torch.meshgrid(k, k, indexing="ij")
    p = crop_to_source(spec, torch.stack([xs.flatten(), ys.flatten()], dim=1))
    norm = torch.stack([2.0 * p[:, 0] / width - 1.0, 2.0 * p[:, 1] / height - 1.0], dim=1)
    grid = norm.to(x.dtype).reshape(1, spec.patch, spec.patch, 2).to(x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def receptive_field_centres(grid_h: int, grid_w: int, jump: int, device: Any = None) -> torch.Tensor:
    """Receptive-field centres (h*w, 2) (x, y) = (u j + 1/2, v j + 1/2), row-major, float32."""
    v, u = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32, device=device),
                          torch.arange(grid_w, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack([u.flatten() * jump + 0.5, v.flatten() * jump + 0.5], dim=1)


def crop_cell_targets(spec: CropSpec, grid_h: int, grid_w: int, jump: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """GT (m, 2) source px (float32) of the crop's cells and valid (m,) bool (inside the source image)."""
    gt = crop_to_source(spec, receptive_field_centres(grid_h, grid_w, jump))
    width, height = spec.size
    valid = (gt[:, 0] >= 0) & (gt[:, 0] <= width) & (gt[:, 1] >= 0) & (gt[:, 1] <= height)
    return gt.float(), valid


# ------------------------------------------------------------------------------------------ pure scoring
def normalized_hyperpixels(maps: dict[int, torch.Tensor], ids: Sequence[int]
                           ) -> tuple[torch.Tensor, int, int]:
    """(N, D) L2-normalised hyperpixels (row-major) of the hyper-image of `ids`, and its grid (h, w)."""
    hyper = hyper_image({i: maps[i] for i in ids}, ids)[0]
    grid_h, grid_w = hyper.shape[-2:]
    return F.normalize(hyper.flatten(1).t(), dim=1), grid_h, grid_w


# ------------------------------------------------------------------------------------------ scorer
class CycleScore:
    """Label-free score of id sets over pairs `indices` of `dataset` (module docstring).

    `score(ids)` -> minus the mean pair error (px^2); `pair_errors(ids)` -> {index: error}.
    """

    def __init__(self, backbone: HyperpixelBackbone, dataset: Any, indices: Sequence[int],
                 settings: CycleScoreSettings = CycleScoreSettings(), device: torch.device | str = "cpu",
                 cache_mb: float = 4096.0):
        if not isinstance(backbone, HyperpixelBackbone):  # its cell centres assume a ResNet's integer grid
            raise UserError(f"--score cycle is defined for ResNet backbones, not {backbone.name}; "
                            f"use --score pck")
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.dataset = dataset
        self.indices = list(indices)
        self.settings = settings
        self.cache = FeatureCache(cache_mb)
        self.specs: dict[int, CropSpec] = {}
        self.all_ids = tuple(range(backbone.n_ids))

    @torch.no_grad()
    def _extract(self, x: torch.Tensor) -> _Blocks:
        maps = self.backbone.forward_blocks(x, self.all_ids).maps
        return _Blocks(maps=maps, size=(x.shape[-1], x.shape[-2]))

    def _prepare(self, img: torch.Tensor) -> torch.Tensor:
        return prepare_image(img, self.settings.resize_rule, self.settings.long_side, self.device)[0]

    def pair_blocks(self, i: int) -> tuple[_Blocks, _Blocks, _Blocks, CropSpec]:
        """(source, target, crop) block maps of pair i (cached) and its crop spec."""
        meta = self.dataset.pair_meta(i)
        loaded: dict[str, Any] = {}

        def sample() -> dict[str, Any]:
            if not loaded:
                loaded.update(self.dataset[i])
            return loaded

        src = self.cache.get_or_compute(("img", meta["src_name"]),
                                        lambda: self._extract(self._prepare(sample()["src_img"])))
        trg = self.cache.get_or_compute(("img", meta["trg_name"]),
                                        lambda: self._extract(self._prepare(sample()["trg_img"])))
        spec = self.specs.get(i)
        if spec is None:
            last = self.all_ids[-1]
            peak = attention_peak(F.relu(src.maps[last]), self.backbone.jumps[last])
            spec = self.specs[i] = make_crop_spec(i, src.size, peak, self.settings)
        crop = self.cache.get_or_compute(
            ("crop", i), lambda: self._extract(crop_image(self._prepare(sample()["src_img"]), spec)))
        return src, trg, crop, spec

    @torch.no_grad()
    def pair_error(self, i: int, ids: Sequence[int]) -> float:
        ids = validate_ids(ids, self.backbone.n_ids)
        src, trg, crop, spec = self.pair_blocks(i)
        jump = self.backbone.jumps[ids[0]]
        f1, h1, w1 = normalized_hyperpixels(src.maps, ids)
        f2, _, _ = normalized_hyperpixels(trg.maps, ids)
        f0, h0, w0 = normalized_hyperpixels(crop.maps, ids)
        centres = receptive_field_centres(h1, w1, jump, self.device)
        pred = soft_argmax_walk(f0.t()[None], f1.t()[None], f2.t()[None], self.settings.temperature,
                                centres)[0][0].cpu()
        gt, valid = crop_cell_targets(spec, h0, w0, jump)
        if not bool(valid.any()):
            return float("nan")
        return float(masked_coordinate_mse(pred.double()[None], gt.double()[None], valid[None]))

    def pair_errors(self, ids: Sequence[int]) -> dict[int, float]:
        return {i: self.pair_error(i, ids) for i in self.indices}

    def __call__(self, ids: Sequence[int]) -> float:
        errors = [e for e in self.pair_errors(ids).values() if not math.isnan(e)]
        return -math.fsum(errors) / len(errors) if errors else float("nan")

    def cache_stats(self) -> dict[str, float]:
        return self.cache.stats()

    def describe(self) -> dict[str, Any]:
        return {"definition": "minus mean over pairs of the masked cycle MSE, resized-frame px^2 "
                              "(validation_and_test/layer_scores.py)",
                "seed": self.settings.seed, "patch": self.settings.patch,
                "rotate_deg": self.settings.rotate_deg, "flip_prob": self.settings.flip_prob,
                "temperature": self.settings.temperature, "resize_rule": self.settings.resize_rule,
                "long_side": self.settings.long_side, "l2_normalised": True, "frame": "resized (long side)"}


def crops_json(scorer: CycleScore) -> list[dict[str, Any]]:
    """The crops used (after a scoring run): index, flip, angle, origin, patch."""
    return [{"index": s.index, "flip": s.flip, "angle_deg": round(s.angle_deg, 6), "origin": list(s.origin),
             "patch": s.patch} for _, s in sorted(scorer.specs.items())]


# ------------------------------------------------------------------------------------------ PCK score
class CachedPairs:
    """`dataset[i]` memoised (decoded images, keypoints, boxes), LRU-bounded by `max_mb`; every other
    attribute (`name`, `split`, `check_thres`, `pair_meta`, ...) is the wrapped dataset's. Samples are
    shared between calls: callers must not modify them in place (the matcher does not)."""

    def __init__(self, dataset: Any, max_mb: float = 1024.0):
        self.dataset = dataset
        self.samples = FeatureCache(max_mb)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples.get_or_compute(int(i), lambda: _SizedSample(self.dataset[i])).sample

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "samples"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _SizedSample:
    def __init__(self, sample: dict[str, Any]):
        self.sample = sample

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.sample.values() if torch.is_tensor(v))


class PCKScore:
    """Score = PCK@`alpha` (percent, per-pair mean, `thres` resolved as test.py does) over `indices`.

    `matcher` should be built with `cache_blocks=True` and a `cache_mb` that holds every image of the
    scored pairs; otherwise images are recomputed (correct, slower; see `cache_stats`).
    """

    def __init__(self, matcher: Any, dataset: Any, indices: Sequence[int], alpha: float = 0.1,
                 thres: str = "auto"):
        self.matcher = matcher
        self.dataset = dataset
        self.indices = list(indices)
        self.alpha = float(alpha)
        self.thres = resolve_thres(dataset, thres)

    def __call__(self, ids: tuple[int, ...]) -> float:
        result = evaluate(self.matcher, self.dataset, ids, (self.alpha,), self.thres, indices=self.indices)
        return float(result.summary["pck"][f"{self.alpha:g}"])

    def cache_stats(self) -> dict[str, float]:
        return self.matcher.cache.stats()
