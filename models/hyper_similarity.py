"""Exact factorised cosine similarity of hyper-images, without materialising the hyperpixels.

A hyperpixel is the concatenation of per-block features, each block map upsampled bilinearly
(align_corners=True) to the grid of the smallest id (`models.backbone.hyper_image`). The upsampling is a
linear operator U = U_y (x) U_x with two non-zeros per row and axis, so the dot products split per grid:

    dots(src, trg) = F0_s F0_t^T + sum over coarser grids g of U_s,g (F_s,g F_t,g^T) U_t,g^T

with F0 the blocks already on the base grid (not upsampled) and F_g the channels of every block of grid g
(one Gram matrix per stride). The small Gram tensor (h_s, w_s, h_t, w_t) is expanded axis by axis and the
last expansion accumulates straight into the (Ns, Nt) output, so no tensor exceeds Ns x Nt. Norms come
from per-pixel sums of squares of the upsampled maps, one grid at a time (O(N D) work, N x C_g memory).
Values equal the dense product up to float32 rounding (summation order); `cosine_similarity` in
`models.sinkhorn` stays the dense reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["FactorisedHyperpixels", "factorise", "factorised_dots", "factorised_cosine", "interp_matrix",
           "divide_by_norms_"]

_ROWS = 1024  # rows per chunk of the in-place norm division (bounds the temporary to 1024 x Nt)


def interp_matrix(n_in: int, n_out: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """1-D bilinear (align_corners=True) operator (n_out, n_in): row x holds the weights of output x.

    Built by interpolating the identity with `F.interpolate`, so the weights are exactly the library's.
    """
    eye = torch.eye(n_in, device=device, dtype=dtype).unsqueeze(0)  # (1, C = n_in, L = n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=True)[0].t().contiguous()


@dataclass
class _Grid:
    """One stride's blocks: channels (C, h*w) flattened row-major, and the row / column operators
    uy (H', h), ux (W', w) onto the kept window of the base grid (None for the base grid itself)."""

    feats: Tensor
    hw: tuple[int, int]
    uy: Tensor | None
    ux: Tensor | None


@dataclass
class FactorisedHyperpixels:
    """Hyperpixels of one image kept per grid: grids[0] is the base grid (cropped to the window),
    `size` = (H', W') of the kept window, `norms` (H' W',) float32 L2 norms, row-major p = y W' + x."""

    grids: list[_Grid]
    size: tuple[int, int]
    norms: Tensor

    @property
    def n(self) -> int:
        return self.size[0] * self.size[1]

    @property
    def dim(self) -> int:
        return sum(g.feats.shape[0] for g in self.grids)

    def nbytes(self) -> int:
        ts = [self.norms] + [t for g in self.grids for t in (g.feats, g.uy, g.ux) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)

    def dense(self) -> Tensor:
        """The (N, D) hyperpixels (grids in order; for checks and consumers that need the vectors)."""
        parts = []
        for g in self.grids:
            m = g.feats.view(-1, *g.hw)
            if g.uy is not None:
                m = torch.einsum("yh,chw,xw->cyx", g.uy, m, g.ux)
            parts.append(m.reshape(m.shape[0], -1))
        return torch.cat(parts, dim=0).t()


def factorise(maps: dict[int, Tensor], ids: Sequence[int],
              window: tuple[slice, slice] | None = None) -> FactorisedHyperpixels:
    """Group the block maps (1, C, h, w) of `ids` by grid; `window` = (rows, cols) slices of the base grid
    to keep (HPF pruning keeps a rectangle; default: everything)."""
    ids = sorted(ids)
    base_hw = tuple(maps[ids[0]].shape[-2:])
    rows, cols = window if window is not None else (slice(None), slice(None))
    by_grid: dict[tuple[int, int], list[Tensor]] = {}
    for i in ids:
        by_grid.setdefault(tuple(maps[i].shape[-2:]), []).append(maps[i][0])
    grids: list[_Grid] = []
    sq: Tensor | None = None
    for hw, parts in sorted(by_grid.items(), key=lambda kv: kv[0] != base_hw):  # base grid first
        cat = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # (C, h, w)
        if hw == base_hw:
            kept = cat[:, rows, cols]
            grid = _Grid(kept.reshape(kept.shape[0], -1).contiguous(), tuple(kept.shape[-2:]), None, None)
            up = kept
        else:
            uy = interp_matrix(hw[0], base_hw[0], cat.device, cat.dtype)[rows]
            ux = interp_matrix(hw[1], base_hw[1], cat.device, cat.dtype)[cols]
            grid = _Grid(cat.reshape(cat.shape[0], -1).contiguous(), hw, uy.contiguous(), ux.contiguous())
            # the same upsampling as the dense hyper-image, one grid at a time, for the norms
            up = F.interpolate(cat.unsqueeze(0), size=base_hw, mode="bilinear", align_corners=True)[0]
            up = up[:, rows, cols]
        grids.append(grid)
        part = up.pow(2).sum(dim=0)
        sq = part if sq is None else sq.add_(part)
    assert sq is not None
    return FactorisedHyperpixels(grids=grids, size=tuple(sq.shape), norms=sq.sqrt_().reshape(-1))


def _add_expanded(out: Tensor, gram: Tensor, src: _Grid, trg: _Grid) -> None:
    """out (Ns, Nt) += U_s gram U_t^T for gram (h_s w_s, h_t w_t), expanded one axis at a time."""
    (hs, ws), (ht, wt) = src.hw, trg.hw
    big_hs, big_ws, big_ht, big_wt = src.uy.shape[0], src.ux.shape[0], trg.uy.shape[0], trg.ux.shape[0]
    x = torch.mm(gram.view(hs * ws * ht, wt), trg.ux.t())  # (hs ws ht, W't)
    x = torch.matmul(trg.uy, x.view(hs * ws, ht, big_wt))  # (hs ws, H't, W't)
    x = torch.matmul(src.ux, x.view(hs, ws, big_ht * big_wt))  # (hs, W's, Nt)
    out.view(big_hs, big_ws * big_ht * big_wt).addmm_(src.uy, x.view(hs, big_ws * big_ht * big_wt))


def factorised_dots(src: FactorisedHyperpixels, trg: FactorisedHyperpixels) -> Tensor:
    """Dot products (Ns, Nt) of every source with every target hyperpixel (grid-wise Gram matrices)."""
    if len(src.grids) != len(trg.grids) or any(a.feats.shape[0] != b.feats.shape[0]
                                               for a, b in zip(src.grids, trg.grids)):
        raise ValueError("source and target hyperpixels come from different id sets")
    out = torch.mm(src.grids[0].feats.t(), trg.grids[0].feats)  # base grid: no upsampling
    for s, t in zip(src.grids[1:], trg.grids[1:]):
        _add_expanded(out, torch.mm(s.feats.t(), t.feats), s, t)
    return out


def divide_by_norms_(dots: Tensor, src_norms: Tensor, trg_norms: Tensor, rows: int = _ROWS) -> Tensor:
    """dots /= outer(src_norms, trg_norms) in place, in row chunks (the outer product is never whole);
    the same float32 operations as dividing by the full outer product."""
    for r in range(0, dots.shape[0], rows):
        dots[r:r + rows].div_(src_norms[r:r + rows, None] * trg_norms[None, :])
    return dots


def factorised_cosine(src: FactorisedHyperpixels, trg: FactorisedHyperpixels) -> Tensor:
    """Raw cosine (Ns, Nt) = dots / (|src| |trg|^T) with SCOT's operation order; zero vectors give NaN."""
    return divide_by_norms_(factorised_dots(src, trg), src.norms, trg.norms)
