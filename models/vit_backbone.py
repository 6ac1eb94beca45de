"""Hyperpixels of a timm Vision Transformer (DINO, DINOv2 with or without registers, CLIP, MAE, ...).

Ids are block indices 0..depth-1; the map of id i is the patch tokens of block i's output (no final norm),
as a (C, H'/p, W'/p) grid; CLS and register tokens (timm's `num_prefix_tokens`) are dropped.
Input rule (docs/protocol.md, ViT hyperpixels): the resized image (h, w) is resized again, bilinear, to
H' = p * max(1, round(h / p)), W' = p * max(1, round(w / p)) (p = patch size) and the position
embeddings are interpolated to that grid (timm `dynamic_img_size=True`). Geometry in the (h, w) frame:
the stride is h / gh down and w / gw across (gh, gw: the token grid; p times the resize factor, within
p / 2 pixels of p per side), a token's centre is the centre of its patch mapped back,
((x + 0.5) * w / gw - 0.5, (y + 0.5) * h / gh - 0.5), and its box is the patch itself (half a stride
either side of the centre), so keypoint transfer moves a keypoint to the same place in the matched patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import BlockMaps
from models.timm_models import is_vit, vit_patch


def vit_input_size(height: int, width: int, patch: int) -> tuple[int, int]:
    """(H', W'): each side rounded to the nearest multiple of the patch size (at least one patch)."""
    return patch * max(1, round(height / patch)), patch * max(1, round(width / patch))


def token_boxes(grid: tuple[int, int], size: tuple[int, int], device: torch.device | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (N, 4) x1, y1, x2, y2 and centres (N, 2) of a (gh, gw) token grid over an image of size
    (W, H) px, row-major (module docstring)."""
    gh, gw = grid
    width, height = size
    jx, jy = width / gw, height / gh
    ys, xs = torch.meshgrid(torch.arange(gh, device=device, dtype=torch.float64),
                            torch.arange(gw, device=device, dtype=torch.float64), indexing="ij")
    centers = torch.stack([(xs.reshape(-1) + 0.5) * jx - 0.5, (ys.reshape(-1) + 0.5) * jy - 0.5], dim=1)
    half = torch.tensor([jx / 2, jy / 2], dtype=torch.float64, device=device)
    boxes = torch.cat([centers - half, centers + half], dim=1)
    return boxes.float(), centers.float()


def vit_block_tokens(net: nn.Module, x: torch.Tensor, block: int) -> torch.Tensor:
    """Patch tokens (B, C, H/p, W/p) of block `block` (negative: from the end) of timm ViT `net` for images
    x (B, 3, H, W) whose sides are multiples of the patch size p (the training crops)."""
    return block_token_grids(net, x, [block % len(net.blocks)])[0]


def block_token_grids(net: nn.Module, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
    """Patch-token grids (B, C, H/p, W/p) of blocks `indices` (before the final norm; no prefix tokens)."""
    return net.forward_intermediates(x, indices=list(indices), norm=False, stop_early=True, output_fmt="NCHW",
                                     intermediates_only=True)


class ViTHyperpixels(nn.Module):
    """Wrap a timm `VisionTransformer` built with `dynamic_img_size=True` (kept as `.net`)."""

    has_classifier = False  # no spatial map under a linear head: SCOT's CAM falls back to uniform marginals

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        if not is_vit(net):
            raise TypeError(f"{name} is not a timm VisionTransformer")
        self.net = net
        self.name = self.id_family = name
        self.patch = vit_patch(net)
        self.n_ids = len(net.blocks)
        self.jumps = [self.patch] * self.n_ids
        self.receptive_fields = [self.patch] * self.n_ids  # the box of a token: its patch
        self.input_rule = (f"bilinear resize to the nearest multiple of the patch {self.patch} per side; "
                           f"position embeddings interpolated (timm dynamic_img_size); patch tokens of "
                           f"each block, prefix tokens ({int(net.num_prefix_tokens)}) dropped")

    @property
    def fc(self) -> nn.Module:
        return nn.Identity()

    def forward_blocks(self, x: torch.Tensor, ids: Sequence[int], full: bool = False) -> BlockMaps:
        """Patch-token grids of blocks `ids` for normalised images x (B, 3, h, w): maps[id] (B, C, gh, gw)."""
        ids = sorted(int(i) for i in ids)
        size = vit_input_size(x.shape[-2], x.shape[-1], self.patch)
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        return BlockMaps(maps=dict(zip(ids, block_token_grids(self.net, x, ids))), final=None)

    def forward_final(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a ViT has no spatial final map for CAM")

    def boxes(self, idx: int, grid: tuple[int, int], size: tuple[int, int],
              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token boxes and centres in the frame of the image handed to `forward_blocks` (`token_boxes`)."""
        return token_boxes(grid, size, device)
