"""Initial weights for the experiments: seeded random ResNets and the shipped offline stage-1 init.

The shipped file is `pretrained_models/stage1_resnet18.pth` (fp16 plain torchvision state dict, 128-d head),
made by `scripts/pretrain_offline.py` (`experiments.stage1`); its sha256 is `STAGE1_SHA256` and every
loader checks it (`shipped_init`).
"""

from __future__ import annotations

from pathlib import Path

from configs import REPO_ROOT
from configs.runtime import UserError, atomic_torch_save, file_digest

STAGE1_FILE = REPO_ROOT / "pretrained_models" / "stage1_resnet18.pth"
STAGE1_SHA256 = "5ad897364c0b862a3e8d43db90edea6a2fd9f64ea1315c5edd25e063c28a6622"
INIT_KINDS = ("shipped", "random")


def write_initial_weights(path: Path, arch: str, seed: int) -> Path:
    """Seeded torchvision ResNet with a 128-d linear head, saved as a plain state dict (read by every CLI)."""
    if not path.is_file():
        from models.weights import load_resnet

        atomic_torch_save(load_resnet(arch, "random", seed)[0].state_dict(), path)
    return path


def shipped_init(path: Path = STAGE1_FILE) -> Path:
    """The shipped stage-1 file after checking its sha256; one-line `UserError` when absent or altered."""
    if not path.is_file():
        raise UserError(f"{path} not found: the shipped stage-1 init is part of the repository (git checkout "
                        f"it, or rebuild it with: python scripts/pretrain_offline.py)")
    got = file_digest(path)
    if got != STAGE1_SHA256:
        raise UserError(f"{path}: sha256 {got[:16]}... does not match the shipped {STAGE1_SHA256[:16]}... "
                        f"(a changed or truncated file; git checkout it, or rebuild it with "
                        f"python scripts/pretrain_offline.py)")
    return path


def initial_weights(kind: str, path: Path, seed: int) -> Path:
    """`kind` "shipped" -> the verified shipped init (the same for every seed); "random" -> a seeded random
    ResNet-18 written to `path`; any other value: a ResNet-18 checkpoint file (the same for every seed)."""
    if kind == "shipped":
        return shipped_init()
    if kind == "random":
        return write_initial_weights(path, "resnet18", seed)
    if Path(kind).is_file():
        return Path(kind)
    raise UserError(f"unknown init {kind!r}: {', '.join(INIT_KINDS)} or a checkpoint file")


def export_half(checkpoint: Path, path: Path) -> Path:
    """A training checkpoint's query encoder as a plain fp16 torchvision state dict (integer buffers kept)."""
    from models.weights import load_resnet

    net, _, _ = load_resnet("auto", str(checkpoint))
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    atomic_torch_save(sd, path)
    return path

