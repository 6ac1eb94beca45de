"""A training run of the experiments: a preset plus overrides, from given initial weights, resumable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from configs import CONFIG_DIR

TRAIN_PRESET = CONFIG_DIR / "demo.yaml"  # the stage-2 recipe of the demo and the ablation


def init_overrides(init: Path, seed: int) -> list[str]:
    """The overrides that start a run of seed `seed` from the weights in `init`."""
    return [f"seed={seed}", "init.kind=checkpoint", f"init.checkpoint={init}"]


def train_from(init: Path, out_dir: Path, seed: int, overrides: Sequence[str], device: str,
               preset: Path = TRAIN_PRESET) -> tuple[Path, dict[str, Any]]:
    """Train `preset` + `overrides` from `init` in `out_dir` (resumes a run left there); returns (the last
    checkpoint, the training summary)."""
    from training.checkpoint import LAST
    from training.config import load_train_config
    from training.trainer import train

    cfg = load_train_config(preset, [*init_overrides(init, seed), *overrides])
    summary = train(cfg, out_dir, resume="auto", device=device, preset=str(preset))
    return Path(summary["checkpoint"] or out_dir / "checkpoints" / LAST), summary  # None: already done
