"""Cosine similarity and entropic optimal transport for SCOT-style matching.

All functions are pure, run on the tensors' device, work in float32 and accept either one pair
(``(Ns, Nt)`` matrices, ``(Ns,)``/``(Nt,)`` marginals) or a padded batch (``(B, Ns, Nt)``, ``(B, Ns)``,
``(B, Nt)``) with optional boolean masks ``src_mask (B, Ns)`` / ``trg_mask (B, Nt)`` (True = real row /
column). Padded rows and columns get zero plan mass and zero votes; the padding may hold anything
(NaN from zero feature vectors included).

SCOT's numerics are kept (same float32 operation order: one exponential-domain update from a0 = 1/Ns,
eps = 0.05 doubled on a non-finite plan, votes max(Ns T, 0) ** exp2); what changed (broadcast plan,
capped eps doubling, in-place kernels, any device, batches, a log-domain solver) is listed in
docs/protocol.md, Kept and changed (Sinkhorn).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Optional, Union

import torch

Tensor = torch.Tensor

__all__ = ["cosine_similarity", "sinkhorn_scot", "sinkhorn_log", "ot_votes"]


def cosine_similarity(src: Tensor, trg: Tensor) -> Tensor:
    """Raw cosine similarity with SCOT's numerics.

    src (..., Ns, D), trg (..., Nt, D) -> (..., Ns, Nt) = (src @ trg^T) / (|src| |trg|^T).
    Zero vectors give NaN (0/0); no clamping here.
    """
    dots = torch.matmul(src, trg.transpose(-1, -2))
    norms = src.norm(p=2, dim=-1).unsqueeze(-1) * trg.norm(p=2, dim=-1).unsqueeze(-2)
    return dots.div_(norms)


# ------------------------------------------------------------------------------------------ helpers
def _matvec(mat: Tensor, col: Tensor) -> Tensor:
    """mat (..., M, N) @ col (..., N, 1) with `mm` for one pair (SCOT's exact BLAS call), `bmm` else."""
    if mat.dim() == 2:
        return torch.mm(mat, col)
    return torch.bmm(mat, col)


def _as_batch(
    cost: Tensor, mu: Tensor, nu: Tensor, src_mask: Optional[Tensor], trg_mask: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Check shapes; return marginals as columns (..., N, 1) and masks (or None when nothing is padded)."""
    if cost.dim() not in (2, 3):
        raise ValueError(f"cost must be (Ns, Nt) or (B, Ns, Nt), got {tuple(cost.shape)}")
    if mu.shape != cost.shape[:-1] or nu.shape != cost.shape[:-2] + cost.shape[-1:]:
        raise ValueError(
            f"marginals {tuple(mu.shape)}, {tuple(nu.shape)} do not match cost {tuple(cost.shape)}"
        )
    if src_mask is not None and bool(src_mask.all()):
        src_mask = None
    if trg_mask is not None and bool(trg_mask.all()):
        trg_mask = None
    return mu.unsqueeze(-1), nu.unsqueeze(-1), cost, src_mask, trg_mask


def _valid_counts(cost: Tensor, src_mask: Optional[Tensor]) -> Tensor:
    """Number of real source rows per item as float32 (..., 1, 1) (Ns for unpadded input)."""
    if src_mask is None:
        shape = cost.shape[:-2] + (1, 1)
        return torch.full(shape, float(cost.shape[-2]), dtype=cost.dtype, device=cost.device)
    return src_mask.sum(-1).to(cost.dtype).view(cost.shape[:-2] + (1, 1))


# ------------------------------------------------------------------------------------- SCOT solver
def _scot_plan_once(
    kernel: Tensor, mu_col: Tensor, nu_col: Tensor, n_iters: int,
    src_mask: Optional[Tensor], trg_mask: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """Sinkhorn update(s) from a fresh kernel K = exp(-C / eps) (overwritten by the plan).

    Returns (plan (..., Ns, Nt), failed (...,) bool). A NaN/inf in K (NaN similarities) propagates into
    the scalings; a non-finite plan entry makes its sum non-finite: both are checked in O(N) after one
    reduction pass instead of a full `isnan` buffer (the plan of a valid problem sums to 1).
    """
    n_src = kernel.shape[-2]
    if src_mask is None:
        a = torch.ones_like(mu_col) / n_src  # SCOT: ones(Ns, 1) / Ns
    else:
        kernel.masked_fill_(~src_mask.unsqueeze(-1), 0.0)
        a = src_mask.unsqueeze(-1).to(kernel.dtype) / _valid_counts(kernel, src_mask)
    if trg_mask is not None:
        kernel.masked_fill_(~trg_mask.unsqueeze(-2), 0.0)
    b = nu_col
    kernel_t = kernel.transpose(-1, -2)
    for _ in range(max(1, n_iters)):
        b = nu_col / _matvec(kernel_t, a)
        if trg_mask is not None:
            b = b.masked_fill(~trg_mask.unsqueeze(-1), 0.0)
        a = mu_col / _matvec(kernel, b)
        if src_mask is not None:
            a = a.masked_fill(~src_mask.unsqueeze(-1), 0.0)
    plan = kernel.mul_(a).mul_(b.transpose(-1, -2))  # (a_i K_ij) b_j, as diag(a) K diag(b)
    failed = (~torch.isfinite(a)).any(-2).squeeze(-1) | (~torch.isfinite(b)).any(-2).squeeze(-1)
    failed = failed | ~torch.isfinite(plan.sum(dim=(-2, -1)))
    return plan, failed


def _solve_scot(
    make_kernel: Callable[[float, Optional[Tensor]], Tensor], mu_col: Tensor, nu_col: Tensor, eps: float,
    n_iters: int, max_retries: int, src_mask: Optional[Tensor], trg_mask: Optional[Tensor],
) -> tuple[Tensor, Union[float, Tensor]]:
    """eps-doubling driver; `make_kernel(eps, batch_index or None)` returns a fresh K = exp(-C / eps)."""
    plan, failed = _scot_plan_once(make_kernel(eps, None), mu_col, nu_col, n_iters, src_mask, trg_mask)
    cur = eps
    if plan.dim() == 2:
        for _ in range(max_retries):
            if not bool(failed):
                return plan, cur
            cur *= 2.0
            kernel = make_kernel(cur, None)
            plan, failed = _scot_plan_once(kernel, mu_col, nu_col, n_iters, src_mask, trg_mask)
        if bool(failed):
            raise ValueError(f"Sinkhorn plan not finite after {max_retries} eps doublings (eps={cur:g}); "
                             "the similarities probably contain NaN (zero feature vectors)")
        return plan, cur

    eps_used = torch.full((plan.shape[0],), eps, dtype=torch.float64)
    for _ in range(max_retries):
        if not bool(failed.any()):
            break
        cur *= 2.0
        idx = failed.nonzero().squeeze(1)
        sub, sub_failed = _scot_plan_once(
            make_kernel(cur, idx), mu_col[idx], nu_col[idx], n_iters,
            None if src_mask is None else src_mask[idx], None if trg_mask is None else trg_mask[idx],
        )
        plan[idx] = sub
        failed[idx] = sub_failed
        eps_used[idx.cpu()] = cur
    if bool(failed.any()):
        bad = failed.nonzero().squeeze(1).tolist()
        raise ValueError(f"Sinkhorn plan not finite after {max_retries} eps doublings for batch items {bad}; "
                         "the similarities probably contain NaN (zero feature vectors)")
    return plan, eps_used


def sinkhorn_scot(
    cost: Tensor, mu: Tensor, nu: Tensor, eps: float = 0.05, n_iters: int = 1, max_retries: int = 8,
    src_mask: Optional[Tensor] = None, trg_mask: Optional[Tensor] = None,
) -> tuple[Tensor, Union[float, Tensor]]:
    """SCOT's exponential-domain Sinkhorn with eps doubling.

    cost (Ns, Nt) or (B, Ns, Nt); mu (..., Ns), nu (..., Nt) (each summing to 1 over real entries).
    Returns (plan T (..., Ns, Nt) float32, eps_used): a Python float for one pair, a float64 tensor (B,)
    for a batch. Items whose plan is not finite are recomputed with 2*eps, at most `max_retries` times,
    then ``ValueError`` (NaN similarities from zero feature vectors never converge).
    """
    mu_col, nu_col, cost, src_mask, trg_mask = _as_batch(cost, mu, nu, src_mask, trg_mask)

    def make_kernel(e: float, idx: Optional[Tensor]) -> Tensor:
        return torch.div(cost if idx is None else cost[idx], -e).exp_()  # == exp(-C / eps) bit for bit

    return _solve_scot(make_kernel, mu_col, nu_col, eps, n_iters, max_retries, src_mask, trg_mask)


# -------------------------------------------------------------------------------------- log domain
def sinkhorn_log(
    cost: Tensor, mu: Tensor, nu: Tensor, eps: float = 0.05, n_iters: int = 100,
    src_mask: Optional[Tensor] = None, trg_mask: Optional[Tensor] = None,
) -> Tensor:
    """Log-domain Sinkhorn (stable for small eps / many iterations), batched and masked.

    Same update order as `sinkhorn_scot` (b first, then a; a0 = 1/Ns), so one iteration gives the
    same plan up to rounding; many iterations converge to the entropic OT plan (= POT's
    ``ot.sinkhorn(mu, nu, cost, eps, method='sinkhorn_log')``). Returns T (..., Ns, Nt).
    """
    mu_col, nu_col, cost, src_mask, trg_mask = _as_batch(cost, mu, nu, src_mask, trg_mask)
    neg_inf = float("-inf")
    log_k = torch.div(cost, -eps)
    if src_mask is not None:
        log_k.masked_fill_(~src_mask.unsqueeze(-1), neg_inf)
    if trg_mask is not None:
        log_k.masked_fill_(~trg_mask.unsqueeze(-2), neg_inf)
    log_mu = mu_col.squeeze(-1).log()
    log_nu = nu_col.squeeze(-1).log()
    log_a = (-_valid_counts(cost, src_mask).log()).view(cost.shape[:-2] + (1,)).expand_as(log_mu)
    if src_mask is not None:
        log_a = log_a.masked_fill(~src_mask, neg_inf)
        log_mu = log_mu.masked_fill(~src_mask, neg_inf)
    if trg_mask is not None:
        log_nu = log_nu.masked_fill(~trg_mask, neg_inf)
    log_b = log_nu
    for _ in range(max(1, n_iters)):
        log_b = log_nu - torch.logsumexp(log_k + log_a.unsqueeze(-1), dim=-2)
        if trg_mask is not None:
            log_b = log_b.masked_fill(~trg_mask, neg_inf)
        log_a = log_mu - torch.logsumexp(log_k + log_b.unsqueeze(-2), dim=-1)
        if src_mask is not None:
            log_a = log_a.masked_fill(~src_mask, neg_inf)
    return log_k.add_(log_a.unsqueeze(-1)).add_(log_b.unsqueeze(-2)).exp_()


# ------------------------------------------------------------------------------------------- votes
def ot_votes(
    sim: Tensor, mu: Tensor, nu: Tensor, eps: float = 0.05, exp2: float = 0.5, n_iters: int = 1,
    solver: Literal["scot", "log"] = "scot", src_mask: Optional[Tensor] = None,
    trg_mask: Optional[Tensor] = None, max_retries: int = 8, sim_again: Optional[Callable[[], Tensor]] = None,
) -> Tensor:
    """OT votes P = max(Ns * T, 0) ** exp2 with cost 1 - relu(sim).

    sim (..., Ns, Nt) raw cosine; mu (..., Ns), nu (..., Nt). Ns is the number of real source rows of
    each item. exp2 = 0.5 (PF-PASCAL, PF-WILLOW) or 1.0 (SPair-71k). Returns float32 (..., Ns, Nt),
    zero on padded rows/columns. `solver="scot"` = faithful exponential update(s) with eps doubling;
    `"log"` = log-domain iterations (no doubling needed). With `sim_again` (scot solver) `sim` is
    consumed: the first kernel is built in its buffer, and `sim_again()` returns a fresh copy for a retry.
    """
    if solver == "scot":
        mu_col, nu_col, sim, src_mask, trg_mask = _as_batch(sim, mu, nu, src_mask, trg_mask)
        fresh = [sim_again is not None]

        def make_kernel(e: float, idx: Optional[Tensor]) -> Tensor:
            # exp(-(1 - relu(s)) / eps) bit for bit: relu(s) - 1 == -(1 - relu(s)) exactly; one buffer
            if fresh[0]:
                out, fresh[0] = sim, False
            else:
                source = sim if sim_again is None else sim_again()
                out = source.clone() if idx is None else source[idx]
            return out.clamp_(min=0).sub_(1.0).div_(e).exp_()

        plan, _ = _solve_scot(make_kernel, mu_col, nu_col, eps, n_iters, max_retries, src_mask, trg_mask)
    elif solver == "log":
        cost = torch.clamp(sim, min=0).neg_().add_(1.0)  # == 1 - relu(sim) bit for bit
        plan = sinkhorn_log(cost, mu, nu, eps, n_iters, src_mask, trg_mask)
        del cost
    else:
        raise ValueError(f"unknown Sinkhorn solver {solver!r} (expected 'scot' or 'log')")
    n_src: Union[int, Tensor]
    if src_mask is None:
        n_src = sim.shape[-2]  # SCOT: Ns * T with a Python int
    else:
        n_src = _valid_counts(plan, src_mask)
    plan.mul_(n_src).clamp_(min=0)
    if exp2 != 1.0:
        plan.pow_(exp2)
    return plan
