"""Receptive-field boxes of hyperpixels and keypoint transfer (docs/protocol.md, Receptive fields and
Keypoint transfer).

SCOT/HPF conventions are kept to the last digit (grid-anchored boxes without a half-stride offset, inclusive
containment, row-wise arg-max, float32 sums over a dense (K, Ns) layout, NaN when no box contains a
keypoint); the ledger is in docs/protocol.md, Kept and changed (Keypoint transfer).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["receptive_field_boxes", "keypoint_neighbours", "transfer_keypoints"]


def receptive_field_boxes(grid_h: int, grid_w: int, jump: int, rf: int,
                          device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Boxes of a grid_h x grid_w hyperpixel grid with stride `jump` and receptive field `rf` (pixels).

    Returns (boxes float32 (N, 4) as x1, y1, x2, y2; centres float32 (N, 2) as x, y), N = grid_h * grid_w,
    row-major (p = y * grid_w + x); centre (x * jump, y * jump), box = centre -/+ floor(rf / 2).
    """
    ys, xs = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device),
                            indexing="ij")
    centers = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).to(torch.float32) * jump
    half = rf // 2
    boxes = torch.cat([centers - half, centers + half], dim=1)
    return boxes, centers


def keypoint_neighbours(boxes: Tensor, kps: Tensor) -> Tensor:
    """Inclusive containment mask (K, N): kps (K, 2) inside boxes (N, 4)."""
    x = kps[:, 0, None]
    y = kps[:, 1, None]
    return (x >= boxes[None, :, 0]) & (y >= boxes[None, :, 1]) & (x <= boxes[None, :, 2]) & (
        y <= boxes[None, :, 3])


def transfer_keypoints(confidence: Tensor, src_boxes: Tensor, trg_boxes: Tensor,
                       src_kps: Tensor) -> tuple[Tensor, Tensor]:
    """Transfer source keypoints to the target with the row-wise arg-max of `confidence`.

    confidence (Ns, Nt); boxes (Ns, 4), (Nt, 4); src_kps (K, 2) in resized source pixels.
    Returns (pred float32 (K, 2) in resized target pixels, NaN where no source box contains the
    keypoint; n_neighbours int64 (K,)).
    """
    best = confidence.max(dim=1).indices  # (Ns,) j*(i)
    return transfer_from_best(best, keypoint_neighbours(src_boxes, src_kps), src_boxes, trg_boxes, src_kps)


def transfer_from_best(best: Tensor, inside: Tensor, src_boxes: Tensor, trg_boxes: Tensor,
                       src_kps: Tensor) -> tuple[Tensor, Tensor]:
    """`transfer_keypoints` from the arg-max target `best` (Ns,) of every source box and the containment
    mask `inside` (K, Ns) of `keypoint_neighbours` (for callers that also need them)."""
    n_neighbours = inside.sum(dim=1)
    src_tl = src_boxes[:, :2]
    trg_tl = trg_boxes[best, :2]  # (Ns, 2)
    # original order: (target corner) + (keypoint - source corner), zero for non-neighbours, sum over Ns
    terms = trg_tl.unsqueeze(0) + (src_kps.unsqueeze(1) - src_tl.unsqueeze(0))  # (K, Ns, 2)
    terms.mul_(inside.unsqueeze(2).to(terms.dtype))
    pred = terms.sum(dim=1) / n_neighbours.unsqueeze(1).to(terms.dtype)
    return pred, n_neighbours
