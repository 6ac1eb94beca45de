"""The GPU part of the suite (`pytest --device cuda -m cuda`, under 2 minutes on one GPU): the CUDA branches
on a real GPU against their CPU twins. Every test here skips without CUDA."""

from __future__ import annotations

import socket

import pytest
import torch
from helpers import bf16_loss_sigma, bf16_step_data, loss_and_grad, real_like_votes, small_model

from bench.lookalike import LookalikePairs
from models.backbone import HyperpixelBackbone
from models.rhm import hough_bins, hough_histogram, regularized_hough_matching
from models.weights import load_resnet
from validation_and_test.evaluate import Matcher, MatchSettings, pair_correct
from validation_and_test.pair_streams import ConcurrentMatcher

pytestmark = pytest.mark.cuda
IDS = (2, 4, 6)


def test_sorted_histogram_on_gpu_equals_index_add_on_cpu(cuda_device):
    votes, src_c, trg_c, (src_size, trg_size) = real_like_votes(3)
    bins, (ny, nx) = hough_bins(src_c, trg_c, src_size, trg_size)
    cpu = hough_histogram(votes, bins, ny * nx, method="index_add")
    gpu = hough_histogram(votes.to(cuda_device), bins.to(cuda_device), ny * nx)  # auto: sorted on CUDA
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=0)
    again = hough_histogram(votes.to(cuda_device), bins.to(cuda_device), ny * nx)
    assert torch.equal(gpu, again)  # deterministic (no atomics)


def test_rhm_on_gpu_equals_cpu_grid_path(cuda_device):
    votes, src_c, trg_c, (src_size, trg_size) = real_like_votes(4)
    cpu = regularized_hough_matching(votes, src_c, trg_c, src_size, trg_size)
    gpu = regularized_hough_matching(votes.to(cuda_device), src_c.to(cuda_device), trg_c.to(cuda_device),
                                     src_size, trg_size)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-12)


@torch.no_grad()
def test_matcher_on_gpu_matches_cpu_pck(cuda_device):
    from configs.runtime import set_faithful_numerics

    set_faithful_numerics(cuda_device, fast=False)
    model, arch, _ = load_resnet("resnet18", "random", seed=0)
    ds = LookalikePairs(3, size=(120, 160), n_kps=6)
    cpu = Matcher(HyperpixelBackbone(model, arch), MatchSettings(long_side=160), "cpu")
    gpu = ConcurrentMatcher(HyperpixelBackbone(load_resnet("resnet18", "random", seed=0)[0], arch),
                            MatchSettings(long_side=160), cuda_device)
    assert gpu.concurrent
    for k in range(len(ds)):
        a, b = cpu.predict_pair(ds[k], IDS), gpu.predict_pair(ds[k], IDS)
        alphas = (0.05, 0.1)
        assert torch.equal(pair_correct(ds[k], a, alphas, "bbox"), pair_correct(ds[k], b, alphas, "bbox"))
        assert (a.pred - b.pred.cpu()).abs().nan_to_num(0).max() < 1.0


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_step_on_gpu_is_finite_and_close_to_fp32(cuda_device, channels_last):
    """As the CPU twin (`test_cuda_paths.py`): loss within 6 sigma of bf16's rounding model, a descent
    direction."""
    data = bf16_step_data(cuda_device)
    smooth = {"moco_temperature": 1.0, "temperature": 0.1, "crop_centre": "random"}
    ref, ref_grad, sigma = bf16_loss_sigma(small_model(**smooth).to(cuda_device), data, device=cuda_device)
    out, grad = loss_and_grad(small_model(**smooth).to(cuda_device), data, torch.bfloat16, channels_last,
                               device=cuda_device)
    assert torch.isfinite(grad).all() and all(torch.isfinite(out[k]) for k in ("loss_moco", "loss_cycle"))
    assert abs(out["loss"].item() - ref["loss"].item()) <= 6 * sigma
    assert (grad.float() - ref_grad).norm() < ref_grad.norm()


def test_nccl_process_group_of_one(cuda_device):
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        t = torch.ones(3, device=cuda_device)
        dist.all_reduce(t)
        assert t.sum().item() == 3.0
    finally:
        dist.destroy_process_group()


def test_tf32_flag_changes_matmul_only_under_fast(cuda_device):
    from configs.runtime import set_faithful_numerics

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(512, 512, generator=g, dtype=torch.float64) for _ in range(2))
    exact = a @ b
    errors = {}
    for fast in (False, True):
        set_faithful_numerics(cuda_device, fast)
        got = (a.float().to(cuda_device) @ b.float().to(cuda_device)).double().cpu()
        errors[fast] = float((got - exact).abs().max())
    set_faithful_numerics(cuda_device, False)
    assert errors[False] < 1e-3 and errors[True] >= errors[False]
