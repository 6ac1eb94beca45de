"""The offline stage-1 objective: crop contrast against a brute-force loop, the crop's colour jitter against
torchvision, and the switch leaving the paper's walk untouched."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as tvf

from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from models.cycle import CycleConfig, crop_contrast_loss, cycle_loss, jitter_colour
from models.moco import build_encoder

EPS32 = 2.0 ** -24


def test_crop_contrast_loss_equals_a_brute_force_loop() -> None:
    g = torch.Generator().manual_seed(0)
    b, c, m, side, stride, temp = 2, 5, 6, 4, 8.0, 0.1
    n = side * side
    f0 = torch.randn(b, c, m, generator=g, dtype=torch.float64)
    f1 = torch.randn(b, c, n, generator=g, dtype=torch.float64)
    cells = [(u, v) for v in range(side) for u in range(side)]
    centres = (torch.tensor(cells, dtype=torch.float64) + 0.5) * stride
    gt = torch.rand(b, m, 2, generator=g, dtype=torch.float64) * side * stride
    valid = torch.rand(b, m, generator=g) < 0.7
    valid[0, 0] = True
    total, count = 0.0, 0
    for i in range(b):
        for j in range(m):
            if not valid[i, j]:
                continue
            label = min(range(n), key=lambda k: float(((centres[k] - gt[i, j]) ** 2).sum()))
            logits = [float(f0[i, :, j] @ f1[i, :, k]) / temp for k in range(n)]
            top = max(logits)
            total += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[label]
            count += 1
    loss = crop_contrast_loss(f0, f1, gt, valid, centres, temp)
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    assert crop_contrast_loss(f0, f1, gt, torch.zeros_like(valid), centres, temp).item() == 0.0


def test_colour_jitter_equals_torchvision_adjust_functions() -> None:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = torch.rand(3, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    out = jitter_colour((rgb - mean) / std, 0.4, torch.Generator().manual_seed(2)) * std + mean
    factors = (torch.rand(3, 3, generator=torch.Generator().manual_seed(2)) * 2.0 - 1.0) * 0.4 + 1.0
    assert ((factors - 1).abs() <= 0.4).all() and (factors - 1).abs().max() > 0.1
    for i in range(3):
        want = tvf.adjust_brightness(rgb[i], float(factors[i, 0]))
        want = tvf.adjust_contrast(want, float(factors[i, 1]))
        want = tvf.adjust_saturation(want, float(factors[i, 2]))
        # float32, values in [0, 1]: a few roundings per op, each <= 2^-24, then x std / std around the ops
        assert torch.allclose(out[i], want, rtol=0, atol=64 * EPS32 / min(IMAGENET_STD))
    assert not torch.allclose(out, rgb, atol=0.01)


@pytest.fixture
def net_and_pair():
    """A seeded small-head ResNet-18 in training mode and a random 64-px pair batch of 2."""
    torch.manual_seed(0)
    return build_encoder("resnet18", dim=16).train(), torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)


def test_crop_contrast_switch_keeps_the_walk_and_logs_its_mse(net_and_pair) -> None:
    net, src, trg = net_and_pair
    walk = cycle_loss(net, src, trg, CycleConfig(patch_size=32, temperature=0.1),
                      torch.Generator().manual_seed(3))
    con = cycle_loss(net, src, trg, CycleConfig(patch_size=32, objective="crop_contrast", temperature=0.1),
                     torch.Generator().manual_seed(3))
    assert "cycle_walk_mse" not in walk.stats
    assert torch.equal(con.stats["cycle_walk_mse"], walk.loss.detach())
    # unit features: every logit lies in [-1/T, 1/T], so the CE over the 8x8 source cells is < ln 64 + 2/T
    assert con.loss.requires_grad and 0.0 < con.loss.item() < math.log(64) + 2 / 0.1
    con.loss.backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0


def test_colour_jitter_draws_after_the_crop_and_changes_only_the_crop(net_and_pair) -> None:
    net, src, trg = net_and_pair
    plain = cycle_loss(net, src, trg, CycleConfig(patch_size=32), torch.Generator().manual_seed(3),
                       return_vis=True)
    jit = cycle_loss(net, src, trg, CycleConfig(patch_size=32, colour_jitter=0.4),
                     torch.Generator().manual_seed(3), return_vis=True)
    for key in ("gt", "valid", "angle_deg", "flip", "crop_corners"):
        assert torch.equal(plain.vis[key], jit.vis[key]), key
    assert not torch.allclose(plain.vis["crop"], jit.vis["crop"])
    with pytest.raises(ValueError, match="colour_jitter"):
        CycleConfig(colour_jitter=1.0)
