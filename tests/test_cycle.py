"""Pixel-level cycle branch: geometry against direct affine maps, exact walks, switches, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import original_cycle_config
from torch import nn

import models.cycle as cycle
from configs.runtime import UserError
from models.backbone import resnet_features
from models.batchnorm import frozen_bn_stats
from models.crop import crop_centres, crop_theta, tracking_grid, warp
from models.cycle import (
    CycleConfig,
    attention_map,
    augment_and_crop,
    concentration_loss,
    cycle_loss,
    masked_coordinate_mse,
    soft_argmax_walk,
)
from models.moco import build_encoder

S, P, STRIDE = 224, 128, 16


def direct_aug_to_src(q: torch.Tensor, flip: bool, angle_deg: float, size: int = S) -> torch.Tensor:
    """Pixel-space augmentation map: augmented point q (..., 2) -> source point p = C + Flip Rot (q - C)."""
    a = math.radians(angle_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    fl = torch.diag(torch.tensor([-1.0 if flip else 1.0, 1.0], dtype=torch.float64))
    c = size / 2.0
    return c + (q.double() - c) @ (fl @ rot).T


def one_hot_attention(batch: int, cells: list[tuple[int, int]], hw: int = 7) -> torch.Tensor:
    attn = torch.zeros(batch, hw, hw)
    for i, (v, u) in enumerate(cells):
        attn[i, v, u] = 1.0
    return attn


def test_tracked_grid_maps_crop_cells_back_under_flip_and_rotation() -> None:
    cfg = CycleConfig(rotate_deg=10.0, flip_prob=0.5)
    cells = [(0, 0), (3, 3), (6, 1), (2, 6), (6, 6), (0, 5)]
    attn = one_hot_attention(len(cells), cells)
    src = torch.zeros(len(cells), 3, S, S)
    gen = torch.Generator().manual_seed(1)
    out = augment_and_crop(src, attn, cfg, gen)
    assert out.crop.shape == (6, 3, P, P) and out.gt.shape == (6, 64, 2) and out.valid.shape == (6, 64)
    assert out.flip.any() and (~out.flip).any() and out.angle_deg.abs().max() <= 10.0

    # crop centre = argmax cell centre of the source carried through flip + rotation (inverse map), clamped
    for i, (v, u) in enumerate(cells):
        want = torch.tensor([32.0 * u + 16, 32.0 * v + 16], dtype=torch.float64)
        got_src = direct_aug_to_src(out.centre[i], bool(out.flip[i]), float(out.angle_deg[i]))
        clamped = out.centre[i].min() <= P / 2 + 1e-4 or out.centre[i].max() >= S - P / 2 - 1e-4
        if not clamped:
            assert torch.allclose(got_src, want, atol=1e-3)

    # every crop pixel's source position, from the direct pixel-space map
    ii = torch.arange(P, dtype=torch.float64) + 0.5
    yy, xx = torch.meshgrid(ii, ii, indexing="ij")
    n_invalid = 0
    for i in range(len(cells)):
        q = torch.stack([xx, yy], dim=-1) + out.centre[i].double() - P / 2
        p = direct_aug_to_src(q, bool(out.flip[i]), float(out.angle_deg[i]))  # (P, P, 2)
        cell_mean = p.reshape(8, STRIDE, 8, STRIDE, 2).mean(dim=(1, 3)).reshape(64, 2)
        valid = out.valid[i]
        assert torch.allclose(out.gt[i][valid].double(), cell_mean[valid], atol=2e-3)
        # soundness: a valid cell lies in the image; completeness: cells 2 px inside the image are valid
        lo = p.reshape(8, STRIDE, 8, STRIDE, 2).amin(dim=(1, 3, 4)).reshape(64)
        hi = p.reshape(8, STRIDE, 8, STRIDE, 2).amax(dim=(1, 3, 4)).reshape(64)
        assert bool(((lo[valid] >= 0) & (hi[valid] <= S)).all())
        assert bool(valid[(lo >= 2) & (hi <= S - 2)].all())
        n_invalid += int((~valid).sum())
    assert n_invalid > 0  # corner crops of rotated images include rotated-out cells


def test_original_grid_is_index_grid_top_left_pixel() -> None:
    cfg = original_cycle_config(exact_crop_scale=True, rotate_deg=10.0, flip_prob=0.5)
    attn = one_hot_attention(4, [(0, 6), (2, 4), (4, 2), (3, 2)])
    src = torch.zeros(4, 3, S, S)
    a = augment_and_crop(src, attn, cfg, torch.Generator().manual_seed(5))
    assert a.valid.all()  # no masking in the original
    n_out = 0
    for i in range(4):
        v, u = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        top_left = torch.stack([u.flatten(), v.flatten()], dim=1) * STRIDE + 0.5 + a.centre[i] - P / 2
        want = direct_aug_to_src(top_left, bool(a.flip[i]), float(a.angle_deg[i])) - 0.5
        inside = ((want >= 1) & (want <= S - 2)).all(dim=1)
        assert torch.allclose(a.gt[i][inside].double(), want[inside], atol=2e-3)
        n_out += int((~inside).sum())
    assert n_out > 0  # rotated-out top-left pixels: the original keeps them with corrupted targets


def test_crop_theta_exact_and_original_scale() -> None:
    grid = tracking_grid(1, S, pixel_centre=True)
    centre = torch.tensor([[100.5, 80.25]])
    crop = warp(grid, crop_theta(centre, P, S, exact=True), P)[0] * S
    i = torch.arange(P) + 0.5
    assert torch.allclose(crop[0, 0], centre[0, 0] - P / 2 + i, atol=1e-3)
    assert torch.allclose(crop[1, :, 0], centre[0, 1] - P / 2 + i, atol=1e-3)
    crop = warp(grid, crop_theta(centre, P, S, exact=False), P)[0] * S
    want = S / (S - 1) * (i - P / 2 + centre[0, 0])
    assert torch.allclose(crop[0, 0], want, atol=1e-3)


def test_first_max_rule_picks_first_row_and_first_column_independently() -> None:
    cfg = original_cycle_config(patch_size=32)
    size = 64
    warped = torch.zeros(2, size, size)
    warped[0, 30, 20] = warped[0, 25, 40] = 1.0  # tie: row 25 (2nd max), column 20 (1st max)
    warped[1, 2, 60] = 0.9                       # near the border: clamped to [16, 48]
    theta = torch.eye(2, 3).expand(2, 2, 3)
    centre = crop_centres(torch.zeros(2, 2, 2), warped, theta, size, torch.Generator(), cfg.crop_centre,
                          cfg.patch_size)
    assert centre.tolist() == [[20.0, 25.0], [48.0, 16.0]]


def positional_image(batch: int, size: int = S) -> torch.Tensor:
    """Channels x/S, y/S of pixel centres, and 1: the image content *is* its source coordinate."""
    return tracking_grid(batch, size, pixel_centre=True).clone()


def fake_positional_features(net, x, stage="layer3", block=-1, relu=True):  # noqa: ARG001
    """Per 16-px cell: Gaussian code of its mean source coordinate against the 14x14 source cell centres."""
    coords = F.avg_pool2d(x[:, :2], STRIDE) * S  # (B, 2, h, w) pixel units
    c = (torch.arange(S // STRIDE, dtype=torch.float32) + 0.5) * STRIDE
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], dim=1)  # (196, 2)
    d2 = ((coords.permute(0, 2, 3, 1)[..., None, :] - centres) ** 2).sum(-1)  # (B, h, w, 196)
    return torch.exp(-d2 / (2 * 3.0 ** 2)).permute(0, 3, 1, 2)


@pytest.fixture
def positional_encoder(monkeypatch: pytest.MonkeyPatch):
    """Features that identify source positions exactly; attention peaks at cell (3, 3)."""
    monkeypatch.setattr(cycle, "resnet_features", fake_positional_features)
    monkeypatch.setattr(cycle, "attention_map",
                        lambda net, images, *a, **k: one_hot_attention(len(images), [(3, 3)] * len(images)))
    return nn.Identity()


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_cycle_loss_zero_for_exact_walk_and_grows_with_displaced_gt(positional_encoder, flip_prob) -> None:
    src = positional_image(2)
    # target: the source's 16-px blocks in a random order -- the walk crop -> target -> source stays exact
    perm = torch.randperm(196, generator=torch.Generator().manual_seed(0))
    blocks = src.reshape(2, 3, 14, 16, 14, 16).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 196, 16, 16)
    trg = blocks[:, :, perm].reshape(2, 3, 14, 14, 16, 16).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, S, S)
    base = dict(rotate_deg=0.0, flip_prob=flip_prob)
    res = cycle_loss(positional_encoder, src, trg, CycleConfig(**base), torch.Generator().manual_seed(1),
                     return_vis=True)
    assert res.loss.item() < 1e-6
    assert res.stats["cycle_valid_fraction"].item() == 1.0
    assert res.stats["cycle_max_prob_crop_trg"].item() > 0.999
    # the crop around cell (3, 3) covers source pixels [48, 176) (mirrored under flip: same square)
    assert res.vis["gt"][..., 0].min().item() == pytest.approx(56.0, abs=1e-3)
    assert torch.allclose(res.vis["direct_pred"], res.vis["gt"], atol=1e-3)
    # released ground truth: index grid, top-left pixel of each cell -> displaced by (-8, -8), or (+7, -8)
    # when flipped (the index of the flipped top-left pixel is S - 1 - x): loss 64 or (49 + 64) / 2
    orig = CycleConfig(**base, pixel_centre_grid=False, cell_mean_gt=False)
    res_o = cycle_loss(positional_encoder, src, trg, orig, torch.Generator().manual_seed(1))
    assert res_o.loss.item() == pytest.approx(56.5 if flip_prob else 64.0, rel=1e-4)


def test_masked_coordinate_mse_grows_with_displacement_and_ignores_invalid() -> None:
    gt = torch.rand(2, 64, 2) * S
    valid = torch.ones(2, 64, dtype=torch.bool)
    losses = [masked_coordinate_mse(gt + torch.tensor([d, 0.0]), gt, valid).item() for d in (0, 2, 8, 16)]
    assert losses == pytest.approx([0.0, 2.0, 32.0, 128.0])
    valid[:, :10] = False
    pred = gt.clone()
    pred[:, :10] += 100.0
    assert masked_coordinate_mse(pred, gt, valid).item() == 0.0
    none = masked_coordinate_mse(pred.requires_grad_(), gt, torch.zeros_like(valid))
    none.backward()
    assert none.item() == 0.0


def test_soft_argmax_walk_one_hot_features() -> None:
    n, m = 16, 4
    f1 = torch.eye(n)[None]
    idx = torch.tensor([3, 0, 15, 7])
    f0 = torch.eye(n)[:, idx][None]
    centres = torch.rand(n, 2) * 100
    pred, p02, p21 = soft_argmax_walk(f0, f1, f1.clone(), 0.0007, centres)
    assert torch.allclose(pred[0], centres[idx], atol=1e-4)
    assert p02.shape == (1, m, n) and p21.shape == (1, n, n)


@pytest.fixture(scope="module")
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return build_encoder("resnet18", dim=16)


def test_resnet_features_stage_block_and_relu(tiny_net) -> None:
    x = torch.randn(2, 3, 64, 64)
    tiny_net.eval()
    post = resnet_features(tiny_net, x, "layer3", -1, relu=True)
    pre = resnet_features(tiny_net, x, "layer3", -1, relu=False)
    assert post.shape == (2, 256, 4, 4)
    assert (pre < 0).any() and torch.allclose(F.relu(pre), post, atol=1e-6)
    first = resnet_features(tiny_net, x, "layer2", 0)
    assert first.shape == (2, 128, 8, 8)
    with pytest.raises(UserError):
        resnet_features(tiny_net, x, "layer3", 5)


def test_attention_map_normalisation_and_bn_mode(tiny_net) -> None:
    tiny_net.train()
    x = torch.randn(4, 3, 64, 64)
    a = attention_map(tiny_net, x, norm="image", bn="eval")
    assert a.shape == (4, 2, 2)
    assert torch.allclose(a.amin(dim=(1, 2)), torch.zeros(4))
    assert torch.allclose(a.amax(dim=(1, 2)), torch.ones(4))
    assert all(m.training for m in tiny_net.modules())  # BN modes restored
    x2 = x.clone()
    x2[1:] = torch.randn(3, 3, 64, 64)
    assert torch.allclose(attention_map(tiny_net, x2, norm="image", bn="eval")[0], a[0], atol=1e-5)
    b = attention_map(tiny_net, x, norm="batch", groups=2, bn="eval")
    for g in range(2):  # groups are samples g, g+2 (as split-BN)
        assert b[g::2].min().item() == pytest.approx(0.0, abs=1e-6)
        assert b[g::2].max().item() == pytest.approx(1.0, abs=1e-6)


def test_frozen_bn_stats_keeps_running_statistics(tiny_net) -> None:
    tiny_net.train()
    before = tiny_net.bn1.running_mean.clone()
    with frozen_bn_stats(tiny_net):
        tiny_net(torch.randn(2, 3, 32, 32))
    assert torch.equal(tiny_net.bn1.running_mean, before)
    tiny_net(torch.randn(2, 3, 32, 32))
    assert not torch.equal(tiny_net.bn1.running_mean, before)


@pytest.mark.parametrize("cfg", [CycleConfig(patch_size=32), original_cycle_config(patch_size=32)],
                         ids=["fixed", "original"])
def test_cycle_loss_real_net_deterministic_batch_one_and_global_rng_untouched(tiny_net, cfg) -> None:
    tiny_net.train()
    src, trg = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    state = torch.random.get_rng_state()
    r1 = cycle_loss(tiny_net, src, trg, cfg, torch.Generator().manual_seed(7), return_vis=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)
    r2 = cycle_loss(tiny_net, src, trg, cfg, torch.Generator().manual_seed(7), return_vis=True)
    assert r1.loss.dim() == 0 and torch.isfinite(r1.loss)
    assert r1.loss.item() == pytest.approx(r2.loss.item(), rel=1e-5)
    assert torch.equal(r1.vis["flip"], r2.vis["flip"])
    assert torch.equal(r1.vis["angle_deg"], r2.vis["angle_deg"])
    assert r1.vis["cycle_pred"].shape == (1, 4, 2) and r1.vis["attention"].shape == (1, 64, 64)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        CycleConfig(patch_size=100)
    with pytest.raises(ValueError):
        CycleConfig(temperature=0.0)


def test_joint_pair_pass_equals_separate_passes_in_eval_mode(tiny_net) -> None:
    tiny_net.eval()  # eval-mode BN: one pass over [src; trg] must give the separate passes' features
    src, trg = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    losses = [cycle_loss(tiny_net, src, trg, CycleConfig(patch_size=32, joint_pair_pass=joint),
                         torch.Generator().manual_seed(2)).loss.item() for joint in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    tiny_net.train()


def test_affinities_and_loss_stay_fp32_under_autocast(tiny_net) -> None:
    tiny_net.train()
    src, trg = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = cycle_loss(tiny_net, src, trg, CycleConfig(patch_size=32), torch.Generator().manual_seed(0))
    assert res.loss.dtype == torch.float32 and torch.isfinite(res.loss)


def test_random_crop_centres_are_uniform_in_range_and_ignore_the_attention() -> None:
    attn = one_hot_attention(400, [(3, 3)] * 400)
    theta = torch.eye(2, 3).expand(400, 2, 3)
    c = crop_centres(attn, torch.zeros(400, S, S), theta, S, torch.Generator().manual_seed(0),
                         "random", P)
    half = P / 2
    assert c.min() >= half and c.max() <= S - half
    assert abs(c.mean().item() - S / 2) < 4.0 and c.std().item() > 20.0  # uniform on [64, 160]: std 27.7
    again = crop_centres(attn, torch.zeros(400, S, S), theta, S, torch.Generator().manual_seed(0),
                         "random", P)
    assert torch.equal(c, again)


def test_concentration_loss_hand_worked_masking_and_gradcheck() -> None:
    pts = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [100.0, 100.0]]])
    valid = torch.tensor([[True, True, False]])
    # valid points (0,0), (2,0): mean (1,0); squared distances per coordinate: x 1, 1; y 0, 0 -> mean 0.5
    assert concentration_loss(pts, valid).item() == pytest.approx(0.5)
    assert concentration_loss(pts, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0
    x = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, True], [True] * 5])
    assert torch.autograd.gradcheck(lambda t: concentration_loss(t, mask), (x,))


def test_centre_baseline_equals_the_spread_of_the_ground_truth(positional_encoder) -> None:
    src = positional_image(1)
    res = cycle_loss(positional_encoder, src, src, CycleConfig(rotate_deg=0.0, flip_prob=0.0),
                     torch.Generator().manual_seed(0), return_vis=True)
    gt = res.vis["gt"].double()[0]  # 8 x 8 cells, 16 px apart: variance per axis = 16^2 (64 - 1) / 12
    want = ((gt - gt.mean(dim=0)) ** 2).mean().item()
    assert want == pytest.approx(16 ** 2 * 63 / 12, rel=1e-4)
    assert res.stats["cycle_centre_baseline"].item() == pytest.approx(want, rel=1e-4)


def test_centre_loss_weight_zero_is_bit_identical_and_positive_weight_adds_its_gradient(tiny_net) -> None:
    from models.contrastive import ContrastiveCorrespondence
    from models.moco import MoCoConfig

    def grads(cycle_cfg: CycleConfig):
        torch.manual_seed(0)
        model = ContrastiveCorrespondence(MoCoConfig(arch="resnet18", queue_size=8), cycle_cfg,
                                          torch.Generator().manual_seed(0)).eval()
        g = torch.Generator().manual_seed(3)
        src, trg = torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)
        out = model(None, None, src, trg, torch.Generator().manual_seed(1))
        out["loss"].backward()
        return out, [p.grad.clone() for p in model.encoder_q.layer1.parameters()]

    base = dict(patch_size=32, loss_weight=1.0, temperature=0.5)  # soft walks: gradients flow
    out0, g0 = grads(CycleConfig(**base))
    out_zero, g_zero = grads(CycleConfig(**base, centre_loss_weight=0.0))
    assert "loss_centre" not in out_zero and torch.equal(out0["loss"], out_zero["loss"])
    assert all(torch.equal(a, b) for a, b in zip(g0, g_zero))
    out_c, g_c = grads(CycleConfig(**base, centre_loss_weight=0.5))
    assert out_c["loss"].item() == pytest.approx(out0["loss"].item() + 0.5 * out_c["loss_centre"].item(),
                                                 rel=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(g0, g_c))
