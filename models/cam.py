"""Class-activation maps -> OT marginals (`classmap 1`; docs/protocol.md, CAM marginals).

Per image: at cumulative input scales 1.0, 1.5, 2.0 (the 2.0 input is interpolated from the 1.5 input,
bilinear align_corners=True) take layer4's post-ReLU map and the linear `fc`; top-2 classes of
softmax(fc(avgpool)); CAM_c = w_c . F upsampled (align_corners=True) to the image size, normalised as
(CAM - min) / max; pixel-wise max over the two classes; sum over scales; divide by (max + 1e-5).
The scale-1 pass is the hyperpixel pass: pass its layer4 map in as `final_scale1`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from configs.runtime import UserError

CAM_SCALES: tuple[float, ...] = (1.0, 1.5, 2.0)
WEIGHT_EDGES = (0.4, 0.5, 0.6)
WEIGHT_VALUES = (0.5, 0.8, 0.9, 1.0)


def linear_head(fc: nn.Module) -> nn.Linear:
    """The single linear `fc` CAM needs; anything else is a `UserError` suggesting --classmap 0."""
    if isinstance(fc, nn.Linear):
        return fc
    kind = "no head" if isinstance(fc, nn.Identity) else f"a {type(fc).__name__} head (e.g. MoCo v2's MLP)"
    raise UserError(f"--classmap 1 needs a single linear fc on layer4 but the model has {kind}; "
                    f"use --classmap 0")


def _cam_one_scale(final: torch.Tensor, fc: nn.Linear, size: tuple[int, int]) -> torch.Tensor:
    """final (1, C, h, w) -> normalised top-2 max CAM (H, W)."""
    logits = fc(final.mean(dim=(2, 3)))  # (1, K)
    top = torch.softmax(logits, dim=1).topk(2, dim=1).indices[0]  # (2,)
    cams = torch.einsum("kc,chw->khw", fc.weight[top], final[0])  # (2, h, w)
    cams = F.interpolate(cams.unsqueeze(0), size=size, mode="bilinear", align_corners=True)[0]
    flat = cams.flatten(1)
    cams = (cams - flat.min(dim=1).values.view(2, 1, 1)) / flat.max(dim=1).values.view(2, 1, 1)
    return cams.max(dim=0).values


def cam_map(image: torch.Tensor, fc: nn.Module, final_scale1: torch.Tensor,
            forward_final: Callable[[torch.Tensor], torch.Tensor],
            scales: Sequence[float] = CAM_SCALES) -> torch.Tensor:
    """Multi-scale CAM of one normalised, resized image (1, 3, H, W) -> (H, W) in [0, 1).

    `final_scale1`: layer4 post-ReLU output of `image` (reused); `forward_final(x)` reruns the network.
    Scales are cumulative: each rescaled input is interpolated from the previous one.
    """
    head = linear_head(fc)
    height, width = image.shape[-2:]
    total = torch.zeros(height, width, dtype=torch.float32, device=image.device)
    current = image
    for s in scales:
        if s == 1.0:
            final = final_scale1
        else:
            current = F.interpolate(current, size=(int(height * s), int(width * s)), mode="bilinear",
                                    align_corners=True)
            final = forward_final(current)
        total = total + _cam_one_scale(final, head, (height, width))
    return total / (total.max() + 1e-5)


def cam_weights(cam: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Sample the CAM (H, W) at hyperpixel centres (N, 2) (x, y, px) -> weights (N,) in {0.5, 0.8, 0.9, 1}."""
    height, width = cam.shape
    xs = centers[:, 0].round().long().clamp(0, width - 1)
    ys = centers[:, 1].round().long().clamp(0, height - 1)
    m = cam[ys, xs]
    edges = torch.tensor(WEIGHT_EDGES, dtype=m.dtype, device=m.device)
    values = torch.tensor(WEIGHT_VALUES, dtype=torch.float32, device=m.device)
    return values[torch.bucketize(m, edges, right=False)]


def marginal(weights: torch.Tensor) -> torch.Tensor:
    """Normalise weights (N,) to a probability vector."""
    return weights / weights.sum()
