"""Figures of one matched pair: `matches.png` (side by side, a coloured line per keypoint) and `warp.png`
(the target warped into the source frame by the dense best matches, and a 50 % blend with the source).

Both take uint8 images (3, H, W) and the `MatchResult` of `validation_and_test.correspondence`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from validation_and_test.visualize import pyplot, save_figure


def _hwc(img: torch.Tensor) -> np.ndarray:
    return img.permute(1, 2, 0).cpu().numpy()


def dense_flow(dense, src_hw: tuple[int, int]) -> torch.Tensor:
    """Target coordinates (H, W, 2) (x, y, original target pixels) of every source pixel: the displacement
    of its nearest source hyperpixel's best match (piecewise constant, like the keypoint transfer)."""
    h, w = dense.grid
    src = dense.src_points.view(h, w, 2)
    shift = (dense.trg_points * dense.trg_scale - dense.src_points * dense.src_scale).view(h, w, 2)
    xs, ys = src[0, :, 0], src[:, 0, 1]  # cell centres along each axis (original source pixels)
    px = torch.arange(src_hw[1], dtype=torch.float32)
    py = torch.arange(src_hw[0], dtype=torch.float32)
    col = torch.bucketize(px, (xs[1:] + xs[:-1]) / 2) if w > 1 else torch.zeros_like(px, dtype=torch.long)
    row = torch.bucketize(py, (ys[1:] + ys[:-1]) / 2) if h > 1 else torch.zeros_like(py, dtype=torch.long)
    cell = shift[row][:, col]  # (H, W, 2) resized-pixel displacement
    grid_y, grid_x = torch.meshgrid(py, px, indexing="ij")
    resized = torch.stack([grid_x, grid_y], dim=-1) * dense.src_scale + cell
    return resized / dense.trg_scale


def warp_target(trg_img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample the target uint8 (3, Ht, Wt) at flow (H, W, 2) -> uint8 (3, H, W); outside the target: 0."""
    height, width = trg_img.shape[-2:]
    norm = torch.stack([2 * flow[..., 0] / max(width - 1, 1) - 1, 2 * flow[..., 1] / max(height - 1, 1) - 1],
                       dim=-1)
    out = F.grid_sample(trg_img.float().unsqueeze(0), norm.unsqueeze(0), mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def save_matches_figure(path: str | Path, src_img: torch.Tensor, trg_img: torch.Tensor, result,
                        title: str = "") -> Path:
    """Source | target on one canvas, a line of its own colour from each source keypoint to its
    prediction (keypoints with no prediction: a cross on the source)."""
    plt = pyplot()
    gap = 10
    hs, ws = src_img.shape[-2:]
    ht, wt = trg_img.shape[-2:]
    canvas = np.full((max(hs, ht), ws + gap + wt, 3), 255, np.uint8)
    canvas[:hs, :ws] = _hwc(src_img)
    canvas[:ht, ws + gap:] = _hwc(trg_img)
    scale = 10.0 / canvas.shape[1]
    fig, ax = plt.subplots(figsize=(10, max(2.0, canvas.shape[0] * scale) + 0.4), dpi=110)
    ax.imshow(canvas)
    src = result.src_keypoints.float().numpy()
    trg = result.keypoints.float().numpy()
    colours = plt.get_cmap("hsv")
    for k in range(len(src)):
        c = colours(k / max(len(src), 1))
        if np.isfinite(trg[k]).all():
            ax.plot([src[k, 0], trg[k, 0] + ws + gap], [src[k, 1], trg[k, 1]], "-", color=c, lw=1.0,
                    alpha=0.85)
            ax.scatter([src[k, 0], trg[k, 0] + ws + gap], [src[k, 1], trg[k, 1]], s=12, color=c)
        else:
            ax.scatter([src[k, 0]], [src[k, 1]], s=20, marker="x", color=c)
    ax.set_axis_off()
    ax.set_title(title or f"{len(src)} keypoints: source (left) -> predicted target (right)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_warp_figure(path: str | Path, src_img: torch.Tensor, trg_img: torch.Tensor, result) -> Path:
    """Three panels: source, target warped into the source frame, and their 50 % blend."""
    plt = pyplot()
    warped = warp_target(trg_img, dense_flow(result.dense, tuple(src_img.shape[-2:])))
    blend = ((src_img.float() + warped.float()) / 2).round().to(torch.uint8)
    hs, ws = src_img.shape[-2:]
    fig, axes = plt.subplots(1, 3, figsize=(12, max(2.0, 4 * hs / ws) + 0.4), dpi=100)
    for ax, img, name in zip(axes, (src_img, warped, blend),
                             ("source", "target warped to the source", "blend (ghosting = wrong matches)")):
        ax.imshow(_hwc(img))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path)
