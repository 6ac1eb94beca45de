"""Hyperpixel backbone: id numbering, pre-ReLU taps, jump/receptive-field tables, hyper-images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from configs.runtime import UserError
from models.backbone import HyperpixelBackbone, hyper_image, validate_ids

# docs/protocol.md, Receptive fields: the tables typed in from the doc, not derived
R50_RF = [11, 19, 27, 35, 43, 59, 75, 91, 107, 139, 171, 203, 235, 267, 299, 363, 427]
R50_JUMP = [4, 4, 4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32]
R18_RF = [11, 27, 43, 67, 99, 147, 211, 307, 435]


def _backbone(arch: str, seed: int = 0) -> HyperpixelBackbone:
    torch.manual_seed(seed)
    return HyperpixelBackbone(getattr(torchvision.models, arch)(weights=None, num_classes=128), arch).eval()


def test_tables_match_the_specification():
    r50 = _backbone("resnet50")
    assert r50.n_ids == 17
    assert r50.receptive_fields == R50_RF and r50.jumps == R50_JUMP
    r101 = _backbone("resnet101")
    assert r101.n_ids == 34
    assert r101.receptive_fields[:14] == R50_RF[:14]
    for k in range(7, 24):  # layer3 block k -> id 7 + k
        assert r101.receptive_fields[7 + k] == 107 + 32 * (k - 1) and r101.jumps[7 + k] == 16
    assert r101.receptive_fields[31:] == [843, 907, 971] and r101.jumps[31:] == [32, 32, 32]
    r18 = _backbone("resnet18")
    assert r18.n_ids == 9 and r18.receptive_fields == R18_RF
    assert r18.jumps == [4, 4, 4, 8, 8, 16, 16, 32, 32]
    assert _backbone("resnet34").n_ids == 17


def test_taps_are_pre_relu_block_outputs_and_match_torchvision():
    bb = _backbone("resnet18")
    net = bb.net
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        out = bb.forward_blocks(x, range(bb.n_ids), full=True)
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        l1 = net.layer1(stem)
        l2 = net.layer2(l1)
        l4 = net.layer4(net.layer3(l2))
    torch.testing.assert_close(out.maps[0], stem, rtol=0, atol=0)
    torch.testing.assert_close(F.relu(out.maps[2]), l1, rtol=1e-6, atol=1e-6)  # last block of layer1
    torch.testing.assert_close(F.relu(out.maps[4]), l2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.final, l4, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bb.forward_final(x), l4, rtol=1e-5, atol=1e-5)
    assert (out.maps[2] < 0).any()  # before the ReLU
    assert [out.maps[i].shape[1] for i in range(9)] == bb.channels
    # stops after the largest id when not full
    partial = bb.forward_blocks(x, [1, 3])
    assert set(partial.maps) == {1, 3} and partial.final is None
    torch.testing.assert_close(partial.maps[3], out.maps[3], rtol=0, atol=0)


def test_receptive_field_equals_gradient_support():
    """With positive weights, identity BN and an average pool in place of the max-pool, the gradient of
    one unit w.r.t. the input covers exactly [x*j - r//2, x*j + r//2] (top-left anchored box)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    net.maxpool = nn.AvgPool2d(3, 2, 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.abs_().add_(1e-3)
    bb = HyperpixelBackbone(net).eval()
    size = 192
    for hid in range(6):
        x = torch.rand(1, 1, size, size).expand(1, 3, size, size).clone().add_(0.1).requires_grad_(True)
        fmap = bb.forward_blocks(x, [hid]).maps[hid]
        gy, gx = fmap.shape[-2] // 2, fmap.shape[-1] // 2
        fmap[0, :, gy, gx].sum().backward()
        support = x.grad[0].abs().sum(0) > 0
        ys = support.any(1).nonzero().flatten()
        xs = support.any(0).nonzero().flatten()
        j, r = bb.jumps[hid], bb.receptive_fields[hid]
        assert (int(xs.min()), int(xs.max())) == (gx * j - r // 2, gx * j + r // 2), hid
        assert (int(ys.min()), int(ys.max())) == (gy * j - r // 2, gy * j + r // 2), hid


def test_validate_ids():
    assert validate_ids([13, 2, 15, 12], 17) == (2, 12, 13, 15)
    with pytest.raises(UserError, match="duplicate"):
        validate_ids([2, 2], 17)
    with pytest.raises(UserError, match="0..8"):
        validate_ids([2, 9], 9)
    with pytest.raises(UserError):
        validate_ids([], 9)


def test_hyper_image_upsamples_to_smallest_id_grid():
    bb = _backbone("resnet18")
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        maps = bb.forward_blocks(x, [2, 5, 7]).maps
        hyper = hyper_image(maps, [7, 2, 5])  # order as typed does not matter
    assert hyper.shape == (1, 64 + 256 + 512, *maps[2].shape[-2:])
    torch.testing.assert_close(hyper[:, :64], maps[2], rtol=0, atol=0)
    # align_corners=True keeps the four corner values of every coarser map
    up = hyper[:, 64:320]
    for yy, xx, sy, sx in [(0, 0, 0, 0), (-1, -1, -1, -1), (0, -1, 0, -1)]:
        torch.testing.assert_close(up[0, :, yy, xx], maps[5][0, :, sy, sx], rtol=1e-5, atol=1e-5)
