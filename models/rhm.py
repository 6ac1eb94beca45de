"""Regularized Hough matching (RHM), translation only (SCOT protocol).

Votes V (Ns, Nt) are re-weighted by the smoothed Hough histogram of their offsets:
offset o_ij = (W_s, H_s) - c_i + d_j, cell size delta = sqrt((W_s+W_t)(H_s+H_t) / ncells),
bin k_ij = floor(o_x / delta) + n_x * floor(o_y / delta), histogram H[k] = sum of V_ij over k_ij = k,
H~ = H convolved with a normalised 7x7 Gaussian (sigma = 7 / (2 * 2.354)), zero padding 3, and the
confidence is C_ij = V_ij * H~[k_ij].

SCOT/HPF behaviours kept: one translation space, 8192 cells, the 7x7 Gaussian, bin ids from float32
offsets divided by delta (a Python float) then truncated, confidence = votes * smoothed histogram.
Changed: the histogram is built by a float64 scatter (`index_add_` on CPU, sort + segment sum on
CUDA: deterministic) instead of the original's dense Ns x n_bins float32 buffer (equal up to
float32 summation order: the bins' sums differ in the last bits at most); any device. On the
CPU, for row-major grids of centres (hyperpixels), the histogram and the gather work from the per-axis bin
tables, so no N x N index buffer exists (same sums, same values); `regularized_hough_matching(...,
inplace=True)` writes the confidence into the votes' buffer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["hough_space_shape", "hough_bins", "hough_histogram", "gaussian_filter_7x7",
           "smooth_histogram", "regularized_hough_matching"]

_CHUNK = 1 << 22  # elements converted to float64 at a time (32 MB)
CUDA_PATHS_ON_CPU = False  # True: "auto" takes the CUDA branches on any device (tests of the CUDA-only code)


def _cuda_style(device: torch.device) -> bool:
    """Whether "auto" takes the CUDA branch (sorted histogram, indexed RHM) for tensors on `device`."""
    return device.type != "cpu" or CUDA_PATHS_ON_CPU


def hough_space_shape(src_size: Sequence[float], trg_size: Sequence[float],
                      ncells: int = 8192) -> tuple[int, int, float]:
    """(ny, nx, delta) of the translation space for sizes (W, H) in resized-image pixels."""
    width = src_size[0] + trg_size[0]
    height = src_size[1] + trg_size[1]
    delta = math.sqrt((width * height) / ncells)
    return int(height / delta) + 1, int(width / delta) + 1, delta


def _grid_axes(centers: Tensor) -> tuple[Tensor, Tensor] | None:
    """(ys (h,), xs (w,)) when `centers` (N, 2) is a full row-major grid (p = y * w + x), else None."""
    xs = torch.unique(centers[:, 0])
    ys = torch.unique(centers[:, 1])
    if len(xs) * len(ys) != len(centers):
        return None
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1).reshape(-1, 2)
    return (ys, xs) if torch.equal(grid, centers) else None


def _axis_bins(src: Tensor, trg: Tensor, src_size: Sequence[float], trg_size: Sequence[float], ncells: int
               ) -> tuple[Tensor, Tensor, int, int] | None:
    """Per-axis bins of two row-major grids of centres: (by (h_s, h_t) already times nx, bx (w_s, w_t),
    ny, nx) as int64, or None when either set of centres is not a full grid."""
    ny, nx, delta = hough_space_shape(src_size, trg_size, ncells)
    src_axes, trg_axes = _grid_axes(src), _grid_axes(trg)
    if src_axes is None or trg_axes is None:
        return None
    ref = torch.tensor([float(src_size[0]), float(src_size[1])], dtype=torch.float32, device=src.device)
    (sy, sx), (ty, tx) = src_axes, trg_axes
    bins_x = torch.add((ref[0] - sx)[:, None], tx[None, :]).div_(delta).long()  # (w_s, w_t)
    bins_y = torch.add((ref[1] - sy)[:, None], ty[None, :]).div_(delta).long().mul_(nx)  # (h_s, h_t)
    return bins_y, bins_x, ny, nx


def hough_bins(src_centers: Tensor, trg_centers: Tensor, src_size: Sequence[float],
               trg_size: Sequence[float], ncells: int = 8192, dtype: torch.dtype = torch.int64
               ) -> tuple[Tensor, tuple[int, int]]:
    """Hough bin of every (source, target) pair.

    src_centers (Ns, 2), trg_centers (Nt, 2): box centres (x, y) in resized pixels; sizes (W, H).
    Returns (bins `dtype` (default int64) (Ns, Nt) in [0, ny * nx), (ny, nx)). Bins come from float32
    offsets ((W_s - c_x) + d_x) / delta truncated, per axis; for row-major grids of centres (the
    hyperpixel case) the per-axis bins are computed on the small (w_s, w_t) and (h_s, h_t) tables and
    broadcast (same float32 operations per element, one N x N buffer).
    """
    src = src_centers.to(torch.float32)
    trg = trg_centers.to(torch.float32)
    tables = _axis_bins(src, trg, src_size, trg_size, ncells)
    if tables is not None:
        bins_y, bins_x, ny, nx = tables
        (hs, ht), (ws, wt) = bins_y.shape, bins_x.shape
        bins = torch.add(bins_y.to(dtype).view(hs, 1, ht, 1), bins_x.to(dtype).view(1, ws, 1, wt))
        return bins.view(hs * ws, ht * wt), (ny, nx)
    ny, nx, delta = hough_space_shape(src_size, trg_size, ncells)
    ref = torch.tensor([float(src_size[0]), float(src_size[1])], dtype=torch.float32, device=src.device)
    src_ref = ref - src  # (Ns, 2): (W_s - c_x, H_s - c_y)
    bins = torch.add(src_ref[:, 0, None], trg[None, :, 0]).div_(delta).long()
    bins_y = torch.add(src_ref[:, 1, None], trg[None, :, 1]).div_(delta).long()
    bins.add_(bins_y.mul_(nx))
    return bins.to(dtype), (ny, nx)


def _grid_rhm(votes: Tensor, bins_y: Tensor, bins_x: Tensor, ny: int, nx: int, inplace: bool) -> Tensor:
    """RHM for grids of centres without any N x N index buffer: the float64 histogram is accumulated over
    blocks of source rows (their bins built per block from the per-axis tables), and the smoothed value
    of every pair is gathered in two steps, per (source row, target row) then per (x_s, x_t)."""
    (hs, ht), (ws, wt) = bins_y.shape, bins_x.shape
    v4 = votes.view(hs, ws, ht, wt)
    hist = torch.zeros(ny * nx, dtype=torch.float64, device=votes.device)
    rows = max(1, _CHUNK // (ws * ht * wt))
    by, bx = bins_y.to(torch.int32), bins_x.to(torch.int32)
    for r in range(0, hs, rows):
        block = torch.add(by[r:r + rows].view(-1, 1, ht, 1), bx.view(1, ws, 1, wt))
        hist.index_add_(0, block.view(-1), v4[r:r + rows].reshape(-1).double())
    smoothed = smooth_histogram(hist.to(votes.dtype), ny, nx).view(ny, nx)
    per_rows = smoothed[bins_y // nx].view(hs, 1, ht, nx).expand(hs, ws, ht, nx)  # (h_s, h_t, nx) table
    gathered = torch.gather(per_rows, 3, bins_x.view(1, ws, 1, wt).expand(hs, ws, ht, wt))
    gathered = gathered.view(votes.shape)
    return votes.mul_(gathered) if inplace else gathered.mul_(votes)  # V * H~ == H~ * V exactly


def hough_histogram(votes: Tensor, bins: Tensor, n_bins: int,
                    method: Literal["auto", "index_add", "sorted"] = "auto") -> Tensor:
    """H[k] = sum of votes over entries with bin k, accumulated in float64, returned as votes.dtype (n_bins,).

    Deterministic: sequential `index_add_` on CPU; on CUDA (method "auto") a stable sort of the bin ids
    followed by a segment sum (no atomics). Never builds an (Ns, n_bins) buffer.
    """
    flat_bins = bins.reshape(-1)
    flat_votes = votes.reshape(-1)
    if method == "auto":
        method = "sorted" if _cuda_style(votes.device) else "index_add"
    if method == "index_add":
        hist = torch.zeros(n_bins, dtype=torch.float64, device=votes.device)
        for start in range(0, flat_votes.numel(), _CHUNK):
            stop = start + _CHUNK
            hist.index_add_(0, flat_bins[start:stop], flat_votes[start:stop].double())
    elif method == "sorted":
        order = torch.argsort(flat_bins, stable=True)
        counts = torch.bincount(flat_bins.long(), minlength=n_bins)
        hist = torch.segment_reduce(flat_votes[order].double(), "sum", lengths=counts, unsafe=True)
    else:
        raise ValueError(f"unknown histogram method {method!r}")
    return hist.to(votes.dtype)


def gaussian_filter_7x7(device: torch.device | str | None = None) -> Tensor:
    """Normalised 7x7 Gaussian, sigma = 7 / (2 * 2.354) cells, float32 (7, 7)."""
    side = 7
    sigma_sq = torch.tensor(side / 2 / 2.354, dtype=torch.float32).pow(2)
    coords = torch.arange(-(side // 2), side // 2 + 1, dtype=torch.float32)
    xx = coords.view(1, side).expand(side, side)
    yy = coords.view(side, 1).expand(side, side)
    gauss = torch.exp(-(xx.pow(2) / 2 / sigma_sq + yy.pow(2) / 2 / sigma_sq))
    return (gauss / gauss.sum()).to(device)


def smooth_histogram(hist: Tensor, ny: int, nx: int) -> Tensor:
    """Convolve the (ny * nx,) histogram with the 7x7 Gaussian, zero padding 3; returns (ny * nx,)."""
    kernel = gaussian_filter_7x7(hist.device).to(hist.dtype).view(1, 1, 7, 7)
    return F.conv2d(hist.view(1, 1, ny, nx), kernel, padding=3).view(-1)


def regularized_hough_matching(votes: Tensor, src_centers: Tensor, trg_centers: Tensor,
                               src_size: Sequence[float], trg_size: Sequence[float],
                               ncells: int = 8192, inplace: bool = False,
                               path: Literal["auto", "grid", "indexed"] = "auto",
                               method: Literal["auto", "index_add", "sorted"] = "auto") -> Tensor:
    """RHM confidence C (Ns, Nt) = V * H~[bins] for votes V (Ns, Nt) (OT votes or cosine powers).

    Centres (N, 2) and sizes (W, H) in resized-image pixels. `votes` is overwritten by C when `inplace`,
    else left untouched. `path`: "grid" (per-axis tables, CPU default for grids), "indexed" (N x N bins +
    `hough_histogram(method)`, the CUDA default); "auto" picks by device (see `CUDA_PATHS_ON_CPU`).
    """
    if path == "auto":
        path = "indexed" if _cuda_style(votes.device) or votes.dim() != 2 else "grid"
    tables = (_axis_bins(src_centers.float(), trg_centers.float(), src_size, trg_size, ncells)
              if path == "grid" else None)
    if tables is not None:
        return _grid_rhm(votes, *tables, inplace=inplace)
    bins, (ny, nx) = hough_bins(src_centers, trg_centers, src_size, trg_size, ncells)
    hist = hough_histogram(votes, bins, ny * nx, method=method)
    gathered = smooth_histogram(hist, ny, nx).index_select(0, bins.view(-1)).view(bins.shape)
    del bins
    return votes.mul_(gathered) if inplace else gathered.mul_(votes)  # V * H~ == H~ * V exactly
