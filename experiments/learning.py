"""Does stage 2 learn? A short pixel-level-only run on demo trn from an init, judged on its own cycle
loss (against the crop-centre baseline, and against the init's loss on the same crops) and on demo val PCK
(against the init's).

The run is the ablation's `pixel_only` row (configs/demo.yaml + moco.loss_weight=0, 60 steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.ablation import BRANCH_OVERRIDES, QUIET
from experiments.evaluation import evaluate_weights
from experiments.runs import train_from


def end_loss_ratio(metrics_path: Path, last: int = 5) -> float:
    """Mean cycle loss over the last `last` logged steps divided by the mean crop-centre baseline there."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss_cycle" in r and "cycle_centre_baseline" in r][-last:]
    return sum(r["loss_cycle"] for r in rows) / sum(r["cycle_centre_baseline"] for r in rows)


def pixel_level_check(init: Path, out: Path, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Train the pixel-only row from `init` into `out/train` (resumes), evaluate init and result on demo val
    -> {"loss_ratio": end cycle loss / centre baseline, "walk_init", "walk_trained": `walk_quality` on the
    same 180 demo trn crops, "pck_init", "pck_trained": {alpha: PCK (%)}}."""
    from experiments.walk import walk_quality

    trained, _ = train_from(init, out / "train", seed, [*QUIET, *BRANCH_OVERRIDES["pixel_only"]], device)
    settings = {"split": "val"}
    return {"loss_ratio": end_loss_ratio(out / "train" / "metrics.jsonl"),
            "walk_init": walk_quality(init, "trn", rounds=2, device=device),
            "walk_trained": walk_quality(trained, "trn", rounds=2, device=device),
            "pck_init": evaluate_weights(init, out / "eval_init_val", device, settings)["pck"],
            "pck_trained": evaluate_weights(trained, out / "eval_trained_val", device, settings)["pck"]}
