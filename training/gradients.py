"""Per-term gradients: each loss term's gradient norm, optional per-term clipping, then their sum.

    norms = accumulate_term_gradients({"moco": l1, "pixel": l2}, params, max_norm_per_term=1.0)
    optimizer.step()                      # p.grad = sum over terms of (clipped) gradients

Why: the two branches' gradients can differ by orders of magnitude (a random-init cycle term reaches norms of
hundreds against ~1 for MoCo), so clipping their sum leaves the smaller term almost no say. Clipping each
term to the same bound keeps both in the update direction; the logged norms show the imbalance either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def _norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of a list of tensors, as a 0-dim fp32 tensor (no host sync)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def accumulate_term_gradients(terms: dict[str, torch.Tensor], params: Sequence[torch.nn.Parameter],
                              max_norm_per_term: float | None = None,
                              inv_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Set `p.grad` (for every p in `params`) to the sum over `terms` of each term's gradient, each first
    clipped to L2 norm `max_norm_per_term` (None = no clipping). Returns each term's norm before clipping.

    Terms must have disjoint autograd graphs except for the parameters (each is differentiated once, and
    its graph freed). `inv_scale` undoes a loss scale (fp16 GradScaler) for the norms and the clipping;
    the gradients themselves stay scaled for `scaler.step`. Parameters no term reaches keep `grad = None`.
    """
    params = list(params)
    for p in params:
        p.grad = None
    norms: dict[str, torch.Tensor] = {}
    for name, loss in terms.items():
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        used = [(p, g) for p, g in zip(params, grads) if g is not None]
        if not used:
            norms[name] = loss.new_zeros((), dtype=torch.float32)
            continue
        norm = _norm([g for _, g in used]) * inv_scale
        norms[name] = norm
        if max_norm_per_term is not None:
            coef = (max_norm_per_term / (norm + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_([g for _, g in used], coef)
        for p, g in used:
            p.grad = g if p.grad is None else p.grad.add_(g)
    return norms


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """Average `p.grad` over the ranks (DDP's reduction, done by hand after per-term gradients). A parameter
    without a gradient on this rank contributes zeros, so every rank reduces the same list."""
    if world_size <= 1:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
