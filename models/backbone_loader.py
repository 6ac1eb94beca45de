"""Any backbone by name -> a hyperpixel `Backbone`: torchvision ResNets (`resnet50`, ...) or `timm:NAME`.

    backbone, record = load_backbone("timm:vit_small_patch14_dinov2.lvd142m", "random", seed=0)
    backbone, record = load_backbone("auto", "runs/x/checkpoints/last.pth")   # torchvision, as before

timm ResNets get the ids of the torchvision ResNet with the same blocks (`id_family`); timm Vision
Transformers get block ids (`models.vit_backbone`). Other timm families are a one-line error.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from configs.runtime import UserError
from models.backbone import Backbone, HyperpixelBackbone, is_timm_resnet
from models.timm_models import is_vit, load_timm, timm_name
from models.weights import ARCH_BLOCKS, arch_for_blocks, load_resnet


def resnet_family(net: Any) -> str | None:
    """The ARCH_BLOCKS name with the same blocks per stage and block type as ResNet `net` (None if none)."""
    return arch_for_blocks(tuple(len(getattr(net, f"layer{i}")) for i in range(1, 5)),
                           hasattr(net.layer1[0], "conv3"))


def wrap_timm(net: Any, name: str) -> Backbone:
    """The hyperpixel wrapper of timm model `net`: ResNet -> `HyperpixelBackbone`, ViT -> `ViTHyperpixels`."""
    kind = type(net).__name__
    label = f"timm:{name}"
    if is_timm_resnet(net):
        if any(not isinstance(getattr(b, "aa", None), nn.Identity) for layer in
               (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer):
            raise UserError(f"{label}: anti-aliased downsampling (aa layers) moves the strides that the "
                            f"hyperpixel geometry reads from the convolutions; use a plain ResNet")
        return HyperpixelBackbone(net, label, id_family=resnet_family(net) or label)
    if is_vit(net):
        from models.vit_backbone import ViTHyperpixels

        return ViTHyperpixels(net, label)
    raise UserError(f"{label} is a timm {kind}; hyperpixels are defined for timm ResNets and Vision "
                    f"Transformers (e.g. timm:resnet50.a1_in1k, timm:vit_small_patch14_dinov2.lvd142m)")


def load_backbone(backbone: str = "auto", weights: str = "imagenet", seed: int = 0
                  ) -> tuple[Backbone, dict[str, Any]]:
    """Build `backbone` ("auto", an ARCH_BLOCKS name or "timm:NAME") with `weights` (imagenet | random |
    path), in eval mode on the CPU; returns (backbone, weights record). `backbone.name` is the label
    recorded in results files."""
    name = timm_name(backbone)
    if name is not None:
        net, record = load_timm(name, weights, seed)
        return wrap_timm(net, name), record
    model, arch, record = load_resnet(backbone, weights, seed)
    return HyperpixelBackbone(model, arch), record


def check_backbone_name(text: str) -> str:
    """A `--backbone` value: auto, an ARCH_BLOCKS name or timm:NAME (NAME checked when loading)."""
    if text in ("auto", *ARCH_BLOCKS) or (timm_name(text) or "").strip():
        return text
    raise UserError(f"unknown backbone {text!r} (choose auto, {', '.join(ARCH_BLOCKS)} or timm:NAME, e.g. "
                    f"timm:vit_small_patch14_dinov2.lvd142m)")
