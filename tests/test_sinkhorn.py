"""Cosine and Sinkhorn: hand-worked one-step example, SCOT's literal formulas bit for bit, POT as a
converged oracle, eps doubling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.sinkhorn import cosine_similarity, ot_votes, sinkhorn_log, sinkhorn_scot

EPS = 0.05


def _random_problem(ns: int, nt: int, dim: int = 16, seed: int = 0, uniform: bool = False):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn(ns, dim, generator=gen)
    trg = torch.randn(nt, dim, generator=gen)
    if uniform:
        mu, nu = torch.full((ns,), 1.0 / ns), torch.full((nt,), 1.0 / nt)
    else:  # CAM-like weights in {0.5, 0.8, 0.9, 1.0}
        levels = torch.tensor([0.5, 0.8, 0.9, 1.0])
        ws = levels[torch.randint(0, 4, (ns,), generator=gen)]
        wt = levels[torch.randint(0, 4, (nt,), generator=gen)]
        mu, nu = ws / ws.sum(), wt / wt.sum()
    return src, trg, mu, nu


def test_cosine_matches_literal_scot_formula_and_unit_vectors(device):
    src, trg, _, _ = _random_problem(30, 20, dim=64)
    src, trg = src.to(device), trg.to(device)
    sim = cosine_similarity(src, trg)
    # SCOT: dots / (column of norms @ row of norms)
    literal = torch.matmul(src, trg.t()) / torch.matmul(
        torch.norm(src, p=2, dim=1).unsqueeze(1), torch.norm(trg, p=2, dim=1).unsqueeze(0))
    assert torch.equal(sim, literal)
    ref = (src.double() / src.double().norm(dim=1, keepdim=True)) @ (
        trg.double() / trg.double().norm(dim=1, keepdim=True)).t()
    assert torch.allclose(sim.double(), ref, atol=1e-6)
    batched = cosine_similarity(src.unsqueeze(0).repeat(2, 1, 1), trg.unsqueeze(0).repeat(2, 1, 1))
    assert batched.shape == (2, 30, 20)
    assert torch.allclose(batched[1], sim, atol=1e-7)


def test_one_iteration_hand_worked_example():
    # eps * ln 2 off the diagonal -> K = [[1, 1/2], [1/2, 1]] exactly in real numbers.
    off = EPS * math.log(2.0)
    cost = torch.tensor([[0.0, off], [off, 0.0]])
    mu = torch.tensor([0.25, 0.75])
    nu = torch.tensor([0.5, 0.5])
    # a0 = (1/2, 1/2); K^T a0 = (3/4, 3/4); b = (2/3, 2/3); K b = (1, 1); a = (1/4, 3/4)
    # T = a_i K_ij b_j = [[1/6, 1/12], [1/4, 1/2]]: rows sum to mu, columns (5/12, 7/12) != nu
    expected = torch.tensor([[1 / 6, 1 / 12], [1 / 4, 1 / 2]])
    plan, eps_used = sinkhorn_scot(cost, mu, nu, eps=EPS, n_iters=1)
    assert eps_used == EPS
    assert torch.allclose(plan, expected, atol=1e-6)
    assert torch.allclose(plan.sum(1), mu, atol=1e-6)
    assert not torch.allclose(plan.sum(0), nu, atol=1e-2)
    # votes: P = (Ns * T) ** exp2, sim = 1 - cost
    votes = ot_votes(1.0 - cost, mu, nu, eps=EPS, exp2=0.5)
    assert torch.allclose(votes, (2 * expected).sqrt(), atol=1e-6)
    votes1 = ot_votes(1.0 - cost, mu, nu, eps=EPS, exp2=1.0)
    assert torch.allclose(votes1, 2 * expected, atol=1e-6)


def test_one_iteration_equals_numpy_closed_form():
    src, trg, mu, nu = _random_problem(23, 31, seed=3)
    cost = 1 - cosine_similarity(src, trg).relu()
    k = np.exp(-cost.double().numpy() / EPS)
    b = len(mu) * nu.double().numpy() / k.sum(axis=0)  # b_j = Ns nu_j / sum_i K_ij
    a = mu.double().numpy() / (k @ b)
    expected = a[:, None] * k * b[None, :]
    plan, _ = sinkhorn_scot(cost, mu, nu, eps=EPS)
    np.testing.assert_allclose(plan.double().numpy(), expected, rtol=2e-5, atol=1e-12)


def test_plan_bit_identical_to_literal_scot_diag_products(device):
    src, trg, mu, nu = _random_problem(64, 48, dim=32, seed=1)
    src, trg, mu, nu = src.to(device), trg.to(device), mu.to(device), nu.to(device)
    sim = cosine_similarity(src, trg)
    cost = 1 - torch.clamp(sim, min=0)
    # literal restatement: column vectors, mm, diag(a) K diag(b), then Ns * T, clamp, pow
    mu_c, nu_c = mu.view(-1, 1), nu.view(-1, 1)
    a = torch.ones((cost.shape[0], 1), device=device) / cost.shape[0]
    kernel = torch.exp(-cost / EPS)
    b = nu_c / torch.mm(kernel.t(), a)
    a = mu_c / torch.mm(kernel, b)
    literal = torch.mm(torch.mm(torch.diag(a[:, -1]), kernel), torch.diag(b[:, -1]))
    plan, _ = sinkhorn_scot(cost, mu, nu, eps=EPS)
    assert torch.equal(plan, literal)
    votes = ot_votes(sim, mu, nu, eps=EPS, exp2=0.5)
    assert torch.equal(votes, torch.pow(torch.clamp(cost.shape[0] * literal, min=0), 0.5))


@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")
@pytest.mark.parametrize("uniform", [True, False])
def test_many_iterations_match_pot(uniform):
    ot = pytest.importorskip("ot")
    src, trg, mu, nu = _random_problem(40, 30, seed=7, uniform=uniform)
    cost = 1 - cosine_similarity(src, trg).relu()
    ref = ot.sinkhorn(mu.double().numpy(), nu.double().numpy(), cost.double().numpy(), EPS,
                      method="sinkhorn", numItermax=5000, stopThr=1e-10)
    plan_log = sinkhorn_log(cost, mu, nu, eps=EPS, n_iters=1000)
    plan_exp, _ = sinkhorn_scot(cost, mu, nu, eps=EPS, n_iters=1000)
    scale = float(np.abs(ref).max())
    for plan in (plan_log, plan_exp):
        np.testing.assert_allclose(plan.double().numpy(), ref, atol=1e-4 * scale, rtol=0)
        assert torch.allclose(plan.sum(0), nu, atol=1e-5)  # converged: columns match too
        assert torch.allclose(plan.sum(1), mu, atol=1e-5)


def test_log_domain_one_iteration_equals_exponential():
    src, trg, mu, nu = _random_problem(50, 40, seed=2)
    cost = 1 - cosine_similarity(src, trg).relu()
    plan_exp, _ = sinkhorn_scot(cost, mu, nu, eps=EPS, n_iters=1)
    plan_log = sinkhorn_log(cost, mu, nu, eps=EPS, n_iters=1)
    assert torch.allclose(plan_log, plan_exp, rtol=1e-4, atol=0)
    # small eps: exponential domain underflows, log domain stays finite
    plan_small = sinkhorn_log(cost, mu, nu, eps=1e-3, n_iters=50)
    assert torch.isfinite(plan_small).all()
    assert torch.allclose(plan_small.sum(1), mu, atol=1e-5)


def test_eps_doubling_on_underflow_and_cap():
    cost = torch.zeros(3, 3)
    cost[:, 0] = 1.0  # exp(-1/0.005) underflows to 0 -> column 0 of K is zero -> NaN / inf
    mu = torch.full((3,), 1 / 3)
    nu = torch.full((3,), 1 / 3)
    plan, eps_used = sinkhorn_scot(cost, mu, nu, eps=0.005)
    assert eps_used > 0.005
    assert math.isclose(math.log2(eps_used / 0.005), round(math.log2(eps_used / 0.005)))
    assert torch.isfinite(plan).all()
    direct, used_again = sinkhorn_scot(cost, mu, nu, eps=eps_used)
    assert used_again == eps_used and torch.equal(plan, direct)
    sim = torch.rand(4, 4)
    sim[1, 2] = float("nan")  # e.g. a zero feature vector: never converges
    with pytest.raises(ValueError, match="eps doublings"):
        ot_votes(sim, torch.full((4,), 0.25), torch.full((4,), 0.25), max_retries=3)
