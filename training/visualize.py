"""Pixel-level figure like the paper's: per sample, source with attention and crop, the augmented crop,
the target with the crop -> target prediction, and the source with ground truth, cycle and direct predictions.

Input: the `vis` dict of `models.cycle.CycleResult` (detached tensors, see its docstring); nothing is
recomputed here. Drawing uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from configs.runtime import atomic_write_bytes
from data.transforms import IMAGENET_MEAN, IMAGENET_STD


def denormalize(img: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (3, H, W) -> uint8 (H, W, 3)."""
    mean = torch.tensor(IMAGENET_MEAN, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=img.device).view(3, 1, 1)
    x = (img.detach().float() * std + mean).clamp(0, 1)
    return (x.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def cycle_figure(vis: dict[str, torch.Tensor], max_samples: int = 4) -> np.ndarray:
    """Render up to `max_samples` rows of the figure; returns an RGB uint8 array (H, W, 3)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = min(max_samples, vis["src"].shape[0])
    fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False)
    for r in range(n):
        valid = vis["valid"][r].bool().cpu().numpy()
        gt = vis["gt"][r].float().cpu().numpy()
        cyc = vis["cycle_pred"][r].float().cpu().numpy()
        direct = vis["direct_pred"][r].float().cpu().numpy()
        to_trg = vis["target_pred"][r].float().cpu().numpy()
        corners = vis["crop_corners"][r].float().cpu().numpy()
        ax = axes[r]
        ax[0].imshow(denormalize(vis["src"][r]))
        ax[0].imshow(vis["attention"][r].float().cpu().numpy(), cmap="jet", alpha=0.4)
        ax[0].plot(*np.vstack([corners, corners[:1]]).T, "w-", lw=1.5)
        ax[0].scatter(gt[valid, 0], gt[valid, 1], s=6, c="lime")
        ax[0].set_title("source: attention, crop, crop points")
        ax[1].imshow(denormalize(vis["crop"][r]))
        ax[1].set_title(f"crop (flip {bool(vis['flip'][r])}, {float(vis['angle_deg'][r]):+.1f} deg)")
        ax[2].imshow(denormalize(vis["trg"][r]))
        ax[2].scatter(to_trg[valid, 0], to_trg[valid, 1], s=6, c="yellow")
        ax[2].set_title("target: crop -> target")
        ax[3].imshow(denormalize(vis["src"][r]))
        ax[3].scatter(gt[valid, 0], gt[valid, 1], s=8, c="lime", label="ground truth")
        ax[3].scatter(cyc[valid, 0], cyc[valid, 1], s=8, c="red", label="cycle")
        ax[3].scatter(direct[valid, 0], direct[valid, 1], s=8, c="cyan", marker="x", label="direct")
        ax[3].set_title("source: GT / cycle / direct")
        if r == 0:
            ax[3].legend(loc="lower right", fontsize=7)
        for a in ax:
            a.set_axis_off()
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 array (H, W, 3) as a PNG atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
