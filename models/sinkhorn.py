"""Cosine similarity and entropic optimal transport for SCOT-style matching.

All functions are pure, run on the tensors' device and work in float32 on one pair: ``(Ns, Nt)``
matrices, ``(Ns,)`` / ``(Nt,)`` marginals.

SCOT's numerics are kept (same float32 operation order: one exponential-domain update from a0 = 1/Ns,
eps = 0.05 doubled on a non-finite plan, votes max(Ns T, 0) ** exp2); what changed (broadcast plan,
capped eps doubling, in-place kernels, any device, a log-domain solver) is listed in
docs/protocol.md, Kept and changed (Sinkhorn).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Optional

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
def _columns(cost: Tensor, mu: Tensor, nu: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes; return the marginals as columns (Ns, 1), (Nt, 1)."""
    if cost.dim() != 2:
        raise ValueError(f"cost must be (Ns, Nt), got {tuple(cost.shape)}")
    if mu.shape != cost.shape[:1] or nu.shape != cost.shape[1:]:
        raise ValueError(f"marginals {tuple(mu.shape)}, {tuple(nu.shape)} do not match cost "
                         f"{tuple(cost.shape)}")
    return mu.unsqueeze(-1), nu.unsqueeze(-1)


# ------------------------------------------------------------------------------------- SCOT solver
def _scot_plan_once(kernel: Tensor, mu_col: Tensor, nu_col: Tensor, n_iters: int) -> tuple[Tensor, Tensor]:
    """Sinkhorn update(s) from a fresh kernel K = exp(-C / eps) (overwritten by the plan).

    Returns (plan (Ns, Nt), failed 0-dim bool). A NaN/inf in K (NaN similarities) propagates into the
    scalings; a non-finite plan entry makes its sum non-finite: both are checked in O(N) after one
    reduction pass instead of a full `isnan` buffer (the plan of a valid problem sums to 1).
    """
    a = torch.ones_like(mu_col) / kernel.shape[0]  # SCOT: ones(Ns, 1) / Ns
    b = nu_col
    for _ in range(max(1, n_iters)):
        b = nu_col / torch.mm(kernel.t(), a)
        a = mu_col / torch.mm(kernel, b)
    plan = kernel.mul_(a).mul_(b.t())  # (a_i K_ij) b_j, as diag(a) K diag(b)
    failed = ~(torch.isfinite(a).all() & torch.isfinite(b).all() & torch.isfinite(plan.sum()))
    return plan, failed


def _solve_scot(make_kernel: Callable[[float], Tensor], mu_col: Tensor, nu_col: Tensor, eps: float,
                n_iters: int, max_retries: int) -> tuple[Tensor, float]:
    """eps-doubling driver; `make_kernel(eps)` returns a fresh K = exp(-C / eps)."""
    plan, failed = _scot_plan_once(make_kernel(eps), mu_col, nu_col, n_iters)
    cur = eps
    for _ in range(max_retries):
        if not bool(failed):
            return plan, cur
        cur *= 2.0
        plan, failed = _scot_plan_once(make_kernel(cur), mu_col, nu_col, n_iters)
    if bool(failed):
        raise ValueError(f"Sinkhorn plan not finite after {max_retries} eps doublings (eps={cur:g}); "
                         "the similarities probably contain NaN (zero feature vectors)")
    return plan, cur


def sinkhorn_scot(cost: Tensor, mu: Tensor, nu: Tensor, eps: float = 0.05, n_iters: int = 1,
                  max_retries: int = 8) -> tuple[Tensor, float]:
    """SCOT's exponential-domain Sinkhorn with eps doubling.

    cost (Ns, Nt); mu (Ns,), nu (Nt,) (each summing to 1). Returns (plan T (Ns, Nt) float32, eps_used).
    A plan that is not finite is recomputed with 2*eps, at most `max_retries` times, then ``ValueError``
    (NaN similarities from zero feature vectors never converge).
    """
    mu_col, nu_col = _columns(cost, mu, nu)
    return _solve_scot(lambda e: torch.div(cost, -e).exp_(),  # == exp(-C / eps) bit for bit
                       mu_col, nu_col, eps, n_iters, max_retries)


# -------------------------------------------------------------------------------------- log domain
def sinkhorn_log(cost: Tensor, mu: Tensor, nu: Tensor, eps: float = 0.05, n_iters: int = 100) -> Tensor:
    """Log-domain Sinkhorn (stable for small eps / many iterations).

    Same update order as `sinkhorn_scot` (b first, then a; a0 = 1/Ns), so one iteration gives the
    same plan up to rounding; many iterations converge to the entropic OT plan (= POT's
    ``ot.sinkhorn(mu, nu, cost, eps, method='sinkhorn_log')``). Returns T (Ns, Nt).
    """
    _columns(cost, mu, nu)
    log_k = torch.div(cost, -eps)
    log_mu, log_nu = mu.log(), nu.log()
    log_a = torch.full_like(log_mu, float(cost.shape[0])).log_().neg_()
    log_b = log_nu
    for _ in range(max(1, n_iters)):
        log_b = log_nu - torch.logsumexp(log_k + log_a.unsqueeze(-1), dim=-2)
        log_a = log_mu - torch.logsumexp(log_k + log_b.unsqueeze(-2), dim=-1)
    return log_k.add_(log_a.unsqueeze(-1)).add_(log_b.unsqueeze(-2)).exp_()


# ------------------------------------------------------------------------------------------- votes
def ot_votes(sim: Tensor, mu: Tensor, nu: Tensor, eps: float = 0.05, exp2: float = 0.5, n_iters: int = 1,
             solver: Literal["scot", "log"] = "scot", max_retries: int = 8,
             sim_again: Optional[Callable[[], Tensor]] = None) -> Tensor:
    """OT votes P = max(Ns * T, 0) ** exp2 with cost 1 - relu(sim).

    sim (Ns, Nt) raw cosine; mu (Ns,), nu (Nt,). exp2 = 0.5 (PF-PASCAL, PF-WILLOW) or 1.0 (SPair-71k).
    Returns float32 (Ns, Nt). `solver="scot"` = faithful exponential update(s) with eps doubling; `"log"` =
    log-domain iterations (no doubling needed). With `sim_again` (scot solver) `sim` is consumed: the
    first kernel is built in its buffer, and `sim_again()` returns a fresh copy for a retry.
    """
    if solver == "scot":
        mu_col, nu_col = _columns(sim, mu, nu)
        fresh = [sim_again is not None]

        def make_kernel(e: float) -> Tensor:
            # exp(-(1 - relu(s)) / eps) bit for bit: relu(s) - 1 == -(1 - relu(s)) exactly; one buffer
            if fresh[0]:
                out, fresh[0] = sim, False
            else:
                out = sim.clone() if sim_again is None else sim_again()
            return out.clamp_(min=0).sub_(1.0).div_(e).exp_()

        plan, _ = _solve_scot(make_kernel, mu_col, nu_col, eps, n_iters, max_retries)
    elif solver == "log":
        cost = torch.clamp(sim, min=0).neg_().add_(1.0)  # == 1 - relu(sim) bit for bit
        plan = sinkhorn_log(cost, mu, nu, eps, n_iters)
        del cost
    else:
        raise ValueError(f"unknown Sinkhorn solver {solver!r} (expected 'scot' or 'log')")
    plan.mul_(sim.shape[-2]).clamp_(min=0)  # SCOT: Ns * T with a Python int
    if exp2 != 1.0:
        plan.pow_(exp2)
    return plan
