"""PNG figures of evaluated pairs: source keypoints, true and predicted target keypoints (`--vis-dir`)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from configs.runtime import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as a PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80]


def pair_figure_path(vis_dir: str | Path, index: int, src_name: str, trg_name: str) -> Path:
    stem = f"{index:06d}_{_safe(Path(src_name).stem)}-{_safe(Path(trg_name).stem)}.png"
    return Path(vis_dir) / stem


def save_pair_figure(path: str | Path, src_img: torch.Tensor, trg_img: torch.Tensor, src_kps: torch.Tensor,
                     trg_kps: torch.Tensor, pred_kps: torch.Tensor, correct: torch.Tensor,
                     title: str = "") -> Path:
    """Source | target side by side, original resolution.

    src_img/trg_img uint8 (3, H, W); keypoints (K, 2) in original pixels; pred (K, 2) in original target
    pixels (NaN allowed); correct bool (K,) colours the predictions (green correct, red wrong) and the
    error segments to the true target keypoints (circles).
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    colours = plt.get_cmap("tab10")
    for ax, img in zip(axes, (src_img, trg_img)):
        ax.imshow(img.permute(1, 2, 0).cpu().numpy())
        ax.set_axis_off()
    src = src_kps.cpu().float()
    gt = trg_kps.cpu().float()
    pred = pred_kps.cpu().float()
    ok = correct.cpu().bool()
    for k in range(src.shape[0]):
        c = colours(k % 10)
        axes[0].scatter(src[k, 0], src[k, 1], s=36, color=c, edgecolors="white", linewidths=0.8)
        axes[1].scatter(gt[k, 0], gt[k, 1], s=36, color=c, edgecolors="white", linewidths=0.8)
        if torch.isfinite(pred[k]).all():
            mark = "limegreen" if ok[k] else "red"
            axes[1].plot([gt[k, 0], pred[k, 0]], [gt[k, 1], pred[k, 1]], color=mark, linewidth=1.2)
            axes[1].scatter(pred[k, 0], pred[k, 1], s=40, marker="x", color=mark, linewidths=1.8)
    axes[0].set_title("source", fontsize=9)
    axes[1].set_title("target: o true, x predicted (green = correct)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def pair_visualiser(vis_dir: str | Path, alphas: Sequence[float], vis_max: int, world_size: int = 1
                    ) -> Callable[[dict[str, Any], Any, torch.Tensor], None]:
    """`on_pair(sample, prediction, correct)` for `evaluate`: a figure per pair (at most `vis_max` over all
    ranks), coloured by correctness at the alpha closest to 0.1."""
    headline = min(range(len(alphas)), key=lambda a: abs(alphas[a] - 0.1))
    budget = {"left": -(-vis_max // world_size)}

    def on_pair(sample: dict[str, Any], prediction: Any, correct: torch.Tensor) -> None:
        if budget["left"] <= 0:
            return
        budget["left"] -= 1
        pred = prediction.pred.cpu() / prediction.trg_scale  # resized -> original target pixels
        ok = correct[headline]
        path = pair_figure_path(vis_dir, int(sample["index"]), sample["src_name"], sample["trg_name"])
        save_pair_figure(path, sample["src_img"], sample["trg_img"], sample["src_kps"], sample["trg_kps"],
                         pred, ok, title=f"{sample.get('class_name', '')} pair {sample['index']}: "
                                         f"PCK@{alphas[headline]:g} = {100 * float(ok.float().mean()):.1f}")

    return on_pair
