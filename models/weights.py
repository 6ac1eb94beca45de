"""Checkpoints -> torchvision ResNets: MoCo, torchvision, our training checkpoints, ImageNet, random.

    model, record = load_resnet("resnet50", "path/to/moco_v1_200ep_pretrain.pth.tar")

`read_checkpoint` and `encoder_state_dict` are the checkpoint contract shared with training.
Loading always uses `weights_only=True`; never downloads anything except `imagenet`, which is
looked up in the torch hub cache first (a one-line `UserError` when it is absent and offline).
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from configs.runtime import UserError, file_digest

OURS_FORMAT = "contrastive-correspondence/v1"
# The one list of supported backbones: torchvision name -> (blocks per stage, bottleneck blocks?).
# Adding an architecture (say resnet152: ((3, 8, 36, 3), True)) is one line here; every CLI, config check
# and checkpoint reader asks this table.
ARCH_BLOCKS: dict[str, tuple[tuple[int, int, int, int], bool]] = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
}


_EXPECTED = ("a MoCo/our checkpoint {'state_dict': {'module.encoder_q.conv1.weight', ...}} or a torchvision "
             "ResNet state dict {'conv1.weight', 'layer1.0...', 'fc.weight'}")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """`torch.load(path, map_location='cpu', weights_only=True)`; one-line `UserError` when unusable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (give --weights imagenet, random or an existing file)")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: the file is empty (0 bytes; a cut-off write)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, zip errors, disallowed globals: all mean "not usable"
        why = load_failure(err)
        raise UserError(f"cannot read checkpoint {path} with weights_only=True: {why}") from err
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, expected {_EXPECTED}")
    return obj


def load_failure(err: BaseException) -> str:
    """Why `torch.load(weights_only=True)` refused a file, in a few words (the blocked global's name kept)."""
    text = str(err).strip()
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked:
        return f"it needs the global {blocked.group(1)}, which weights_only loading refuses (untrusted code)"
    unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if unpickler:  # e.g. a plain pickle file, not written by torch.save
        return (f"weights_only loading refuses its pickle ({unpickler.group(1).strip()[:120]}); it is not a "
                f"torch.save checkpoint that can be read without running untrusted code")
    first = text.splitlines()[0] if text else type(err).__name__
    return first if len(first) <= 200 else first[:200].rsplit(" ", 1)[0] + " ..."


def check_finite_weights(state_dict: dict[str, Any], source: str) -> None:
    """One-line `UserError` naming the checkpoint and the first tensor holding NaN or infinity."""
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{source}: tensor {key} holds NaN or infinite values (a diverged or corrupt "
                            f"checkpoint); use another checkpoint")


def _is_tensor_dict(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(torch.is_tensor(v) for v in d.values())


def encoder_state_dict(checkpoint: dict[str, Any], source: str) -> tuple[dict[str, torch.Tensor], str | None,
                                                                         str]:
    """Extract the query encoder as a plain torchvision state dict.

    Returns (state_dict, arch or None, kind) with kind "ours" (our `format`), "moco"
    (`state_dict` with `module.encoder_q.` keys) or "torchvision" (plain ResNet keys, optionally under
    `state_dict` / with a `module.` prefix). Anything else is a `UserError` naming `source`.
    """
    arch = checkpoint.get("arch") if isinstance(checkpoint.get("arch"), str) else None
    inner = checkpoint.get("state_dict")
    if isinstance(inner, dict):
        prefix = "module.encoder_q."
        enc = {k[len(prefix):]: v for k, v in inner.items() if k.startswith(prefix)}
        if enc:
            kind = "ours" if checkpoint.get("format") == OURS_FORMAT else "moco"
            return enc, arch, kind
        sd = inner
    else:
        sd = checkpoint
    if _is_tensor_dict(sd):
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
            return sd, arch, "torchvision"
    keys = list(inner.keys() if isinstance(inner, dict) else checkpoint.keys())[:4]
    raise UserError(f"{source}: unrecognised checkpoint keys {keys}; expected {_EXPECTED}")


def infer_arch(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Architecture from the block counts of a torchvision ResNet state dict (None when unknown)."""
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    return arch_for_blocks(tuple(counts), "layer1.0.conv3.weight" in state_dict)


def arch_for_blocks(counts: tuple[int, ...], bottleneck: bool) -> str | None:
    """The ARCH_BLOCKS name with these blocks per stage and block type (None when none has them)."""
    return next((arch for arch, blocks in ARCH_BLOCKS.items() if blocks == (counts, bottleneck)), None)


def head_for(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The `fc` module the state dict describes: Linear, the MoCo v2 MLP (fc.0, ReLU, fc.2), or Identity."""
    if "fc.weight" in state_dict:
        out_f, in_f = state_dict["fc.weight"].shape
        return nn.Linear(in_f, out_f, bias="fc.bias" in state_dict)
    if "fc.0.weight" in state_dict and "fc.2.weight" in state_dict:
        h, in_f = state_dict["fc.0.weight"].shape
        out_f = state_dict["fc.2.weight"].shape[0]
        return nn.Sequential(nn.Linear(in_f, h), nn.ReLU(inplace=True), nn.Linear(h, out_f))
    return nn.Identity()


def _check_arch(arch: str) -> None:
    if arch not in ARCH_BLOCKS:
        raise UserError(f"unknown backbone {arch!r} (choose one of {', '.join(ARCH_BLOCKS)})")


def build_resnet(arch: str, num_classes: int = 128) -> torchvision.models.ResNet:
    """A randomly initialised torchvision `arch` (a key of ARCH_BLOCKS) with a `num_classes`-d linear fc."""
    _check_arch(arch)
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def _host_resolves(url: str, timeout_s: float) -> bool:
    """DNS lookup of the URL's host with a hard deadline (getaddrinfo ignores socket timeouts)."""
    host = urlparse(url).hostname or ""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def imagenet_state_dict(arch: str, timeout_s: float = 10.0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torchvision `IMAGENET1K_V1` weights of `arch` (never `DEFAULT`): hub cache first, else one try.

    Offline (no cache, no network, or `$CC_NO_DOWNLOAD=1`) -> one-line `UserError` naming the file to place.
    """
    _check_arch(arch)
    enum = torchvision.models.get_model_weights(arch)
    weights = enum.IMAGENET1K_V1
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        hint = (f"ImageNet weights {arch} IMAGENET1K_V1 are not in the torch hub cache ({cached}) and "
                f"cannot be downloaded; fetch {url} into that folder (or set TORCH_HOME), "
                f"or use --weights random/PATH")
        if os.environ.get("CC_NO_DOWNLOAD", "") not in ("", "0"):
            raise UserError(hint)
        if not _host_resolves(url, timeout_s):
            raise UserError(hint)
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=torchvision_hash_prefix(url),
                                           progress=False)
        except Exception as err:
            raise UserError(hint) from err
        finally:
            socket.setdefaulttimeout(old)
    try:
        sd = torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cached ImageNet weights {cached} are unreadable; delete it and retry") from err
    return sd, {"weights": "imagenet", "name": f"{arch}.IMAGENET1K_V1", "url": url, "file": str(cached),
                "sha256": file_digest(cached), "sha256_prefix": torchvision_hash_prefix(url)}


def torchvision_hash_prefix(url: str) -> str:
    """torchvision file names end in the first hex digits of their sha256: `resnet50-0676ba61.pth`."""
    return Path(urlparse(url).path).stem.rsplit("-", 1)[-1]


def load_resnet(backbone: str = "auto", weights: str = "imagenet", seed: int = 0
                ) -> tuple[torchvision.models.ResNet, str, dict[str, Any]]:
    """Build a torchvision ResNet with the requested weights, in eval mode on the CPU.

    backbone: "auto" (checkpoint's `arch`, else inferred from its keys, else resnet50) or an arch name.
    weights: "imagenet" (IMAGENET1K_V1, 1000-class fc), "random" (`torch.manual_seed(seed)` right before
    building with a 128-d linear fc) or a checkpoint path (strict load; fc shaped as in the file).
    Returns (model, arch, record) where record identifies the weights for results files.
    """
    if weights == "random":
        arch = "resnet50" if backbone == "auto" else backbone
        _check_arch(arch)
        torch.manual_seed(seed)
        model = build_resnet(arch, num_classes=128)
        return model.eval(), arch, {"weights": "random", "seed": int(seed), "arch": arch}
    if weights == "imagenet":
        arch = "resnet50" if backbone == "auto" else backbone
        sd, record = imagenet_state_dict(arch)
        source = record["file"]
        kind = "torchvision"
    else:
        path = Path(weights)
        ckpt = read_checkpoint(path)
        sd, ck_arch, kind = encoder_state_dict(ckpt, str(path))
        found = ck_arch if ck_arch in ARCH_BLOCKS else infer_arch(sd)
        if backbone == "auto":
            arch = found or "resnet50"
        else:
            arch = backbone
            if found is not None and found != backbone:
                raise UserError(f"{path} holds a {found} but --backbone {backbone} was given "
                                f"(use --backbone auto or {found})")
        source = str(path)
        record = {"weights": str(path), "kind": kind, "sha256": file_digest(path),
                  "step": ckpt.get("step") if isinstance(ckpt.get("step"), int) else None}
    check_finite_weights(sd, source)
    model = build_resnet(arch)
    model.fc = head_for(sd)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = str(err).strip().splitlines()[-1].strip()[:200]
        raise UserError(f"{source}: tensors do not fit a torchvision {arch} ({kind}): {detail}") from err
    if missing or unexpected:
        what = (f"missing keys {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected keys {unexpected[:3]}" if unexpected else "")
        raise UserError(f"{source}: does not match a torchvision {arch} ({kind} layout): {what}")
    record["arch"] = arch
    return model.eval(), arch, record
