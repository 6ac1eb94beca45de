"""Regularized Hough matching (RHM), translation only (SCOT protocol).

Votes V (Ns, Nt) are re-weighted by the smoothed Hough histogram of their offsets:
offset o_ij = (W_s, H_s) - c_i + d_j, cell size delta = sqrt((W_s+W_t)(H_s+H_t) / ncells),
bin k_ij = floor(o_x / delta) + n_x * floor(o_y / delta), histogram H[k] = sum of V_ij over k_ij = k,
H~ = H convolved with a normalised 7x7 Gaussian (sigma = 7 / (2 * 2.354)), zero padding 3, and the
confidence is C_ij = V_ij * H~[k_ij].

Definition: docs/protocol.md, RHM. SCOT's bins and smoothing are kept; the histogram is accumulated in
float64, deterministically, without SCOT's dense Ns x n_bins buffer (docs/protocol.md, Kept and changed).
On the CPU, row-major grids of centres use per-axis bin tables in threaded bands of source rows (no N x N
index buffer, same values whatever the thread count); `inplace=True` writes into the votes' buffer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["hough_space_shape", "hough_bins", "hough_histogram", "gaussian_filter_7x7",
           "smooth_histogram", "regularized_hough_matching"]

_CHUNK = 1 << 22  # elements converted to float64 at a time (32 MB)
_PARTS = 4  # partial histograms of the grid path (fixed: results do not depend on the thread count)
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
               trg_size: Sequence[float], ncells: int = 8192) -> tuple[Tensor, tuple[int, int]]:
    """Hough bin of every (source, target) pair.

    src_centers (Ns, 2), trg_centers (Nt, 2): box centres (x, y) in resized pixels; sizes (W, H).
    Returns (bins int64 (Ns, Nt) in [0, ny * nx), (ny, nx)). Bins come from float32
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
        bins = torch.add(bins_y.view(hs, 1, ht, 1), bins_x.view(1, ws, 1, wt))
        return bins.view(hs * ws, ht * wt), (ny, nx)
    ny, nx, delta = hough_space_shape(src_size, trg_size, ncells)
    ref = torch.tensor([float(src_size[0]), float(src_size[1])], dtype=torch.float32, device=src.device)
    src_ref = ref - src  # (Ns, 2): (W_s - c_x, H_s - c_y)
    bins = torch.add(src_ref[:, 0, None], trg[None, :, 0]).div_(delta).long()
    bins_y = torch.add(src_ref[:, 1, None], trg[None, :, 1]).div_(delta).long()
    bins.add_(bins_y.mul_(nx))
    return bins, (ny, nx)


def _grid_histogram(votes4: Tensor, by: Tensor, bx: Tensor, n_bins: int) -> Tensor:
    """float64 histogram (n_bins,) of votes (h_s, w_s, h_t, w_t) with bins by[y_s, y_t] + bx[x_s, x_t]
    (int32), accumulated in blocks of source rows; bins are built per block (no N x N index buffer)."""
    hs, ws, ht, wt = votes4.shape
    hist = torch.zeros(n_bins, dtype=torch.float64, device=votes4.device)
    rows = max(1, _CHUNK // (ws * ht * wt))
    for r in range(0, hs, rows):
        block = torch.add(by[r:r + rows].view(-1, 1, ht, 1), bx.view(1, ws, 1, wt))
        hist.index_add_(0, block.view(-1), votes4[r:r + rows].reshape(-1).double())
    return hist


def _grid_rhm(votes: Tensor, bins_y: Tensor, bins_x: Tensor, ny: int, nx: int, inplace: bool) -> Tensor:
    """RHM for grids of centres without any N x N index or gathered buffer, in bands of source rows run
    in threads (`index_add_` and the gather are sequential). The float64 histogram is the sum, in a fixed
    order, of `_PARTS` partial histograms (one per band), so it does not depend on the thread count; then
    each band multiplies its votes by the smoothed value of its pairs, gathered per (source row, target
    row) then per (x_s, x_t)."""
    (hs, ht), (ws, wt) = bins_y.shape, bins_x.shape
    v4 = votes.view(hs, ws, ht, wt)
    out4 = v4 if inplace else torch.empty_like(v4)
    by, bx = bins_y.to(torch.int32), bins_x.to(torch.int32)
    step = -(-hs // _PARTS)
    bands = [(r, min(r + step, hs)) for r in range(0, hs, step)]
    run = _pool(min(len(bands), torch.get_num_threads())).map
    partial = list(run(lambda band: _grid_histogram(v4[band[0]:band[1]], by[band[0]:band[1]], bx, ny * nx),
                       bands))
    hist = partial[0]
    for part in partial[1:]:
        hist.add_(part)
    smoothed = smooth_histogram(hist.to(votes.dtype), ny, nx).view(ny, nx)

    def reweight(band: tuple[int, int]) -> None:
        a, b = band
        per_rows = smoothed[bins_y[a:b] // nx].view(b - a, 1, ht, nx).expand(b - a, ws, ht, nx)
        gathered = torch.gather(per_rows, 3, bins_x.view(1, ws, 1, wt).expand(b - a, ws, ht, wt))
        torch.mul(v4[a:b], gathered, out=out4[a:b])  # V * H~ == H~ * V exactly

    list(run(reweight, bands))
    return out4.view(votes.shape)


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    """A shared pool of `workers` threads (one worker: the bands run one after another)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="rhm")


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
