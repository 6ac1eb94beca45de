"""BatchNorm helpers: list the layers, switch them to eval mode or freeze their running statistics for a
block of code, and re-estimate the running statistics on new images (a control for "is it only BN?").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


def batchnorm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm module of `net` (modules() order)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def batchnorm_eval(net: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Temporarily put every BatchNorm of `net` in eval mode (restores each module's flag)."""
    bns = batchnorm_layers(net) if enabled else []
    flags = [m.training for m in bns]
    try:
        for m in bns:
            m.eval()
        yield
    finally:
        for m, flag in zip(bns, flags):
            m.train(flag)


@contextlib.contextmanager
def frozen_bn_stats(net: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Train-mode BN normalises with batch statistics but leaves running statistics unchanged."""
    bns = batchnorm_layers(net) if enabled else []
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in bns]
    try:
        for m in bns:
            m.momentum = 0.0
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics from `batches` ((B, 3, H, W) each), no gradients.

    The statistics are reset, then `net` runs in train mode with momentum None (cumulative average), so
    each running mean (variance) becomes the mean over the batches of the per-batch channel mean (unbiased
    variance), each layer seeing inputs normalised with batch statistics (as `swa_utils.update_bn`).
    Weights are unchanged; the train/eval flag and the momenta are restored. Returns the number of batches.
    """
    bns = batchnorm_layers(net)
    momenta = [m.momentum for m in bns]
    was_training = net.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    n = 0
    try:
        for x in batches:
            net(x)
            n += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        net.train(was_training)
    if n == 0:
        raise ValueError("recalibrate_batchnorm needs at least one batch")
    return n
