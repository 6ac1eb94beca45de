"""Hyperpixel backbones: the `Backbone` interface every matcher uses, and ResNets (torchvision or timm)
with their blocks numbered as hyperpixel ids (ViTs: `models.vit_backbone`).

ResNets: id 0 is the stem (conv1 -> bn -> ReLU -> max-pool, post-ReLU); ids 1.. are the residual blocks of
layer1..layer4 in order, each taken **after the residual addition and before the block's final ReLU**
(docs/protocol.md, Hyperpixels). ResNet-18: ids 0..8, ResNet-34/50: 0..16, ResNet-101: 0..33.
Jump (stride, px) and receptive field (px) per id are derived from the convolutions on the main path.
A timm ResNet (`timm:resnet50.a1_in1k`) has the same modules under nearly the same names (`act1`.. for
`relu`) and gets the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from configs.runtime import UserError
from models.transfer import receptive_field_boxes

STAGE_STRIDE = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}  # output stride of each ResNet stage


def _conv_geometry(module: nn.Module) -> tuple[int, int]:
    """(effective kernel size, stride) of a conv / pool along one axis."""
    k = module.kernel_size
    s = module.stride
    d = getattr(module, "dilation", 1)
    k = k[0] if isinstance(k, tuple) else k
    s = s[0] if isinstance(s, tuple) else s
    d = d[0] if isinstance(d, tuple) else d
    return d * (k - 1) + 1, s


def _is_timm_block(block: nn.Module) -> bool:
    return type(block).__module__.startswith("timm.") and type(block).__name__ in ("Bottleneck", "BasicBlock")


def _block_main_path(block: nn.Module) -> list[nn.Module]:
    if isinstance(block, Bottleneck) or (_is_timm_block(block) and hasattr(block, "conv3")):
        return [block.conv1, block.conv2, block.conv3]
    if isinstance(block, BasicBlock) or _is_timm_block(block):
        return [block.conv1, block.conv2]
    raise TypeError(f"unsupported residual block {type(block).__name__}")


def _timm_block_pre_act(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm ResNet block (timm.models.resnet Bottleneck / BasicBlock) before its final activation."""
    shortcut = x if block.downsample is None else block.downsample(x)
    if hasattr(block, "conv3"):
        out = block.act1(block.bn1(block.conv1(x)))
        out = block.aa(block.act2(block.drop_block(block.bn2(block.conv2(out)))))
        out = block.bn3(block.conv3(out))
    else:
        out = block.aa(block.act1(block.drop_block(block.bn1(block.conv1(x)))))
        out = block.bn2(block.conv2(out))
    if block.se is not None:
        out = block.se(out)
    if block.drop_path is not None:
        out = block.drop_path(out)
    return out + shortcut


def block_pre_relu(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ResNet block's output after the addition, before its final ReLU (torchvision or timm block)."""
    if _is_timm_block(block):
        return _timm_block_pre_act(block, x)
    identity = x if block.downsample is None else block.downsample(x)
    if isinstance(block, Bottleneck):
        out = F.relu(block.bn1(block.conv1(x)))
        out = F.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = F.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
    return out + identity


def validate_ids(ids: Sequence[int], n_ids: int, what: str = "hyperpixel") -> tuple[int, ...]:
    """Sorted tuple of ids of a backbone with `n_ids` blocks; an empty list, duplicates or out-of-range
    ids are a `UserError` naming `what` (the flag)."""
    ids = [int(i) for i in ids]
    if not ids:
        raise UserError(f"empty {what} id list (give e.g. 2,12,13,15 or 0-3)")
    if len(set(ids)) != len(ids):
        raise UserError(f"duplicate {what} ids in {ids}")
    bad = [i for i in ids if not 0 <= i < n_ids]
    if bad:
        raise UserError(f"{what} ids {bad} out of range: this backbone has ids 0..{n_ids - 1}")
    return tuple(sorted(ids))


@dataclass
class BlockMaps:
    """Per-id maps of one forward pass: `maps[id]` (B, C, h, w); `final` = post-ReLU layer4 or None."""

    maps: dict[int, torch.Tensor]
    final: torch.Tensor | None


class Backbone(Protocol):
    """What the matchers, the layer search and the feature caches ask of a backbone (an `nn.Module`).

    `n_ids` hyperpixel ids 0..n_ids-1; `jumps[id]` / `receptive_fields[id]`: nominal stride and receptive
    field (px of the network input); `boxes` gives the exact boxes and centres of an id's grid in the
    frame of the image handed to `forward_blocks`. `has_classifier`: a linear head on a spatial final map
    (SCOT's CAM); `id_family`: the architecture whose id numbering this backbone shares (presets' ids);
    `input_rule`: how the image is fed to the network (recorded in results files).
    """

    name: str
    id_family: str
    n_ids: int
    jumps: list[int]
    receptive_fields: list[int]
    has_classifier: bool
    input_rule: str
    fc: nn.Module

    def forward_blocks(self, x: torch.Tensor, ids: Sequence[int], full: bool = False) -> BlockMaps: ...

    def forward_final(self, x: torch.Tensor) -> torch.Tensor: ...

    def boxes(self, idx: int, grid: tuple[int, int], size: tuple[int, int],
              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


def is_timm_resnet(net: nn.Module) -> bool:
    return type(net).__module__.startswith("timm.") and type(net).__name__ == "ResNet"


def resnet_stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv1 -> bn1 -> ReLU -> max-pool of a torchvision or timm ResNet."""
    act = net.relu if isinstance(net, ResNet) else net.act1
    return net.maxpool(act(net.bn1(net.conv1(x))))


def _stem_convs(conv1: nn.Module) -> list[nn.Module]:
    """The stem's convolutions in order (a plain conv1, or timm's deep stem: a Sequential of convs)."""
    if isinstance(conv1, nn.Conv2d):
        return [conv1]
    return [m for m in conv1.modules() if isinstance(m, nn.Conv2d)]


class HyperpixelBackbone(nn.Module):
    """Wrap a torchvision or timm `ResNet` (kept as `.net`, its `fc` included) to expose hyperpixel ids."""

    has_classifier = True  # torchvision: a non-linear head is the --classmap 0 error (`cam.linear_head`)
    input_rule = "the resized image as is"

    def __init__(self, net: nn.Module, arch: str | None = None, id_family: str | None = None):
        super().__init__()
        if not (isinstance(net, ResNet) or is_timm_resnet(net)):
            raise TypeError("HyperpixelBackbone expects a torchvision or timm ResNet")
        self.net = net
        self.arch = arch
        self.name = arch or type(net).__name__
        self.id_family = id_family or self.name
        if is_timm_resnet(net):
            self.has_classifier = isinstance(net.fc, nn.Linear)
        self.blocks: list[nn.Module] = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4)
                                        for b in layer]
        self.n_ids = 1 + len(self.blocks)
        self.jumps, self.receptive_fields = self._geometry_tables()
        self.channels = [net.layer1[0].conv1.in_channels] + [self._block_channels(b) for b in self.blocks]

    @staticmethod
    def _block_channels(block: nn.Module) -> int:
        last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        return int(last.num_features)

    def _geometry_tables(self) -> tuple[list[int], list[int]]:
        """Jump j and receptive field r per id: r += (k_eff - 1) * j; j *= stride, along the main path."""
        jumps, fields = [], []
        r, j = 1, 1
        for module in (*_stem_convs(self.net.conv1), self.net.maxpool):
            k, s = _conv_geometry(module)
            r, j = r + (k - 1) * j, j * s
        jumps.append(j)
        fields.append(r)
        for block in self.blocks:
            for conv in _block_main_path(block):
                k, s = _conv_geometry(conv)
                r, j = r + (k - 1) * j, j * s
            jumps.append(j)
            fields.append(r)
        return jumps, fields

    @property
    def fc(self) -> nn.Module:
        return self.net.fc

    def boxes(self, idx: int, grid: tuple[int, int], size: tuple[int, int],
              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """SCOT's grid-anchored receptive-field boxes (N, 4) and centres (N, 2) of id `idx` (`size` (W, H)
        is not needed: the grid fixes them)."""
        return receptive_field_boxes(grid[0], grid[1], self.jumps[idx], self.receptive_fields[idx], device)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 -> bn1 -> ReLU -> max-pool (id 0)."""
        return resnet_stem(self.net, x)

    def forward_blocks(self, x: torch.Tensor, ids: Sequence[int], full: bool = False) -> BlockMaps:
        """Run the network on normalised images x (B, 3, H, W); return the maps of `ids`.

        Stops after the largest id unless `full` (then `final` is layer4's post-ReLU output, for CAM).
        """
        want = set(int(i) for i in ids)
        last = max(want) if want else -1
        h = self.stem(x)
        maps: dict[int, torch.Tensor] = {}
        if 0 in want:
            maps[0] = h
        final = None
        for idx, block in enumerate(self.blocks, start=1):
            if idx > last and not full:
                break
            pre = block_pre_relu(block, h)
            if idx in want:
                maps[idx] = pre
            h = F.relu(pre)
        if full:
            final = h
        return BlockMaps(maps=maps, final=final)

    def forward_final(self, x: torch.Tensor) -> torch.Tensor:
        """Layer4's post-ReLU output (B, C4, h, w) (the CAM passes at scales 1.5 and 2)."""
        net = self.net
        h = self.stem(x)
        return net.layer4(net.layer3(net.layer2(net.layer1(h))))


def hyper_image(maps: dict[int, torch.Tensor], ids: Sequence[int]) -> torch.Tensor:
    """Upsample every map (bilinear, align_corners=True) to the grid of the smallest id; concat channels.

    maps[id]: (B, C_id, h_id, w_id) -> (B, sum C, h, w). No per-layer normalisation
    (docs/protocol.md, Hyperpixels).
    """
    ids = sorted(ids)
    base = maps[ids[0]]
    size = base.shape[-2:]
    parts = [base]
    for i in ids[1:]:
        m = maps[i]
        parts.append(m if m.shape[-2:] == size else
                     F.interpolate(m, size=size, mode="bilinear", align_corners=True))
    return torch.cat(parts, dim=1)


def resnet_features(net: ResNet, x: torch.Tensor, stage: str = "layer3", block: int = -1,
                    relu: bool = True) -> torch.Tensor:
    """Output of block `block` of ResNet stage `stage` (post- or pre-ReLU): (B, C, H/stride, W/stride);
    a torchvision or timm ResNet."""
    x = resnet_stem(net, x)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(net, name)
        if name != stage:
            x = layer(x)
            continue
        n = len(layer)
        last = block % n if -n <= block < n else None
        if last is None:
            raise UserError(f"cycle.feature_block={block} is out of range for {stage} ({n} blocks)")
        for i in range(last):
            x = layer[i](x)
        return layer[last](x) if relu else block_pre_relu(layer[last], x)
    raise UserError(f"unknown ResNet stage {stage!r}; choose one of {', '.join(STAGE_STRIDE)}")
