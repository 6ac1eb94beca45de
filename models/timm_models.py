"""timm models by name, with their weights: timm's own pretrained loading, seeded random, or a state dict.

    net, record = load_timm("vit_small_patch14_dinov2.lvd142m", "random", seed=0)

`weights`: "imagenet" (= the model's published weights through timm, which downloads them from the
Hugging Face hub, caches and checks them), "random" (`torch.manual_seed(seed)` before building) or a path
to a timm state dict (plain, or under `state_dict` / `model`; strict load, `weights_only=True`).
Every failure a user can cause is a one-line `UserError` naming the model and what to do. ViTs are built
with `dynamic_img_size=True` (any input size a multiple of the patch size).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from configs.runtime import UserError, file_digest

TIMM_PREFIX = "timm:"


def timm_name(backbone: str) -> str | None:
    """"timm:NAME" -> NAME; anything else -> None."""
    return backbone[len(TIMM_PREFIX):] if backbone.startswith(TIMM_PREFIX) else None


def _build(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    import timm

    base = name.split(".")[0]
    if base.startswith(("vit_", "deit", "eva")):
        kwargs["dynamic_img_size"] = True
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def build_timm(name: str, num_classes: int | None = None) -> nn.Module:
    """Randomly initialised timm model `name` (a name check first), optionally with a `num_classes` head."""
    check_timm_name(name)
    return _build(name, False, **({} if num_classes is None else {"num_classes": num_classes}))


def is_vit(net: nn.Module) -> bool:
    """A timm Vision Transformer (patch embedding + blocks + `forward_intermediates`)."""
    return all(hasattr(net, a) for a in ("patch_embed", "blocks", "forward_intermediates"))


def vit_patch(net: nn.Module) -> int:
    """Patch size (px) of timm ViT `net`: the stride of its token grid."""
    return int(net.patch_embed.patch_size[0])


def check_timm_name(name: str) -> None:
    """One-line `UserError` for a name timm does not know."""
    import timm

    if not name or not timm.is_model(name):
        stem = name.split(".")[0].split("_")[0] if name else ""
        raise UserError(f"unknown timm model {name!r}: list the names with python -c \"import timm; "
                        f"print(timm.list_models('{stem}*', pretrained=True))\"")


def load_timm(name: str, weights: str = "imagenet", seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Build timm model `name` with `weights` (module docstring) in eval mode on the CPU.
    Returns (model, record) where record identifies the weights for results files."""
    check_timm_name(name)
    if weights == "random":
        torch.manual_seed(seed)
        return _build(name, False).eval(), {"weights": "random", "seed": int(seed), "arch": f"timm:{name}"}
    if weights == "imagenet":
        hint = (f"timm:{name}: its pretrained weights cannot be fetched here (no cached copy, no network); "
                f"run once on a machine online (timm caches them under $HF_HOME), or pass --weights PATH "
                f"(a timm state dict) or --weights random")
        if os.environ.get("CC_NO_DOWNLOAD", "") not in ("", "0"):
            raise UserError(hint)
        from models.weights import _host_resolves

        try:  # without a reachable hub, only a cached copy (no retries against an unreachable host)
            with _hub_offline(not _host_resolves("https://huggingface.co", 10.0)):
                net = _build(name, True)
        except (OSError, RuntimeError, ValueError) as err:  # hub offline / unreachable / missing file
            raise UserError(f"{hint} [{type(err).__name__}]") from err
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        return net.eval(), {"weights": "timm-pretrained", "name": name, "arch": f"timm:{name}",
                            "hf_hub_id": cfg.get("hf_hub_id"), "url": cfg.get("url") or None,
                            "tensors_sha256": state_digest(net)}
    return _load_file(name, Path(weights))


def init_from_timm(moco: nn.Module, arch: str) -> dict[str, Any]:
    """Load timm's published weights of `arch` ("timm:NAME") into `moco.encoder_q` and `moco.encoder_k`
    (the classifier stays fresh: ours is moco.dim wide). Returns the record for run.json."""
    name = timm_name(arch)
    if name is None:
        raise UserError(f"init.kind=timm needs moco.arch=timm:NAME, got {arch}")
    net, record = load_timm(name, "imagenet")
    head = head_name(name)
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith(f"{head}.")}
    for enc in (moco.encoder_q, moco.encoder_k):
        missing, unexpected = enc.load_state_dict(sd, strict=False)
        if unexpected or any(not k.startswith(f"{head}.") for k in missing):
            raise UserError(f"timm:{name}: its pretrained weights do not fit the encoder ({missing[:3]}, "
                            f"{unexpected[:3]})")
    return {"kind": "timm", **record}


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Hugging Face hub offline mode (cache only) for the duration, when `offline`."""
    try:
        import huggingface_hub.constants as hub
    except ImportError:
        offline = False
    if not offline:
        yield
        return
    old = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = old


def state_digest(net: nn.Module) -> str:
    """sha256 over the names, shapes and bytes of a model's state (the weights' identity, e.g. for caches)."""
    h = hashlib.sha256()
    for key, value in net.state_dict().items():
        h.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def head_name(name: str) -> str:
    """The module name of timm model `name`'s classifier (from its pretrained config; no model is built)."""
    import timm

    return timm.models.get_pretrained_cfg_value(name, "classifier") or "head"


def _load_file(name: str, path: Path) -> tuple[nn.Module, dict[str, Any]]:
    from models.weights import check_finite_weights, read_checkpoint

    ckpt = read_checkpoint(path)
    obj = ckpt
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    query = "module.encoder_q."  # our training checkpoints: the query encoder
    if any(k.startswith(query) for k in obj):
        obj = {k[len(query):]: v for k, v in obj.items() if k.startswith(query)}
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    check_finite_weights(sd, str(path))
    head_w = sd.get(f"{head_name(name)}.weight")  # the head as stored (ours: moco.dim wide) or none
    net = _build(name, False, num_classes=0 if head_w is None else int(head_w.shape[0]))
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].strip()[:200]
        raise UserError(f"{path}: tensors do not fit timm:{name}: {detail}") from err
    if missing or unexpected:
        raise UserError(f"{path}: does not match timm:{name}: missing keys {missing[:3]}, unexpected keys "
                        f"{unexpected[:3]} (give the state dict of this very model)")
    step = ckpt.get("step") if isinstance(ckpt.get("step"), int) else None
    return net.eval(), {"weights": str(path), "kind": "timm", "sha256": file_digest(path),
                        "arch": f"timm:{name}", "step": step}
