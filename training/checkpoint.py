"""Training checkpoints: atomic save keeping the last K, `--resume auto`, and weight initialisation.

File contents (the contract shared with evaluation): a dict of tensors, dicts, lists, str, int, float and
bool only, so `torch.load(path, weights_only=True)` reads it:

    {"format": "contrastive-correspondence/v1", "arch": "resnet50", "epoch": int, "step": int,
     "state_dict": {"module.encoder_q.<torchvision key>": ..., "module.encoder_k.*": ...,
                    "module.queue": (dim, K), "module.queue_ptr": (1,)},
     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() or {}, "config": plain dict,
     "git_sha": str or None}

`step` counts completed optimisation steps; `epoch` is the epoch the next step belongs to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from configs.runtime import UserError, atomic_torch_save, git_sha
from models.weights import OURS_FORMAT, check_finite_weights, encoder_state_dict, infer_arch, read_checkpoint

FORMAT = OURS_FORMAT  # "contrastive-correspondence/v1"
STEP_FILE = re.compile(r"^step_(\d{7,})\.pth$")
LAST = "last.pth"  # a copy of the newest step file
PREFIX = "module."


# ------------------------------------------------------------------------------------------ save
def moco_state_dict(moco: nn.Module) -> dict[str, torch.Tensor]:
    """The MoCo module's state dict in the facebookresearch/moco DDP layout (`module.` prefix)."""
    return {PREFIX + k: v.detach().clone().cpu() for k, v in moco.state_dict().items()}


def build_checkpoint(moco: nn.Module, arch: str, optimizer: torch.optim.Optimizer, scaler: Any,
                     epoch: int, step: int, config: dict[str, Any]) -> dict[str, Any]:
    """Assemble a weights_only-safe checkpoint dict (see the module docstring)."""
    return {
        "format": FORMAT,
        "arch": str(arch),
        "epoch": int(epoch),
        "step": int(step),
        "state_dict": moco_state_dict(moco),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "config": config,
        "git_sha": git_sha(),
    }


def save_checkpoint(ckpt: dict[str, Any], ckpt_dir: str | Path, keep_last: int) -> Path:
    """Write `step_XXXXXXX.pth`, then `last.pth`, atomically; keep only the newest `keep_last` step files."""
    if keep_last < 1:
        raise ValueError("keep_last must be >= 1")
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"step_{int(ckpt['step']):07d}.pth"
    check_finite_weights(ckpt["state_dict"], f"refusing to save {path}")  # never write diverged weights
    atomic_torch_save(ckpt, path)
    atomic_torch_save(ckpt, ckpt_dir / LAST)
    prune_step_files(ckpt_dir, keep_last)
    return path


def prune_step_files(ckpt_dir: str | Path, keep_last: int) -> None:
    """Keep only the `keep_last` highest-step `step_*.pth` files."""
    for old in step_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)


def step_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """`step_*.pth` files in `ckpt_dir`, oldest step first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def resume_file(resume: str) -> Path:
    """The checkpoint file of an explicit `--resume PATH` (`--resume auto` is the run folder's choice:
    `training.run_dir.newest_valid_checkpoint`)."""
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"--resume {resume}: no such checkpoint file (use --resume auto or a .pth path)")
    return path


def restore_training_state(ckpt: dict[str, Any], moco: nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: Any, path: str | Path = "checkpoint") -> tuple[int, int]:
    """Load model (strict), optimizer and scaler state from our checkpoint; returns (epoch, step)."""
    if ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a training checkpoint of this project (format {ckpt.get('format')!r}); "
                        "to start from pretrained weights use init.checkpoint=PATH instead of --resume")
    state = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in ckpt["state_dict"].items()}
    result = moco.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{path}: model mismatch (missing {result.missing_keys[:3]}, unexpected "
                        f"{result.unexpected_keys[:3]}); resume with the same config")
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt["epoch"]), int(ckpt["step"])


# ---------------------------------------------------------------------------------- initialisation
@dataclass
class InitReport:
    """What `init_from_checkpoint` did: the checkpoint kind and the keys that were not used or not found."""

    path: str
    kind: str  # "moco" | "ours" | "torchvision"
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # model keys left at their fresh initialisation
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place in the model
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def short(keys: list[str]) -> str:
            more = ", ..." if len(keys) > 6 else ""
            return "none" if not keys else f"{len(keys)} ({', '.join(keys[:6])}{more})"

        return (f"init from {self.path} [{self.kind}]: loaded {self.loaded} tensors; "
                f"missing {short(self.missing)}; unexpected {short(self.unexpected)}"
                + "".join(f"; {n}" for n in self.notes))

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "loaded": self.loaded, "missing": list(self.missing),
                "unexpected": list(self.unexpected), "notes": list(self.notes)}


def split_checkpoint(ckpt: dict[str, Any], path: str | Path) -> tuple[str, dict[str, torch.Tensor],
                                                                     dict[str, torch.Tensor]]:
    """-> (kind, encoder_q torchvision-keyed dict, extras: `encoder_k.*`, `queue`, `queue_ptr`, other keys).

    The query encoder comes from `models.weights.encoder_state_dict` (the contract shared with evaluation);
    the extras are the remaining MoCo-layout entries with `module.` stripped (empty for torchvision files).
    """
    enc_q, _, kind = encoder_state_dict(ckpt, str(path))
    check_finite_weights(enc_q, str(path))
    extras: dict[str, torch.Tensor] = {}
    inner = ckpt.get("state_dict")
    if kind in ("moco", "ours") and isinstance(inner, dict):
        for k, v in inner.items():
            k = k[len(PREFIX):] if k.startswith(PREFIX) else k
            if torch.is_tensor(v) and not k.startswith("encoder_q."):
                extras[k] = v
    return kind, enc_q, extras


def init_from_checkpoint(moco: nn.Module, path: str | Path, load_queue: bool = True) -> InitReport:
    """Initialise a MoCo module (attributes `encoder_q`, `encoder_k`, buffers `queue`, `queue_ptr`).

    - every `encoder_q` backbone key (all but `fc.*`) must be present: otherwise a UserError listing them;
    - head `fc.*`: loaded when the shapes match, else left fresh and reported (torchvision's 1000-class fc);
    - `encoder_k`: loaded if present, else copied from the (initialised) `encoder_q`;
    - `queue`/`queue_ptr`: loaded if present and `load_queue`, else left at their seeded initialisation;
    - unexpected keys are reported, never silently dropped.
    """
    ckpt = read_checkpoint(path)
    kind, enc_q_src, extras = split_checkpoint(ckpt, path)
    report = InitReport(path=str(path), kind=kind)
    want = getattr(getattr(moco, "moco_cfg", None), "arch", None)
    found = ckpt.get("arch") if isinstance(ckpt.get("arch"), str) else infer_arch(enc_q_src)
    if want is not None and found is not None and found != want:
        raise UserError(f"{path} holds a {found} but moco.arch={want}; set moco.arch={found} or use another "
                        "init.checkpoint")

    def load_encoder(enc: nn.Module, src: dict[str, torch.Tensor], prefix: str) -> None:
        target = enc.state_dict()
        missing_backbone = [k for k in target if not k.startswith("fc.") and k not in src]
        if missing_backbone:
            raise UserError(f"{path}: {len(missing_backbone)} backbone keys missing for {prefix}, e.g. "
                            f"{missing_backbone[:3]} (wrong arch? check the checkpoint's 'arch')")
        new = {}
        for k, v in target.items():
            if k in src and tuple(src[k].shape) == tuple(v.shape):
                new[k] = src[k].to(v.dtype)
                report.loaded += 1
            elif k in src:
                report.missing.append(f"{prefix}{k}")
                shapes = f"{tuple(src[k].shape)} != {tuple(v.shape)}"
                report.notes.append(f"{prefix}{k} shape {shapes}: kept fresh")
                new[k] = v
            else:
                report.missing.append(f"{prefix}{k}")
                new[k] = v
        extra_backbone = [k for k in src if k not in target and not k.startswith("fc.")]
        if extra_backbone:
            raise UserError(f"{path}: {len(extra_backbone)} backbone keys of {prefix} have no place in "
                            f"moco.arch={want}, e.g. {extra_backbone[:3]} (wrong arch?)")
        report.unexpected.extend(f"{prefix}{k}" for k in src if k not in target)
        enc.load_state_dict(new, strict=True)

    load_encoder(moco.encoder_q, enc_q_src, "encoder_q.")
    enc_k_src = {k[len("encoder_k."):]: v for k, v in extras.items() if k.startswith("encoder_k.")}
    if enc_k_src:
        load_encoder(moco.encoder_k, enc_k_src, "encoder_k.")
    else:
        moco.encoder_k.load_state_dict(moco.encoder_q.state_dict())
        report.notes.append("encoder_k copied from encoder_q")
    for name in ("queue", "queue_ptr"):
        buf = getattr(moco, name)
        if name in extras and load_queue and tuple(extras[name].shape) == tuple(buf.shape):
            buf.copy_(extras[name].to(buf.dtype))
            report.loaded += 1
        elif name in extras:
            why = "load_queue off" if not load_queue else "shape differs"
            report.notes.append(f"{name} not loaded ({why}): seeded re-initialisation")
        else:
            report.missing.append(name)
    report.unexpected.extend(k for k in extras
                             if not k.startswith("encoder_k.") and k not in ("queue", "queue_ptr"))
    return report
