"""CAM marginals: thresholds, the cumulative multi-scale recipe, the reused scale-1 pass, head checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from configs.runtime import UserError
from models.backbone import HyperpixelBackbone
from models.cam import cam_map, cam_weights, linear_head


def test_weight_thresholds_are_right_inclusive():
    cam = torch.tensor([[0.0, 0.4, 0.41, 0.5, 0.55, 0.6, 0.61, 1.0]])
    centers = torch.stack([torch.arange(8.0), torch.zeros(8)], dim=1)
    w = cam_weights(cam, centers)
    assert w.tolist() == pytest.approx([0.5, 0.5, 0.8, 0.8, 0.9, 0.9, 1.0, 1.0])


def test_weights_sample_the_map_at_box_centres():
    cam = torch.zeros(20, 30)
    cam[8, 12] = 0.7  # centre (x=12, y=8) = grid cell (3, 2) at jump 4
    centers = torch.tensor([[12.0, 8.0], [8.0, 12.0], [0.0, 0.0]])
    assert cam_weights(cam, centers).tolist() == [1.0, 0.5, 0.5]


def _reference_cam(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """Direct re-statement of docs/protocol.md, CAM marginals (torchvision's own forward for the logits)."""
    height, width = x.shape[-2:]
    feats = {}
    net.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("f", o))
    total = torch.zeros(height, width)
    inputs = [x]
    size15 = (int(1.5 * height), int(1.5 * width))
    inputs.append(F.interpolate(x, size15, mode="bilinear", align_corners=True))
    inputs.append(F.interpolate(inputs[1], (2 * height, 2 * width), mode="bilinear", align_corners=True))
    for inp in inputs:
        logits = net(inp)[0]
        fmap = feats["f"][0]
        best = []
        for c in torch.softmax(logits, 0).argsort(descending=True)[:2].tolist():
            cam = (net.fc.weight[c][:, None, None] * fmap).sum(0)
            cam = F.interpolate(cam[None, None], (height, width), mode="bilinear", align_corners=True)[0, 0]
            best.append((cam - cam.min()) / cam.max())
        total += torch.maximum(best[0], best[1])
    return total / (total.max() + 1e-5)


def test_cam_map_matches_reference_and_reuses_scale_one():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=128).eval()
    bb = HyperpixelBackbone(net)
    x = torch.randn(1, 3, 48, 64)
    calls = []

    def forward_final(inp):
        calls.append(tuple(inp.shape[-2:]))
        return bb.forward_final(inp)

    with torch.no_grad():
        final = bb.forward_blocks(x, [2], full=True).final
        got = cam_map(x, bb.fc, final, forward_final)
        ref = _reference_cam(net, x)
    assert calls == [(72, 96), (96, 128)]  # scale 1 reused; 1.5 and 2.0 rerun
    assert got.shape == (48, 64)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert float(got.max()) < 1.0 and float(got.min()) >= 0.0


def test_classmap_needs_a_linear_head():
    assert isinstance(linear_head(nn.Linear(4, 2)), nn.Linear)
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    for head in (mlp, nn.Identity()):
        with pytest.raises(UserError, match="--classmap 0") as err:
            linear_head(head)
        assert "\n" not in str(err.value)
