"""Evaluation inputs: uint8 image -> /255 -> ImageNet-normalise -> bilinear resize (docs/protocol.md, Resize).

Faithful (SCOT) rule: always resize so that the long side is 300, with the ratio computed in float32 as
(1 / max(H, W)) * 300 and the new size floor(H * s) in float32 (299 instead of 300 for 171 long sides in
50..2000). HPF rule: only downscale (s = 1 when max(H, W) <= 300).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from data.transforms import normalize

ResizeRule = Literal["scot", "hpf"]


def resize_ratio(height: int, width: int, rule: ResizeRule = "scot", long_side: int = 300) -> float:
    """The scale s (a float32 value returned as a Python float) applied to the image and its keypoints."""
    longest = max(int(height), int(width))
    if rule == "hpf" and longest <= long_side:
        return 1.0
    if rule not in ("scot", "hpf"):
        raise ValueError(f"unknown resize rule {rule!r}")
    return float(np.float32(1.0 / longest) * np.float32(long_side))


def resized_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """(floor(H * s), floor(W * s)) computed in float32."""
    s = np.float32(ratio)
    return int(math.floor(np.float32(height) * s)), int(math.floor(np.float32(width) * s))


def prepare_image(img: torch.Tensor, rule: ResizeRule = "scot", long_side: int = 300,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, float]:
    """uint8 (3, H, W) RGB -> (normalised float32 (1, 3, h, w) on `device`, scale s).

    The resize runs after normalisation with `F.interpolate(bilinear, align_corners=False,
    antialias=False)`; skipped when the size does not change.
    """
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"expected an image (3, H, W), got {tuple(img.shape)}")
    height, width = img.shape[-2:]
    s = resize_ratio(height, width, rule, long_side)
    x = normalize(img.to(device, non_blocking=True) if device is not None else img).unsqueeze(0)
    size = resized_size(height, width, s)
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return x.contiguous(), s


def scale_keypoints(kps: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keypoints (K, 2) in original pixels -> resized-image pixels (float32 multiply by s)."""
    return kps.float() * torch.tensor(ratio, dtype=torch.float32, device=kps.device)
