"""Offline stage 1: the pixel-level cycle alone on the demo trn pairs, from a seeded random ResNet-18.

`pretrain_offline` trains with `configs/pretrain_offline.yaml` (resumable run folder) and exports the query
encoder as an fp16 state dict. No network and no benchmark image: the demo trn pairs are generated from
scikit-image's bundled photos (the demo's trn split only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from configs import CONFIG_DIR
from experiments.weights import export_half, write_initial_weights

STAGE1_PRESET = CONFIG_DIR / "pretrain_offline.yaml"


def pretrain_offline(out_dir: Path, seed: int = 0, device: str = "auto", overrides: Sequence[str] = (),
                     export: Path | None = None) -> dict[str, Any]:
    """Train stage 1 in `out_dir/train` (resumes) from `out_dir/random_init.pth` (seed `seed`); write the
    fp16 encoder to `export` (default `out_dir/stage1_resnet18.pth`). Returns the training summary plus
    "export" (the written path)."""
    from data.demo import ensure_demo_data
    from training.config import load_train_config
    from training.trainer import train

    ensure_demo_data()
    out_dir = Path(out_dir)
    init = write_initial_weights(out_dir / "random_init.pth", "resnet18", seed)
    cfg = load_train_config(STAGE1_PRESET, [f"seed={seed}", "init.kind=checkpoint", f"init.checkpoint={init}",
                                            *overrides])
    summary = train(cfg, out_dir / "train", resume="auto", device=device, preset=str(STAGE1_PRESET))
    last = Path(summary["checkpoint"] or out_dir / "train" / "checkpoints" / "last.pth")
    summary["export"] = str(export_half(last, Path(export or out_dir / "stage1_resnet18.pth")))
    return summary
