"""Pixel-level branch: the crop -> target -> source cycle loss (docs/method.md, with its defect fixes).

API (stable; the combined model and the training loop call it):

    cfg = CycleConfig()             # paper + fixes (configs/train/original.yaml: the released code)
    out = cycle_loss(encoder_q, src, trg, cfg, generator, return_vis=False)
    out.loss            # scalar L_cyc (unweighted; multiply by cfg.loss_weight)
    out.stats           # dict of detached 0-dim tensors: valid fraction, mean max probabilities, error in px
    out.vis             # None, or detached tensors for the paper-like figure (see `CycleResult`)

Building blocks, each tested on its own: `attention_map` (step 1), `augment_and_crop` (steps 2-6: flip,
rotation, attention-guided crop, cell ground truth with validity, geometry in `models.crop`),
`models.backbone.resnet_features` (step 7), `soft_argmax_walk` (steps 8-10), `masked_coordinate_mse`
(step 11).

`encoder_q` is a ResNet (torchvision or timm; the MoCo query encoder) or a timm ViT (then
`feature_stage: block` and `feature_block` is the block id whose patch tokens are phi, the attention comes
from the last block's tokens, and the stride is the patch size); `src`, `trg`: (B, 3, S, S)
ImageNet-normalised pairs (S = 224 in the paper). All random draws (flip, rotation angle, optional crop
jitter) come from `generator` (per rank under DDP), in this order: flip (B), angle (B), then (B, 2)
uniforms only if crop_centre is "random", then jitter (B, 2) only if jitter > 0, then colour factors (B, 3)
only if colour_jitter > 0.

Coordinates: (x, y) in pixels of the un-augmented S x S source, continuous (pixel i covers [i, i+1)); source
cell j at column u, row v has centre s * (u + 1/2, v + 1/2) with s the feature stride.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from configs.runtime import UserError
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from models.backbone import STAGE_STRIDE, resnet_features
from models.batchnorm import batchnorm_eval, frozen_bn_stats
from models.crop import (
    augmentation_theta,
    augmented_to_source,
    cell_centres,
    cell_ground_truth,
    crop_centres,
    crop_theta,
    tracking_grid,
    warp,
)
from models.timm_models import is_vit, vit_patch
from models.vit_backbone import vit_block_tokens


@dataclass
class CycleConfig:
    """Pixel-level cycle branch; defaults = paper hyper-parameters, defect fixes on.

    "fix N" below = row N of docs/method.md, Known defects; kept vs changed: docs/protocol.md, Kept and
    changed (Cycle branch)."""

    loss_weight: float = 5e-4          # lambda_cyc (paper: 5e-4 PF-PASCAL / SPair, 5e-5 PF-WILLOW)
    feature_stage: Literal["layer1", "layer2", "layer3", "layer4", "block"] = "layer3"  # ResNet stage giving
    #                                    phi; "block": a ViT, phi = the patch tokens of block feature_block
    feature_block: int = -1            # block of that stage (-1 = last; id 13 on ResNet-50 = layer3 last)
    feature_relu: bool = True          # phi after the block's final ReLU (paper's training); False = pre-ReLU
    normalize_features: bool = True    # L2-normalise phi along channels (--norm true)
    patch_size: int = 128              # P, side of the attention-guided crop (pixels)
    temperature: float = 0.0007        # T of the crop->target and target->source softmaxes
    rotate_deg: float = 10.0           # rotation angle ~ U[-rotate_deg, +rotate_deg] degrees
    flip_prob: float = 0.5             # probability of a horizontal flip per sample
    pixel_centre_grid: bool = True     # fix 2: grid ((x+1/2)/S, (y+1/2)/S) (False: index grid x/S, y/S)
    cell_mean_gt: bool = True          # fix 2: GT = mean of the tracked grid over a cell (False: top-left px)
    exact_crop_scale: bool = True      # fix 2: crop affine at scale exactly 1 (False: (W-1) denominators)
    mask_invalid: bool = True          # fix 3: cells with any out-of-image pixel are left out of the loss
    attention_norm: Literal["image", "batch"] = "image"  # fix 4: min-max per image (batch: per BN group)
    crop_centre: Literal["argmax_cell", "first_max", "random"] = "argmax_cell"  # fix 4 (first_max: original
    #                                    rows/cols; random: uniform in [P/2, S - P/2], ignores the attention)
    crop_jitter: float = 0.0           # fix 4 option: uniform +-jitter pixels added to the crop centre
    attention_bn: Literal["eval", "train"] = "eval"  # fix 5: BN mode of the no-grad attention pass(es)
    freeze_bn_stats: bool = False      # fix 5 option: pixel-branch passes do not update BN running stats
    fp32_affinity: bool = True         # fix 6: affinities and softmaxes in fp32 even under autocast
    joint_pair_pass: bool = False      # speed: source and target in one pass (BN statistics over both)
    loss_reference_size: int = 224     # fix 7: coordinates rescaled to this image side in the MSE; 0 = raw px
    centre_loss_weight: float = 0.0    # lambda_c of the UVC concentration term (paper: 0, i.e. not computed)
    objective: Literal["walk", "crop_contrast"] = "walk"  # walk: the paper's cycle MSE; crop_contrast:
    #                                    the offline stage-1 stand-in: each crop cell picks its source cell
    #                                    (`crop_contrast_loss`; the walk MSE is then logged as cycle_walk_mse)
    colour_jitter: float = 0.0         # s: per-sample brightness, contrast, saturation factors of the crop
    #                                    ~ U[1 - s, 1 + s] (`jitter_colour`); 0 = none (paper)

    def __post_init__(self) -> None:
        if self.feature_stage != "block" and self.patch_size % STAGE_STRIDE[self.feature_stage]:
            raise ValueError(f"cycle.patch_size={self.patch_size} must be a multiple of the "
                             f"{self.feature_stage} stride {STAGE_STRIDE[self.feature_stage]}")
        if self.temperature <= 0:
            raise ValueError(f"cycle.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"cycle.flip_prob must lie in [0, 1], got {self.flip_prob}")
        if min(self.crop_jitter, self.rotate_deg, self.loss_reference_size, self.centre_loss_weight) < 0:
            raise ValueError("cycle.crop_jitter, cycle.rotate_deg, cycle.loss_reference_size and "
                             "cycle.centre_loss_weight must be >= 0")
        if not 0.0 <= self.colour_jitter < 1.0:
            raise ValueError(f"cycle.colour_jitter must lie in [0, 1), got {self.colour_jitter}")


@dataclass
class CycleResult:
    """loss: scalar L_cyc; stats: detached 0-dim tensors; vis (when asked), all detached, B samples, m cells:
    src, trg (B,3,S,S) inputs; crop (B,3,P,P) augmented crop; attention (B,S,S) un-augmented attention map
    (nearest-upsampled); crop_corners (B,4,2) crop corners (TL, TR, BR, BL) in source pixels (x, y);
    crop_points (B,m,2) = gt (B,m,2) crop-cell origins in the source; valid (B,m) bool; cycle_pred (B,m,2)
    crop->target->source prediction; direct_pred (B,m,2) crop->source prediction; target_pred (B,m,2)
    crop->target prediction in target pixels; flip (B,) bool; angle_deg (B,)."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor]
    vis: Optional[dict[str, torch.Tensor]] = None
    centre_loss: Optional[torch.Tensor] = None  # unweighted concentration term; None when its weight is 0


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast for `device` (geometry and small fp32 math must not run in bf16/fp16)."""
    return torch.autocast(device_type=device.type, enabled=False)


def self_attention(f4: torch.Tensor, pooled: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cosine of every position of f4 (B, C, h, w) with the pooled vector (default: f4's spatial mean)
    -> (B, h, w), in f4's dtype (the attention of the cycle branch and of the label-free layer score)."""
    g = f4.mean(dim=(2, 3)) if pooled is None else pooled
    return (F.normalize(g, dim=1)[:, :, None, None] * F.normalize(f4, dim=1)).sum(dim=1)


def feature_stride(net: nn.Module, cfg: CycleConfig) -> int:
    """Stride (px) of phi: the patch size of a ViT, else the ResNet stage's."""
    return attention_stride(net) if is_vit(net) else STAGE_STRIDE[cfg.feature_stage]


def attention_stride(net: nn.Module) -> int:
    """Stride (px) of the attention features: a ViT's patch size, a ResNet's layer4 (32)."""
    return vit_patch(net) if is_vit(net) else STAGE_STRIDE["layer4"]


def check_encoder(net: nn.Module, cfg: CycleConfig, what: str) -> None:
    """A `UserError` when the cycle settings do not fit encoder `net` (named `what`)."""
    if is_vit(net):
        n, p = len(net.blocks), attention_stride(net)
        if cfg.feature_stage != "block" or not -n <= cfg.feature_block < n:
            raise UserError(f"{what} is a ViT with blocks 0..{n - 1}: set cycle.feature_stage=block and "
                            f"cycle.feature_block to one of them")
        if cfg.patch_size % p:
            raise UserError(f"cycle.patch_size={cfg.patch_size} must be a multiple of the patch size {p}")
        return
    if cfg.feature_stage == "block":
        raise UserError(f"cycle.feature_stage=block is for ViTs; {what} is a ResNet (use layer1..layer4)")
    layer = getattr(net, cfg.feature_stage)
    if not -len(layer) <= cfg.feature_block < len(layer):
        raise UserError(f"cycle.feature_block={cfg.feature_block} is out of range for "
                        f"{what}.{cfg.feature_stage} ({len(layer)} blocks)")


def _final_features(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The attention's features: a ResNet's layer4 output, a ViT's last-block patch tokens (B, C, h, w)."""
    return vit_block_tokens(net, images, -1) if is_vit(net) else resnet_features(net, images, "layer4")


@torch.no_grad()
def attention_map(net: torchvision.models.ResNet, images: torch.Tensor, norm: str = "image", groups: int = 1,
                  bn: str = "eval") -> torch.Tensor:
    """Self-attention a(h, w) = <g^, F4^(h, w)>, F4 = layer4 output, g its spatial mean; min-max normalised.

    norm "image": per image; "batch": over the whole batch, per split-BN group (samples g, g+k, ... for
    k = `groups`, like SplitBatchNorm). bn "eval": one pass with BN in eval mode; "train": the original's
    two passes in the network's current mode. Returns (B, H/32, W/32) in [0, 1].
    """
    with batchnorm_eval(net, enabled=(bn == "eval")):
        f4 = _final_features(net, images)
        if bn == "train":  # the released code runs a second full pass for the pooled vector
            g = _final_features(net, images).float().mean(dim=(2, 3))
        else:
            g = f4.float().mean(dim=(2, 3))
    with _no_autocast(images.device):
        a = self_attention(f4.float(), g)
        b = a.shape[0]
        if norm == "image":
            lo = a.amin(dim=(1, 2), keepdim=True)
            hi = a.amax(dim=(1, 2), keepdim=True)
        else:
            k = groups if b % groups == 0 else 1
            view = a.reshape(b // k, k, *a.shape[1:])
            lo = view.amin(dim=(0, 2, 3), keepdim=True).expand_as(view).reshape_as(a)
            hi = view.amax(dim=(0, 2, 3), keepdim=True).expand_as(view).reshape_as(a)
        return (a - lo) / (hi - lo).clamp_min(1e-12)


def sample_augmentation(batch: int, cfg: CycleConfig, generator: torch.Generator,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (flip (B,) bool, angle (B,) degrees), drawn from `generator` in that order."""
    gdev = generator.device
    flip = torch.rand(batch, generator=generator, device=gdev) < cfg.flip_prob
    angle = (torch.rand(batch, generator=generator, device=gdev) * 2.0 - 1.0) * cfg.rotate_deg
    return flip.to(device), angle.to(device)


def soft_argmax_walk(f0: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, temperature: float,
                     centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Walk crop -> target -> source. f0 (B, C, m), f1, f2 (B, C, n); centres (n, 2) source cell centres.

    Returns p_hat (B, m, 2) = softmax(f0^T f2 / T) (softmax(f2^T f1 / T) centres), and the two row-softmaxes
    (B, m, n), (B, n, n). The target -> source softmax is applied to the centres first (no m x n product).
    """
    p02 = torch.softmax(torch.bmm(f0.transpose(1, 2), f2) / temperature, dim=2)
    p21 = torch.softmax(torch.bmm(f2.transpose(1, 2), f1) / temperature, dim=2)
    return p02 @ (p21 @ centres), p02, p21


@dataclass
class CropSample:
    """Output of `augment_and_crop` (all detached): crop (B,3,P,P); gt (B,m,2) source px (x, y); valid (B,m);
    flip (B,) bool; angle_deg (B,); theta (B,2,3) augmentation; centre (B,2) crop centre in augmented px;
    crop_theta (B,2,3); attention_up (B,S,S) un-augmented attention upsampled (nearest)."""

    crop: torch.Tensor
    gt: torch.Tensor
    valid: torch.Tensor
    flip: torch.Tensor
    angle_deg: torch.Tensor
    theta: torch.Tensor
    centre: torch.Tensor
    crop_theta: torch.Tensor
    attention_up: torch.Tensor


@torch.no_grad()
def augment_and_crop(src: torch.Tensor, attn: torch.Tensor, cfg: CycleConfig,
                     generator: torch.Generator, stride: Optional[int] = None) -> CropSample:
    """Steps 2-6: tracking grid, flip and rotation of (image, grid, validity, attention), attention-guided
    crop, cell ground truth. src (B, 3, S, S); attn (B, h, w) attention of the un-augmented source; stride
    of phi (default: the ResNet stage's). Computed in fp32 (autocast off)."""
    with _no_autocast(src.device):
        return _augment_and_crop(src, attn, cfg, generator, stride or STAGE_STRIDE[cfg.feature_stage])


def _augment_and_crop(src: torch.Tensor, attn: torch.Tensor, cfg: CycleConfig,
                      generator: torch.Generator, stride: int) -> CropSample:
    b, _, size, _ = src.shape
    patch = cfg.patch_size
    attn_up = F.interpolate(attn[:, None].float(), size=(size, size), mode="nearest")
    flip, angle = sample_augmentation(b, cfg, generator, src.device)
    theta = augmentation_theta(flip, angle)
    grid = tracking_grid(b, size, cfg.pixel_centre_grid, src.device)
    warped = warp(torch.cat([src.detach().float(), grid, attn_up], dim=1), theta, size)
    centre = crop_centres(attn, warped[:, 6], theta, size, generator, cfg.crop_centre, patch, cfg.crop_jitter)
    ctheta = crop_theta(centre, patch, size, cfg.exact_crop_scale)
    cropped = warp(warped[:, :6], ctheta, patch)
    gt, valid = cell_ground_truth(cropped[:, 3:6], stride, size, cfg.cell_mean_gt, cfg.mask_invalid)
    crop = cropped[:, :3]
    if cfg.colour_jitter > 0:
        crop = jitter_colour(crop, cfg.colour_jitter, generator)
    return CropSample(crop=crop.to(src.dtype), gt=gt, valid=valid, flip=flip, angle_deg=angle,
                      theta=theta, centre=centre, crop_theta=ctheta, attention_up=attn_up[:, 0])


def jitter_colour(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample colour jitter of ImageNet-normalised images (B, 3, H, W): brightness, contrast and
    saturation factors ~ U[1 - strength, 1 + strength] (drawn as (B, 3) from `generator`), applied in that
    order to RGB in [0, 1] as torchvision's adjust_* (contrast about the mean grey, saturation about each
    pixel's grey, clamped to [0, 1])."""
    b = images.shape[0]
    factors = (torch.rand(b, 3, generator=generator, device=generator.device) * 2.0 - 1.0) * strength + 1.0
    bright, contrast, sat = (f.view(b, 1, 1, 1) for f in factors.to(images.device).unbind(1))
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    luma = torch.tensor([0.2989, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    x = ((images.float() * std + mean) * bright).clamp(0.0, 1.0)
    grey_mean = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = (grey_mean + contrast * (x - grey_mean)).clamp(0.0, 1.0)
    grey = (x * luma).sum(dim=1, keepdim=True)
    x = (grey + sat * (x - grey)).clamp(0.0, 1.0)
    return (x - mean) / std


def crop_contrast_loss(f0: torch.Tensor, f1: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                       centres: torch.Tensor, temperature: float) -> torch.Tensor:
    """Known-correspondence dense contrast (the offline stage-1 objective): mean over valid crop cells of the
    cross-entropy of softmax(f0^T f1 / T) over the n source cells, the label being the source cell whose
    centre is nearest the cell's ground truth. f0 (B, C, m), f1 (B, C, n) features; gt (B, m, 2) source px;
    valid (B, m) bool; centres (n, 2) source cell centres (px). 0 without a valid cell."""
    logits = torch.bmm(f0.transpose(1, 2), f1) / temperature                  # (B, m, n)
    label = torch.cdist(gt.float(), centres.float()[None].expand(gt.shape[0], -1, -1)).argmin(dim=2)
    ce = F.cross_entropy(logits.flatten(0, 1), label.flatten(), reduction="none").view_as(label)
    weight = valid.to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)


def masked_coordinate_mse(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid cells and both coordinates of (pred - gt)^2; pred, gt (B, m, 2), valid (B, m) bool.

    With no valid cell the loss is 0 (still attached to the graph of `pred`).
    """
    err = (pred - gt).pow(2).mean(dim=2)
    weight = valid.to(err.dtype)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def hard_walk_accuracy(p02: torch.Tensor, p21: torch.Tensor, centres: torch.Tensor, gt: torch.Tensor,
                       valid: torch.Tensor, stride: float) -> torch.Tensor:
    """Share of valid crop cells whose hard-argmax walk (crop -> target -> source, nearest neighbour at each
    step) lands within one stride (Euclidean, px) of the cell's ground-truth source position.

    p02 (B, m, n), p21 (B, n, n) row-softmaxes; centres (n, 2) source cell centres; gt (B, m, 2);
    valid (B, m).
    """
    to_trg = p02.argmax(dim=2)                                   # (B, m)
    to_src = torch.gather(p21.argmax(dim=2), 1, to_trg)          # (B, m)
    hit = ((centres[to_src] - gt).norm(dim=2) <= stride).float()
    weight = valid.float()
    return (hit * weight).sum() / weight.sum().clamp_min(1.0)


def concentration_loss(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid cells and both coordinates of the squared distance of `points` (B, m, 2) to their
    per-sample mean over valid cells (valid (B, m) bool); 0 for a sample without valid cells.

    On the crop's predicted target positions this is the UVC concentration term (a crop should land on a
    compact target region); on the ground truth it is the error of predicting the crop centre for every cell.
    """
    w = valid.to(points.dtype)[..., None]
    mean = (points * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1.0)
    return masked_coordinate_mse(points, mean.expand_as(points), valid)


# ---------------------------------------------------------------- the loss

def _flat_features(net: nn.Module, x: torch.Tensor, cfg: CycleConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    if is_vit(net):
        f = vit_block_tokens(net, x, cfg.feature_block)
    else:
        f = resnet_features(net, x, cfg.feature_stage, cfg.feature_block, cfg.feature_relu)
    if cfg.normalize_features:
        f = F.normalize(f.float() if cfg.fp32_affinity else f, dim=1)
    return f.flatten(2), (f.shape[2], f.shape[3])


def cycle_loss(encoder: torchvision.models.ResNet, src: torch.Tensor, trg: torch.Tensor, cfg: CycleConfig,
               generator: torch.Generator, return_vis: bool = False, bn_groups: int = 1) -> CycleResult:
    """Pixel-level cycle loss (docs/method.md) for a batch of pairs src, trg (B, 3, S, S).

    bn_groups: the encoder's split-BN k, used only by attention_norm="batch" (normalise per BN group).
    """
    if src.shape != trg.shape or src.dim() != 4 or src.shape[2] != src.shape[3]:
        raise UserError(f"cycle branch needs square source/target batches of equal shape, got "
                        f"{tuple(src.shape)} and {tuple(trg.shape)}")
    size = src.shape[-1]
    att = attention_stride(encoder)
    if size % att or cfg.patch_size > size:
        raise UserError(f"cycle branch: image side {size} must be a multiple of {att} and "
                        f">= cycle.patch_size={cfg.patch_size}")
    device = src.device

    # 1. attention (no gradient); 2-6. flip, rotation, attention-guided crop, dense ground truth
    if cfg.crop_centre == "random":  # the attention would not be used: skip its pass (zeros in figures)
        attn = src.new_zeros(src.shape[0], size // att, size // att, dtype=torch.float32)
    else:
        attn = attention_map(encoder, src, cfg.attention_norm, bn_groups, cfg.attention_bn)
    sample = augment_and_crop(src, attn, cfg, generator, feature_stride(encoder, cfg))
    crop_img, gt, valid = sample.crop, sample.gt, sample.valid

    # 7. features with gradient (separate passes, as the released code: BN statistics per pass)
    with frozen_bn_stats(encoder, cfg.freeze_bn_stats):
        f0, _ = _flat_features(encoder, crop_img, cfg)
        if cfg.joint_pair_pass:
            f12, (h1, w1) = _flat_features(encoder, torch.cat([src, trg]), cfg)
            (f1, f2), (h2, w2) = f12.chunk(2), (h1, w1)
        else:
            f1, (h1, w1) = _flat_features(encoder, src, cfg)
            f2, (h2, w2) = _flat_features(encoder, trg, cfg)
    centres_src = cell_centres(h1, w1, size / h1, size / w1, device)

    # 8-10. affinities, cycle affinity, soft-argmax; 11. masked MSE
    amp_off = _no_autocast(device) if cfg.fp32_affinity else contextlib.nullcontext()
    with amp_off:
        if cfg.fp32_affinity:
            f0, f1, f2 = f0.float(), f1.float(), f2.float()
        pred, p02, p21 = soft_argmax_walk(f0, f1, f2, cfg.temperature, centres_src)
        pred = pred.float()
        unit = (cfg.loss_reference_size / size) if cfg.loss_reference_size > 0 else 1.0
        loss = masked_coordinate_mse(pred * unit, gt * unit, valid)
        walk_mse = None
        if cfg.objective == "crop_contrast":
            walk_mse = loss.detach()
            loss = crop_contrast_loss(f0, f1, gt, valid, centres_src, cfg.temperature)
        weight = valid.float()
        count = weight.sum()
        # crop -> target soft-argmax: needed only by the concentration term and the figure
        target_pred = None
        if cfg.centre_loss_weight > 0 or return_vis:
            target_pred = p02.float() @ cell_centres(h2, w2, size / h2, size / w2, device)
        centre_loss = concentration_loss(target_pred * unit, valid) if cfg.centre_loss_weight > 0 else None

    with torch.no_grad():
        dist_px = (pred - gt).norm(dim=2)
        stats = {
            "cycle_valid_fraction": weight.mean(),
            "cycle_max_prob_crop_trg": p02.max(dim=2).values.float().mean(),
            "cycle_max_prob_trg_src": p21.max(dim=2).values.float().mean(),
            "cycle_error_px": (dist_px * weight).sum() / count.clamp_min(1.0),
            # the MSE of predicting each crop's mean ground truth for all its cells (same units as the loss):
            # a walk that has learnt nothing inside the crop cannot beat it
            "cycle_centre_baseline": concentration_loss(gt * unit, valid),
            "cycle_hard_walk_acc": hard_walk_accuracy(p02, p21, centres_src, gt, valid, size / h1),
        }
        if centre_loss is not None:
            stats["loss_centre"] = centre_loss.detach()
        if walk_mse is not None:
            stats["cycle_walk_mse"] = walk_mse
    vis = _figure_tensors(src, trg, sample, f0, f1, pred, target_pred, centres_src, cfg.temperature) \
        if return_vis else None
    return CycleResult(loss=loss, stats=stats, vis=vis, centre_loss=centre_loss)


@torch.no_grad()
def _figure_tensors(src: torch.Tensor, trg: torch.Tensor, sample: CropSample, f0: torch.Tensor,
                    f1: torch.Tensor, pred: torch.Tensor, target_pred: torch.Tensor,
                    centres_src: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """The detached tensors of the pixel-level figure (`CycleResult.vis`), including the direct
    crop -> source prediction and the crop corners in source pixels."""
    size = src.shape[-1]
    p01 = torch.softmax(torch.bmm(f0.detach().float().transpose(1, 2), f1.detach().float())
                        / temperature, dim=2)
    corners = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]], device=src.device, dtype=torch.float32)
    ctheta = sample.crop_theta
    corners_aug = (corners @ ctheta[:, :, :2].transpose(1, 2) + ctheta[:, None, :, 2] + 1.0) * size / 2.0
    return {
        "src": src.detach(), "trg": trg.detach(), "crop": sample.crop, "attention": sample.attention_up,
        "crop_corners": augmented_to_source(corners_aug, sample.theta, size),
        "crop_points": sample.gt, "gt": sample.gt, "valid": sample.valid, "cycle_pred": pred.detach(),
        "direct_pred": p01 @ centres_src, "target_pred": target_pred.detach(),
        "flip": sample.flip, "angle_deg": sample.angle_deg, "crop_centre": sample.centre,
    }
