"""Evaluation inputs: the faithful float32 resize rule, the HPF rule, normalise-then-resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from validation_and_test.preprocess import prepare_image, resize_ratio, resized_size, scale_keypoints


def test_float32_ratio_gives_299_for_171_long_sides():
    short = [m for m in range(50, 2001) if max(resized_size(m, m, resize_ratio(m, m))) != 300]
    assert len(short) == 171 and short[:5] == [62, 71, 83, 107, 109]
    assert all(max(resized_size(m, m, resize_ratio(m, m))) == 299 for m in short)
    assert resized_size(375, 500, resize_ratio(375, 500)) == (225, 300)
    assert resized_size(62, 40, resize_ratio(62, 40)) == (299, 193)  # float32: 62 * (300/62) < 300
    # the ratio is float32(1 / L) * 300 in float32, not 300 / L in float64
    assert resize_ratio(62, 10) == float(np.float32(np.float32(1 / 62) * np.float32(300)))
    assert resize_ratio(62, 10) != 300 / 62


def test_hpf_rule_only_downscales():
    assert resize_ratio(200, 150, "hpf") == 1.0 and resize_ratio(300, 300, "hpf") == 1.0
    assert resize_ratio(375, 500, "hpf") == resize_ratio(375, 500, "scot")
    assert resize_ratio(200, 150, "scot") == pytest.approx(1.5)


def test_prepare_image_normalises_then_resizes_without_antialias():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 50, 64), generator=g, dtype=torch.uint8)
    x, s = prepare_image(img)
    assert x.shape == (1, 3, 234, 300) and x.dtype == torch.float32 and s == resize_ratio(50, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = F.interpolate((img.float().unsqueeze(0) / 255 - mean) / std, size=(234, 300), mode="bilinear",
                        align_corners=False)
    torch.testing.assert_close(x, ref, rtol=1e-6, atol=1e-6)
    big = torch.randint(0, 256, (3, 400, 600), generator=g, dtype=torch.uint8)
    y, _ = prepare_image(big)
    anti = F.interpolate((big.float().unsqueeze(0) / 255 - mean) / std, size=(200, 300), mode="bilinear",
                         align_corners=False, antialias=True)
    assert y.shape == anti.shape and not torch.allclose(y, anti, atol=1e-3)  # no antialiasing
    same, s1 = prepare_image(torch.zeros(3, 225, 300, dtype=torch.uint8))
    assert s1 == 1.0 and same.shape == (1, 3, 225, 300)


def test_keypoints_scale_in_float32():
    kps = torch.tensor([[10.0, 20.0], [499.0, 374.0]])
    s = resize_ratio(375, 500)
    out = scale_keypoints(kps, s)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, kps * torch.tensor(s, dtype=torch.float32), rtol=0, atol=0)
