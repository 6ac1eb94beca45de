"""Training health: per-term gradients and clipping, set-up warnings, the MoCo chance watch."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import load_train_config
from training.gradients import accumulate_term_gradients
from training.health import ChanceWatch, moco_chance_loss, setup_warnings


def _two_terms(scale_b: float = 300.0):
    """Two losses with disjoint graphs sharing parameters w (both) and v (only the second)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    v = torch.nn.Parameter(torch.randn(3))
    u = torch.nn.Parameter(torch.randn(2))  # reached by no term
    x, y = torch.randn(5), torch.randn(5)

    def terms():
        return {"a": (w * x).sum() ** 2, "b": scale_b * ((w * y).sum() + v.pow(3).sum())}
    return [w, v, u], terms


def test_unclipped_sum_equals_backward_of_the_sum_and_norms_are_per_term():
    params, terms = _two_terms()
    t = terms()
    sum(t.values()).backward()
    want = [None if p.grad is None else p.grad.clone() for p in params]
    ref_norms = {}
    for name, loss in terms().items():
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        ref_norms[name] = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
    norms = accumulate_term_gradients(terms(), params)
    assert torch.allclose(params[0].grad, want[0]) and torch.allclose(params[1].grad, want[1])
    assert params[2].grad is None and want[2] is None
    for name in ("a", "b"):
        assert float(norms[name]) == pytest.approx(ref_norms[name], rel=1e-5)


def test_per_term_clipping_bounds_each_term_and_keeps_small_terms_whole():
    params, terms = _two_terms(scale_b=300.0)
    grads = {name: [torch.zeros_like(p) if g is None else g
                    for p, g in zip(params[:2], torch.autograd.grad(loss, params[:2], allow_unused=True))]
             for name, loss in terms().items()}
    norm_a = math.sqrt(sum(float(g.pow(2).sum()) for g in grads["a"]))
    norm_b = math.sqrt(sum(float(g.pow(2).sum()) for g in grads["b"]))
    bound = (norm_a + norm_b) / 2  # a is below it (kept whole), b above it (scaled down to the bound)
    assert norm_a < bound < norm_b
    accumulate_term_gradients(terms(), params, max_norm_per_term=bound)
    for i in range(2):
        want = grads["a"][i] + grads["b"][i] * (bound / (norm_b + 1e-6))
        assert torch.allclose(params[i].grad, want, rtol=1e-5, atol=1e-6)


def test_inv_scale_undoes_a_loss_scale_for_norms_and_clipping():
    params, terms = _two_terms()
    ref = accumulate_term_gradients(terms(), params, max_norm_per_term=1.0)
    ref_grads = [p.grad.clone() for p in params[:2]]
    scaled = accumulate_term_gradients({k: 1024.0 * v for k, v in terms().items()}, params,
                                       max_norm_per_term=1.0, inv_scale=1 / 1024.0)
    for k in ref:
        assert float(scaled[k]) == pytest.approx(float(ref[k]), rel=1e-5)
    for p, g in zip(params[:2], ref_grads):
        assert torch.allclose(p.grad / 1024.0, g, rtol=1e-4, atol=1e-6)  # still scaled for the GradScaler


def _cfg(*overrides: str):
    return load_train_config(None, ["moco.arch=resnet18", "batch_size=8", "pair_batch_size=8", *overrides])


def test_setup_warnings():
    assert len(setup_warnings(_cfg("moco.queue_size=16"), 1, 36)) == 1           # only bn_splits 1
    assert setup_warnings(_cfg("moco.queue_size=16", "moco.bn_splits=2"), 1, 36) == []
    assert setup_warnings(_cfg("moco.queue_size=16"), 2, 36) == []                # Shuffle-BN under DDP
    msgs = setup_warnings(_cfg("moco.queue_size=64", "moco.bn_splits=2"), 1, 36)
    assert len(msgs) == 1 and "moco.queue_size=64" in msgs[0] and "28" in msgs[0]  # images - batch
    assert setup_warnings(_cfg("moco.queue_size=64", "moco.loss_weight=0"), 1, 36) == []  # MoCo off


def test_chance_watch_warns_once_after_patience_logs_at_chance():
    chance = moco_chance_loss(384)
    assert chance == pytest.approx(5.953, abs=1e-3)
    watch = ChanceWatch(384, patience=3)
    seq = [1.7, chance, chance * 0.99, 2.0, chance, chance, chance * 1.01, chance, None]
    msgs = [watch.update(x) for x in seq]
    assert [i for i, m in enumerate(msgs) if m] == [6]  # the streak restarts after 2.0; one warning only
    assert "ln(K+1)" in msgs[6] and "\n" not in msgs[6]
