"""Image-level branch: MoCo v1/v2 (query encoder, momentum key encoder, queue) on torchvision ResNets.

API (stable; the training loop calls it):

    cfg = MoCoConfig(arch="resnet50")                 # paper defaults: v1, K 65536, m 0.999, T 0.07
    cfg_v2 = MoCoConfig(mlp=True, temperature=0.2)   # v2: MLP head, T 0.2
    moco = MoCo(cfg, generator=torch.Generator().manual_seed(seed))   # generator only draws the queue init
    logits, labels = moco(im_q, im_k, generator)      # (B, 1+K) fp32, (B,) zeros; also enqueues the keys
    loss = F.cross_entropy(logits, labels)
    top1, top5 = topk_accuracy_tensors(logits, labels, (1, 5))

State-dict layout (checkpoint contract): `encoder_q.<torchvision ResNet key>`, `encoder_k.*`, `queue`
(dim x K, L2-normalised columns), `queue_ptr` (1,) int64; the v1 head is `fc.{weight,bias}`, the v2 MLP
head `fc.0.*`, `fc.2.*`. DDP adds the `module.` prefix.

Key-encoder batch norm:
- DDP with world size > 1 (`shuffle="auto"` or `"ddp"`): Shuffle-BN. Key images of all ranks are gathered,
  permuted by a permutation drawn on rank 0 and broadcast (identical on every rank), each rank encodes its
  slice, keys are gathered and un-shuffled.
- One process (`"auto"` or `"local"`): the batch is permuted within the device (permutation and its argsort
  inverse) so that the split-BN groups (`bn_splits` = k, `SplitBatchNorm`) of keys differ from the queries'.
  k = 8 with B = 256 reproduces 8 GPUs x 32.
All draws come from the explicit `torch.Generator` passed to `forward` (CPU or on the model's device); the
global RNG is never used, so a run resumed at step t draws what an uninterrupted one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn

from configs.runtime import UserError
from models.timm_models import TIMM_PREFIX, build_timm, timm_name
from models.weights import ARCH_BLOCKS


@dataclass
class MoCoConfig:
    """Image-level branch; defaults = MoCo v1 as used by the paper (docs/method.md, Objective)."""

    arch: str = "resnet50"            # torchvision ResNet (ARCH_BLOCKS) or timm:NAME (ResNet or ViT)
    dim: int = 128                    # embedding dimension of the fc head
    queue_size: int = 65536           # K, number of negative keys kept in the queue
    momentum: float = 0.999           # m in theta_k <- m theta_k + (1 - m) theta_q
    temperature: float = 0.07         # tau of the InfoNCE logits (MoCo v2: 0.2)
    mlp: bool = False                 # MoCo v2 head: Linear(feat, feat) -> ReLU -> Linear(feat, dim)
    bn_splits: int = 1                # k of split-BN (one process emulating k GPUs); 1 = ordinary BN
    shuffle: Literal["auto", "ddp", "local", "none"] = "auto"  # auto: ddp if world > 1 else local
    loss_weight: float = 1.0          # lambda_moco in L = lambda_moco L_moco + lambda_cyc L_cyc

    def __post_init__(self) -> None:
        if self.arch not in ARCH_BLOCKS and not self.arch.startswith(TIMM_PREFIX):
            raise ValueError(f"moco.arch {self.arch!r} is neither a supported torchvision ResNet "
                             f"({', '.join(ARCH_BLOCKS)}) nor timm:NAME")
        for name in ("dim", "queue_size", "bn_splits"):
            if getattr(self, name) < 1:
                raise ValueError(f"moco.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"moco.momentum must lie in [0, 1], got {self.momentum}")
        if self.temperature <= 0:
            raise ValueError(f"moco.temperature must be > 0, got {self.temperature}")


# MoCo v2 model switches (its stronger augmentation and cosine schedule belong to the training config).


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per group of B/k samples (k = `num_splits`).

    Group g holds samples g, g+k, g+2k, ... (a reshape (B, C, H, W) -> (B/k, k*C, H, W)). Running statistics
    are updated per group and averaged over the k groups. Eval mode (and k = 1) is ordinary BatchNorm2d, and
    the state dict is BatchNorm2d's (torchvision-compatible keys).
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.num_splits = int(num_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.num_splits
        if k == 1 or not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % k:
            raise UserError(f"split-BN: batch of {n} is not divisible by moco.bn_splits={k}; "
                            f"choose a batch size that is a multiple of {k}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        running_mean = self.running_mean.repeat(k) if self.running_mean is not None else None
        running_var = self.running_var.repeat(k) if self.running_var is not None else None
        weight = self.weight.repeat(k) if self.weight is not None else None
        bias = self.bias.repeat(k) if self.bias is not None else None
        out = F.batch_norm(x.reshape(n // k, c * k, h, w), running_mean, running_var, weight, bias,
                           True, factor, self.eps)
        if running_mean is not None:
            with torch.no_grad():
                self.running_mean.copy_(running_mean.view(k, c).mean(0))
                self.running_var.copy_(running_var.view(k, c).mean(0))
        return out.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def build_encoder(arch: str, dim: int = 128, mlp: bool = False,
                  bn_splits: int = 1) -> nn.Module:
    """A randomly initialised torchvision ResNet, fc -> `dim` (Linear, or the v2 MLP); BN = SplitBatchNorm.
    `timm:NAME`: timm's model with a `dim`-way linear head (no v2 MLP, no split-BN)."""
    name = timm_name(arch)
    if name is not None:
        if mlp or bn_splits > 1:
            raise UserError(f"moco.arch={arch}: moco.mlp and moco.bn_splits > 1 are for torchvision ResNets "
                            f"only; set moco.mlp=false moco.bn_splits=1")
        return build_timm(name, num_classes=dim)
    if arch not in ARCH_BLOCKS:
        raise UserError(f"unknown ResNet arch {arch!r}; choose one of {', '.join(ARCH_BLOCKS)}")
    norm = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    net = getattr(torchvision.models, arch)(weights=None, num_classes=dim, norm_layer=norm)
    if mlp:
        feat = net.fc.in_features
        net.fc = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(inplace=True), net.fc)
    return net


# ---------------------------------------------------------------- distributed helpers (no gradient)

def ddp_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 (every rank must pass the same shape). No gradient flows through it."""
    if not ddp_active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def random_permutation(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """randperm(n) drawn from `generator` (on the generator's device), returned on `device`."""
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


@torch.no_grad()
def local_shuffle(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the batch: returns (x[perm], unshuffle) with x[perm][unshuffle] == x."""
    perm = random_permutation(x.shape[0], generator, x.device)
    return x[perm], torch.argsort(perm)


@torch.no_grad()
def ddp_shuffle(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle-BN across ranks: gather x, permute by rank 0's permutation, return this rank's slice.

    Every rank draws from its generator (same consumption on every rank) and rank 0's draw is broadcast.
    Returns (local shuffled slice (B, ...), global unshuffle index (world*B,)).
    """
    gathered = concat_all_gather(x)
    perm = random_permutation(gathered.shape[0], generator, x.device)
    if ddp_active():
        dist.broadcast(perm, src=0)
        rank = dist.get_rank()
    else:
        rank = 0
    b = x.shape[0]
    return gathered[perm[rank * b:(rank + 1) * b]], torch.argsort(perm)


@torch.no_grad()
def ddp_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Inverse of `ddp_shuffle` for this rank's encoded slice: gather, un-permute, return own slice."""
    gathered = concat_all_gather(x)
    rank = dist.get_rank() if ddp_active() else 0
    b = x.shape[0]
    return gathered[unshuffle[rank * b:(rank + 1) * b]]


@torch.no_grad()
def topk_accuracy_tensors(logits: torch.Tensor, labels: torch.Tensor,
                          ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Percent (0-dim tensors, no host sync) of rows whose label is among the top-k logits, for each k."""
    kmax = min(max(ks), logits.shape[1])
    hit = logits.topk(kmax, dim=1).indices == labels[:, None]
    return [100.0 * hit[:, :min(k, kmax)].any(dim=1).float().mean() for k in ks]



# ---------------------------------------------------------------- the model

class MoCo(nn.Module):
    """MoCo with a query encoder `encoder_q`, a momentum key encoder `encoder_k` and a key queue."""

    def __init__(self, cfg: MoCoConfig, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.moco_cfg = cfg
        self.encoder_q = build_encoder(cfg.arch, cfg.dim, cfg.mlp, cfg.bn_splits)
        self.encoder_k = build_encoder(cfg.arch, cfg.dim, cfg.mlp, cfg.bn_splits)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", torch.empty(cfg.dim, cfg.queue_size))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.reset_queue(generator if generator is not None else torch.Generator().manual_seed(0))

    @torch.no_grad()
    def reset_queue(self, generator: torch.Generator) -> None:
        """Queue <- random normal columns, L2-normalised; pointer <- 0. Drawn on the generator's device."""
        q = torch.randn(self.queue.shape, generator=generator, device=generator.device)
        self.queue.copy_(F.normalize(q, dim=0))
        self.queue_ptr.zero_()

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (parameters only; BN buffers are the key encoder's own)."""
        m = self.moco_cfg.momentum
        params_k = list(self.encoder_k.parameters())
        params_q = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(params_k, m)
        torch._foreach_add_(params_k, params_q, alpha=1.0 - m)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write the keys of the whole global batch (all-gathered under DDP) at the ring pointer."""
        keys = concat_all_gather(keys).to(self.queue.dtype)
        n, capacity = keys.shape[0], self.queue.shape[1]
        if n > capacity:
            raise UserError(f"MoCo: global batch {n} exceeds moco.queue_size={capacity}; enlarge the queue")
        # pointer arithmetic on the device: no host synchronisation per step
        idx = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % capacity
        self.queue.index_copy_(1, idx, keys.T.contiguous())
        self.queue_ptr.copy_((self.queue_ptr + n) % capacity)

    def shuffle_mode(self) -> str:
        mode = self.moco_cfg.shuffle
        if mode == "auto":
            return "ddp" if ddp_active() else "local"
        return mode

    @torch.no_grad()
    def encode_keys(self, im_k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """L2-normalised keys (B, dim) from the key encoder, with the configured batch shuffle."""
        mode = self.shuffle_mode()
        if mode == "ddp":
            x, unshuffle = ddp_shuffle(im_k, generator)
            return ddp_unshuffle(F.normalize(self.encoder_k(x).float(), dim=1), unshuffle)
        if mode == "local":
            x, unshuffle = local_shuffle(im_k, generator)
            return F.normalize(self.encoder_k(x).float(), dim=1)[unshuffle]
        return F.normalize(self.encoder_k(im_k).float(), dim=1)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """im_q, im_k: (B, 3, H, W) two views. Returns logits (B, 1+K) fp32 (positive first), labels (B,) 0.

        Side effects: momentum update of encoder_k (before the keys) and enqueue of the keys.
        """
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = self.encode_keys(im_k, generator)
        with torch.autocast(device_type=q.device.type, enabled=False):  # logits in fp32 under AMP
            l_pos = (q * k).sum(dim=1, keepdim=True)
            l_neg = q @ self.queue.clone().detach()
            logits = torch.cat([l_pos, l_neg], dim=1) / self.moco_cfg.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self.dequeue_and_enqueue(k)
        return logits, labels
