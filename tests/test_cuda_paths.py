"""Every CUDA-only branch, forced on the CPU and compared with its CPU twin (no GPU needed).

- sorted + segment-sum Hough histogram vs `index_add_`; the indexed RHM path vs the grid path;
  `rhm.CUDA_PATHS_ON_CPU` switches "auto" to the CUDA branches;
- a bf16 autocast step on the CPU vs float32; TF32 flags under `--fast`; nccl initialisation (mocked);
- a static review: no `.cuda()`, `cudnn.benchmark` only in training.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import (
    REPO,
    bf16_loss_sigma,
    bf16_step_data,
    loss_and_grad,
    perturb_like_bf16,
    real_like_votes,
    small_model,
)

import models.rhm as rhm
from configs.runtime import init_distributed, native_bf16, set_faithful_numerics
from models.rhm import hough_bins, hough_histogram, regularized_hough_matching

CODE_DIRS = ("models", "training", "validation_and_test", "configs", "data", "bench", "scripts")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sorted_histogram_equals_index_add_on_random_votes(seed):
    g = torch.Generator().manual_seed(seed)
    n_bins = 257
    bins = torch.randint(0, n_bins - 7, (61, 53), generator=g)  # the top bins stay empty
    votes = torch.rand(61, 53, generator=g) ** 3
    a = hough_histogram(votes, bins, n_bins, method="index_add")
    b = hough_histogram(votes, bins, n_bins, method="sorted")
    assert torch.equal(a, b)
    assert a[-7:].abs().sum() == 0 and a.sum() > 0


def test_sorted_histogram_equals_index_add_on_real_like_votes():
    votes, src_c, trg_c, (src_size, trg_size) = real_like_votes(3)
    bins, (ny, nx) = hough_bins(src_c, trg_c, src_size, trg_size)
    a = hough_histogram(votes, bins, ny * nx, method="index_add")
    b = hough_histogram(votes, bins, ny * nx, method="sorted")
    assert torch.equal(a, b) and int((a > 0).sum()) > 100


@pytest.mark.parametrize("method", ["index_add", "sorted"])
def test_indexed_rhm_equals_grid_rhm(method):
    votes, src_c, trg_c, (src_size, trg_size) = real_like_votes(4)
    grid = regularized_hough_matching(votes, src_c, trg_c, src_size, trg_size, path="grid")
    indexed = regularized_hough_matching(votes, src_c, trg_c, src_size, trg_size, path="indexed",
                                         method=method)
    assert torch.equal(grid, indexed) and grid.abs().sum() > 0


def test_module_switch_sends_auto_to_the_cuda_branches(monkeypatch):
    votes, src_c, trg_c, (src_size, trg_size) = real_like_votes(5, (9, 12), (12, 9))
    calls: list[str] = []
    real_grid, real_segment = rhm._grid_rhm, torch.segment_reduce
    monkeypatch.setattr(rhm, "_grid_rhm", lambda *a, **k: calls.append("grid") or real_grid(*a, **k))
    monkeypatch.setattr(torch, "segment_reduce",
                        lambda *a, **k: calls.append("sorted") or real_segment(*a, **k))
    cpu = regularized_hough_matching(votes, src_c, trg_c, src_size, trg_size)
    assert calls == ["grid"]
    monkeypatch.setattr(rhm, "CUDA_PATHS_ON_CPU", True)
    forced = regularized_hough_matching(votes, src_c, trg_c, src_size, trg_size)
    assert calls == ["grid", "sorted"] and torch.equal(cpu, forced)


def test_bf16_autocast_step_on_cpu_is_finite_and_close_to_fp32():
    """bf16 autocast against float32, with tolerances from bf16's unit roundoff (u = 2^-8), not from this
    CPU: the loss within 6 sigma of the first-order rounding model (`bf16_loss_sigma`), and the gradient a
    descent direction for the float32 loss (|g - g32| < |g32|, hence <g, g32> > 0). The case is checked to
    be well-conditioned: float32 with every conv / linear input and weight moved by +-u keeps both."""
    data = bf16_step_data()
    smooth = {"moco_temperature": 1.0, "temperature": 0.1, "crop_centre": "random"}
    ref, ref_grad, sigma = bf16_loss_sigma(small_model(**smooth), data)
    assert 0 < sigma < 0.05 * ref["loss"].item()  # the floor is informative (per cent of the loss)
    model = small_model(**smooth)
    perturb_like_bf16(model, seed=3)
    runs = {"float32 +-u": loss_and_grad(model, data, None)}
    for channels_last in (False, True):
        model = small_model(**smooth)
        runs[f"bf16, channels_last {channels_last}"] = loss_and_grad(model, data, torch.bfloat16,
                                                                     channels_last)
    for name, (out, grad) in runs.items():
        assert all(torch.isfinite(out[k]) for k in ("loss", "loss_moco", "loss_cycle")), name
        assert torch.isfinite(grad).all(), name
        # +-u has variance u^2 (3x a rounding's u^2/3) on a subset of the values: sqrt(3) wider
        bound = 6 * sigma * (math.sqrt(3) if name.startswith("float32") else 1)
        assert abs(out["loss"].item() - ref["loss"].item()) <= bound, (name, out["loss"].item(), bound)
        assert (grad.float() - ref_grad).norm() < ref_grad.norm(), name  # a descent direction
    few = {k: v[:2] for k, v in data.items()}  # the paper's temperatures: finite (see `small_model`)
    paper, grad = loss_and_grad(small_model(), few, torch.bfloat16, True)
    assert all(torch.isfinite(paper[k]) for k in ("loss", "loss_moco", "loss_cycle"))
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("caps, path", [
    ({"amx_bf16": True, "avx512_bf16": True, "avx2": True}, "amx"),  # Sapphire Rapids and later
    ({"amx_bf16": False, "avx512_bf16": True, "avx2": True}, "avx512_bf16"),  # e.g. Zen 4, Cooper Lake
    ({"avx512_f": True, "avx512_bf16": False, "avx2": True}, None),  # AVX-512 without bf16: emulated
    ({"avx2": True}, None),
])
def test_native_bf16_from_the_capabilities_torch_reports(monkeypatch, caps, path):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"cpu_name": "any brand", **caps})
    cpu = torch.device("cpu")
    assert native_bf16(cpu) == path
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # older torch: its two probes
    for probe, key in (("_is_amx_tile_supported", "amx_bf16"), ("_is_avx512_bf16_supported", "avx512_bf16")):
        monkeypatch.setattr(torch.cpu, probe, lambda key=key: bool(caps.get(key)), raising=False)
    assert native_bf16(cpu) == path
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert native_bf16(torch.device("cuda")) == ("cuda" if supported else None)


def test_tf32_only_under_fast_on_cuda():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        rec = set_faithful_numerics(torch.device("cuda"), fast=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert rec["precision"] == "tf32"
        rec = set_faithful_numerics(torch.device("cuda"), fast=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert rec["precision"] == "float32"
        assert set_faithful_numerics(torch.device("cpu"), fast=True)["precision"] == "float32"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_nccl_initialisation_path(monkeypatch):
    """The CUDA branch of `init_distributed`: cuda:LOCAL_RANK, set_device, nccl (process group mocked)."""
    seen: dict[str, object] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault("set_device", d))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend: seen.setdefault("backend", backend))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    info = init_distributed("cuda")
    assert seen == {"set_device": torch.device("cuda", 2), "backend": "nccl"}
    assert info.device == torch.device("cuda", 2) and info.rank == 6 and info.distributed


def _code_lines():
    for folder in CODE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for no, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                yield path.relative_to(REPO).as_posix(), no, code


def test_no_dot_cuda_and_cudnn_benchmark_only_in_training():
    dot_cuda = [(p, n) for p, n, c in _code_lines() if re.search(r"[\w)\]]\.cuda\(", c)]
    benchmark = [p for p, n, c in _code_lines() if "cudnn.benchmark =" in c or "cudnn.benchmark=" in c]
    assert dot_cuda == []
    assert benchmark == ["training/trainer.py"]
