"""Regularized Hough matching: bins and histogram against brute-force loops, confidence against a dense
reference (one-hot Ns x n_bins buffer, as the original, + scipy.ndimage convolution)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from models.rhm import (
    gaussian_filter_7x7,
    hough_bins,
    hough_histogram,
    hough_space_shape,
    regularized_hough_matching,
)
from models.transfer import receptive_field_boxes


def _tiny_problem(seed: int = 0):
    """Two small grids of different sizes (stride 4, 24x16 and 20x20 px images) and random votes."""
    _, src_c = receptive_field_boxes(4, 6, 4, 11)
    _, trg_c = receptive_field_boxes(5, 5, 4, 11)
    gen = torch.Generator().manual_seed(seed)
    votes = torch.rand(len(src_c), len(trg_c), generator=gen) ** 3
    return votes, src_c, trg_c, (24, 16), (20, 20)


def test_space_shape_for_two_300x225_images():
    ny, nx, delta = hough_space_shape((300, 225), (300, 225), 8192)
    assert math.isclose(delta, math.sqrt(600 * 450 / 8192))
    assert abs(delta - 5.74) < 0.01
    assert (ny, nx) == (79, 105)


def test_bins_match_brute_force_loop():
    votes, src_c, trg_c, src_size, trg_size = _tiny_problem()
    ncells = 64
    bins, (ny, nx) = hough_bins(src_c, trg_c, src_size, trg_size, ncells)
    assert bins.dtype == torch.int64 and bins.shape == votes.shape
    delta = math.sqrt((src_size[0] + trg_size[0]) * (src_size[1] + trg_size[1]) / ncells)
    assert nx == int((src_size[0] + trg_size[0]) / delta) + 1
    assert ny == int((src_size[1] + trg_size[1]) / delta) + 1
    f32 = np.float32
    for i, (cx, cy) in enumerate(src_c.tolist()):
        for j, (dx, dy) in enumerate(trg_c.tolist()):
            ox = f32(f32(src_size[0]) - f32(cx)) + f32(dx)  # float32 offsets, then / delta, truncate
            oy = f32(f32(src_size[1]) - f32(cy)) + f32(dy)
            kx, ky = int(ox / f32(delta)), int(oy / f32(delta))
            assert 0 <= kx < nx and 0 <= ky < ny
            assert bins[i, j].item() == kx + nx * ky


def test_bins_of_arbitrary_centres_equal_grid_path():
    """Shuffled centres (not a row-major grid: elementwise path) give the grid path's bins, permuted."""
    _, src_c, trg_c, src_size, trg_size = _tiny_problem()
    gen = torch.Generator().manual_seed(4)
    ps, pt = torch.randperm(len(src_c), generator=gen), torch.randperm(len(trg_c), generator=gen)
    grid_bins, shape = hough_bins(src_c, trg_c, src_size, trg_size, 64)
    perm_bins, perm_shape = hough_bins(src_c[ps], trg_c[pt], src_size, trg_size, 64)
    assert perm_shape == shape
    assert torch.equal(perm_bins, grid_bins[ps][:, pt])
    # realistic size: two 300x225 / 225x300 grids
    _, big_s = receptive_field_boxes(57, 75, 4, 27)
    _, big_t = receptive_field_boxes(75, 57, 4, 27)
    full, _ = hough_bins(big_s, big_t, (300, 225), (225, 300))
    part, _ = hough_bins(big_s[:-1], big_t, (300, 225), (225, 300))  # not a grid any more
    assert torch.equal(full[:-1], part)


@pytest.mark.parametrize("method", ["index_add", "sorted"])
def test_histogram_matches_brute_force_loop(method):
    votes, src_c, trg_c, src_size, trg_size = _tiny_problem(1)
    bins, (ny, nx) = hough_bins(src_c, trg_c, src_size, trg_size, 64)
    expected = np.zeros(ny * nx)
    for i in range(votes.shape[0]):
        for j in range(votes.shape[1]):
            expected[bins[i, j].item()] += votes[i, j].item()
    hist = hough_histogram(votes, bins, ny * nx, method=method)
    assert hist.shape == (ny * nx,) and hist.dtype == torch.float32
    np.testing.assert_allclose(hist.double().numpy(), expected, rtol=1e-6, atol=1e-7)
    assert (expected == 0).any() and (hist[torch.from_numpy(expected == 0)] == 0).all()


def test_histogram_deterministic_and_methods_agree():
    votes = torch.rand(300, 200, generator=torch.Generator().manual_seed(5))
    bins = torch.randint(0, 97, (300, 200), generator=torch.Generator().manual_seed(6))
    first = hough_histogram(votes, bins, 97)
    assert torch.equal(first, hough_histogram(votes, bins, 97))
    assert torch.allclose(first, hough_histogram(votes, bins, 97, method="sorted"), rtol=1e-6, atol=0)


def test_gaussian_filter():
    g = gaussian_filter_7x7().double()
    assert g.shape == (7, 7)
    assert math.isclose(g.sum().item(), 1.0, rel_tol=1e-6)
    sigma = 7 / (2 * 2.354)
    coords = np.arange(-3, 4)
    ref = np.exp(-(coords[None, :] ** 2 + coords[:, None] ** 2) / (2 * sigma ** 2))
    np.testing.assert_allclose(g.numpy(), ref / ref.sum(), rtol=1e-5)


def test_confidence_matches_dense_reference(device):
    votes, src_c, trg_c, src_size, trg_size = _tiny_problem(2)
    ncells = 64
    conf = regularized_hough_matching(votes.to(device), src_c.to(device), trg_c.to(device), src_size,
                                      trg_size, ncells)
    bins, (ny, nx) = hough_bins(src_c, trg_c, src_size, trg_size, ncells)
    # dense reference: the original's (Ns, n_bins) buffer summed over sources, explicit Gaussian,
    # scipy convolution with zero padding
    dense = np.zeros((votes.shape[0], ny * nx))
    rows = np.repeat(np.arange(votes.shape[0]), votes.shape[1])
    np.add.at(dense, (rows, bins.numpy().ravel()), votes.double().numpy().ravel())
    hist = dense.sum(0).reshape(ny, nx)
    sigma = 7 / (2 * 2.354)
    coords = np.arange(-3, 4)
    gauss = np.exp(-(coords[None, :] ** 2 + coords[:, None] ** 2) / (2 * sigma ** 2))
    smoothed = ndimage.convolve(hist, gauss / gauss.sum(), mode="constant", cval=0.0).ravel()
    expected = votes.double().numpy() * smoothed[bins.numpy()]
    np.testing.assert_allclose(conf.cpu().double().numpy(), expected, rtol=1e-5, atol=1e-8)


def test_translation_consensus_wins():
    """Votes split between a consistent translation and scattered noise of equal strength: RHM makes the
    consistent matches win the row-wise arg-max."""
    _, cent = receptive_field_boxes(8, 8, 4, 11)
    n = len(cent)
    votes = torch.zeros(n, n)
    ys, xs = torch.div(torch.arange(n), 8, rounding_mode="floor"), torch.arange(n) % 8
    shift = (ys + 1).clamp(max=7) * 8 + (xs + 2).clamp(max=7)  # (+8, +4) px, clamped at the border
    votes[torch.arange(n), shift] = 1.0
    noise = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    votes[torch.arange(n), noise] += 1.0 + 1e-3  # noise slightly stronger before RHM
    conf = regularized_hough_matching(votes, cent, cent, (32, 32), (32, 32), ncells=256)
    inner = (ys < 7) & (xs < 6)  # rows whose target is not clamped
    wins = (conf.argmax(1) == shift)[inner].float().mean()
    assert wins > 0.95
    assert (votes.argmax(1) == shift).float().mean() < 0.2


def test_grid_path_equals_the_flat_path_bit_for_bit():
    """Hyperpixel grids take the per-axis-table path (no N x N index buffer): same values as building
    every bin, histogramming and gathering; `inplace=True` returns the same values in the votes' buffer."""
    from models.rhm import smooth_histogram

    _, src_c = receptive_field_boxes(19, 25, 4, 27)
    _, trg_c = receptive_field_boxes(25, 19, 4, 27)
    sizes = ((100, 75), (75, 100))
    votes = torch.rand(len(src_c), len(trg_c), generator=torch.Generator().manual_seed(7))
    bins, (ny, nx) = hough_bins(src_c, trg_c, *sizes)
    flat = smooth_histogram(hough_histogram(votes, bins, ny * nx), ny, nx)[bins] * votes
    assert torch.equal(regularized_hough_matching(votes, src_c, trg_c, *sizes), flat)
    buffer = votes.clone()
    out = regularized_hough_matching(buffer, src_c, trg_c, *sizes, inplace=True)
    assert out.data_ptr() == buffer.data_ptr() and torch.equal(out, flat)


def test_grid_path_does_not_depend_on_the_thread_count():
    """The grid path accumulates partial histograms over bands of source rows in threads; the bands
    and their summation order are fixed, so one thread and several give the same bits."""
    _, centres = receptive_field_boxes(23, 31, 4, 27)
    votes = torch.rand(len(centres), len(centres), generator=torch.Generator().manual_seed(3)) ** 4
    sizes = ((124, 92), (124, 92))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = regularized_hough_matching(votes, centres, centres, *sizes)
        torch.set_num_threads(4)
        several = regularized_hough_matching(votes, centres, centres, *sizes)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, several)
    assert one.abs().sum() > 0 and not torch.equal(one, votes)  # the histogram re-weighted the votes
