"""Offline stage 1: a self-supervised ResNet-18 from a seeded random one, on the demo trn images only.

`pretrain_offline` trains a stage-1 preset (default `configs/pretrain_offline.yaml`: known-correspondence
dense contrast, the shipped init's recipe; `configs/pretrain_offline_cycle.yaml`: the pixel-level cycle alone)
in a resumable run folder and exports the query encoder as an fp16 state dict. No network and no benchmark
image: the demo trn pairs are generated from scikit-image's bundled photos (the demo's trn split only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from configs import CONFIG_DIR
from experiments.runs import train_from
from experiments.weights import export_half, write_initial_weights

STAGE1_PRESET = CONFIG_DIR / "pretrain_offline.yaml"


def pretrain_offline(out_dir: Path, seed: int = 0, device: str = "auto", overrides: Sequence[str] = (),
                     export: Path | None = None, preset: Path = STAGE1_PRESET) -> dict[str, Any]:
    """Train stage 1 (`preset` + `overrides`) in `out_dir/train` (resumes) from `out_dir/random_init.pth`
    (seed `seed`); write the fp16 encoder to `export` (default `out_dir/stage1_resnet18.pth`). Returns the
    training summary plus "export" (the written path)."""
    from data.demo import ensure_demo_data
    ensure_demo_data()
    out_dir = Path(out_dir)
    init = write_initial_weights(out_dir / "random_init.pth", "resnet18", seed)
    last, summary = train_from(init, out_dir / "train", seed, overrides, device, preset=preset)
    summary["export"] = str(export_half(last, Path(export or out_dir / "stage1_resnet18.pth")))
    return summary
