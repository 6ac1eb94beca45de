"""Crop geometry of the pixel-level branch (pure functions; pixel i covers [i, i + 1)).

Thetas are `F.affine_grid` matrices (B, 2, 3) mapping output (augmented or cropped) normalised
coordinates to input ones. Points are (x, y) pixels of an S x S image. The tracking grid carries each
source pixel's normalised position and an in-image validity channel through the same warps as the image,
which yields the dense ground truth of every crop cell.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

VALID_EPS = 1e-4  # a warped pixel is in-image iff its bilinear validity >= 1 - VALID_EPS


def tracking_grid(batch: int, size: int, pixel_centre: bool = True, device: Optional[torch.device] = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 3, S, S): channels x/S, y/S of each source pixel (centre (i + 1/2)/S, or index i/S), validity 1."""
    coords = (torch.arange(size, device=device, dtype=dtype) + (0.5 if pixel_centre else 0.0)) / size
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)])
    return grid.unsqueeze(0).expand(batch, -1, -1, -1).contiguous()


def augmentation_theta(flip: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine_grid theta: output (augmented) normalised coords -> input (source) ones.

    The source is flipped (x -> -x), then rotated about the centre: p_src = Flip @ Rot(angle) @ p_out.
    """
    rad = angle_deg.float() * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    sign = 1.0 - 2.0 * flip.float()
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([sign * cos, -sign * sin, zero], dim=1),
                        torch.stack([sin, cos, zero], dim=1)], dim=1)


def crop_theta(centre: torch.Tensor, patch: int, size: int, exact: bool = True) -> torch.Tensor:
    """(B, 2, 3) theta of the axis-aligned P x P crop centred at `centre` (B, 2) (x, y) pixels of an S image.

    exact: crop pixel i samples continuous coordinate c - P/2 + i + 1/2 (scale P/S). Otherwise the released
    code's (S - 1) denominators: scale P/(S-1), translation 2c/(S-1) - 1 (about 224/223 too large).
    """
    denom = float(size) if exact else float(size - 1)
    scale = patch / denom
    t = 2.0 * centre.float() / denom - 1.0
    theta = torch.zeros(centre.shape[0], 2, 3, device=centre.device)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = t
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, out_size: int) -> torch.Tensor:
    """Bilinear resampling with zero padding, align_corners=False: (B, C, H, W) -> (B, C, out, out)."""
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def source_to_augmented(points: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Map (B, N, 2) source pixel coords through the inverse of `augmentation_theta` (rotation+flip)."""
    p = 2.0 * points / size - 1.0
    a = theta[:, :, :2]
    q = torch.linalg.solve(a, (p - theta[:, None, :, 2]).transpose(1, 2)).transpose(1, 2)
    return (q + 1.0) * size / 2.0


def augmented_to_source(points: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Map (B, N, 2) augmented-image pixel coords to source pixel coords (x_src = A x_aug + t, normalised)."""
    p = 2.0 * points / size - 1.0
    q = p @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]
    return (q + 1.0) * size / 2.0


def cell_ground_truth(grid_crop: torch.Tensor, stride: int, size: int, cell_mean: bool = True,
                      mask_invalid: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Cropped tracking grid (B, 3, P, P) -> GT (B, m, 2) source pixels (x, y) and valid (B, m) bool.

    cell_mean: mean of the grid over each stride x stride cell; else the cell's top-left pixel (released).
    A cell is valid iff every pixel's warped validity >= 1 - VALID_EPS (all of it in-image); without
    mask_invalid every cell is valid.
    """
    if cell_mean:
        xy = F.avg_pool2d(grid_crop[:, :2], stride)
    else:
        xy = grid_crop[:, :2, ::stride, ::stride]
    gt = xy.flatten(2).transpose(1, 2) * size
    if mask_invalid:
        valid = (-F.max_pool2d(-grid_crop[:, 2:3], stride)).flatten(1) >= 1.0 - VALID_EPS
    else:
        valid = torch.ones(gt.shape[:2], dtype=torch.bool, device=gt.device)
    return gt, valid


def cell_centres(h: int, w: int, stride_y: float, stride_x: float, device: torch.device) -> torch.Tensor:
    """(h*w, 2) centres (x, y) of the cells of an h x w feature map, row-major: stride * (u + 1/2, v + 1/2)"""
    v, u = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                          torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([(u.flatten() + 0.5) * stride_x, (v.flatten() + 0.5) * stride_y], dim=1)


def crop_centres(attn: torch.Tensor, attn_warped: torch.Tensor, theta: torch.Tensor, size: int,
                 generator: torch.Generator, rule: str = "argmax_cell", patch: int = 128,
                 jitter: float = 0.0) -> torch.Tensor:
    """(B, 2) crop centre (x, y) in augmented-image pixels, clamped to [P/2, S - P/2].

    argmax_cell: centre of the arg-max cell of `attn` (B, h, w), mapped through flip/rotation (+ jitter).
    first_max: released rule on the warped, upsampled map `attn_warped` (B, S, S): first row and, separately,
    first column containing its maximum (integer pixel indices).
    random: uniform in [P/2, S - P/2]^2, independent of the attention (+ jitter).
    """
    b = attn.shape[0]
    half = patch / 2.0
    if rule == "random":
        u = torch.rand(b, 2, generator=generator, device=generator.device).to(attn.device)
        centre = half + u * (size - 2.0 * half)
    elif rule == "first_max":
        hit = attn_warped == attn_warped.amax(dim=(1, 2), keepdim=True)
        row = hit.any(dim=2).int().argmax(dim=1)
        col = hit.any(dim=1).int().argmax(dim=1)
        centre = torch.stack([col, row], dim=1).float()
    else:
        h, w = attn.shape[1:]
        idx = attn.reshape(b, -1).argmax(dim=1)
        cell = torch.stack([(idx % w).float() + 0.5, (idx // w).float() + 0.5], dim=1)
        cell = cell * torch.tensor([size / w, size / h], device=attn.device)
        centre = source_to_augmented(cell[:, None], theta, size)[:, 0]
    if jitter > 0:
        noise = torch.rand(b, 2, generator=generator, device=generator.device).to(centre.device)
        centre = centre + (noise * 2.0 - 1.0) * jitter
    return centre.clamp(half, size - half)
