"""Walk quality of initial weights (before any training step): the table of pretrained_models/README.md.

    python scripts/walk_quality.py NAME=WEIGHTS [NAME=WEIGHTS ...] [--willow DIR] [--output-dir DIR]

Per init (`experiments.walk.init_quality`): the cycle loss on demo val crops (and on the demo trn crops
that stage 2 trains on) against its crop-centre baseline, the hard-argmax walk accuracy, PCK on demo val
(as is and with BN re-estimated) and, with `--willow` (the folder holding PF-WILLOW/), on every 9th
PF-WILLOW test pair (reported, never used to choose). WEIGHTS: a checkpoint path, or `random:SEED` for a
seeded random ResNet-18. Writes <output-dir>/walk_quality.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import UserError, atomic_write_json, run_cli  # noqa: E402


def format_row(name: str, r: dict) -> str:
    willow = r.get("pfwillow_every9_pck")
    trn = r["trn"]
    cells = [f"{r['loss_cycle']:.0f} / {r['centre_baseline']:.0f} ({r['loss_ratio']:.2f})",
             f"{trn['loss_cycle']:.0f} / {trn['centre_baseline']:.0f} ({trn['loss_ratio']:.2f})",
             f"{100 * r['hard_walk_acc']:.1f} / {100 * trn['hard_walk_acc']:.1f}",
             f"{r['demo_val_pck']['0.05']:.1f} / {r['demo_val_pck']['0.1']:.1f}",
             f"{r['demo_val_pck_bn']['0.05']:.1f} / {r['demo_val_pck_bn']['0.1']:.1f}",
             f"{willow['0.05']:.1f} / {willow['0.1']:.1f}" if willow else "-"]
    return f"| {name} | " + " | ".join(cells) + " |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inits", nargs="+", metavar="NAME=WEIGHTS")
    parser.add_argument("--willow", default=None, help="folder holding PF-WILLOW/ (every 9th test pair)")
    parser.add_argument("--output-dir", default="runs/walk_quality")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from experiments.walk import init_quality
    from experiments.weights import write_initial_weights

    out = Path(args.output_dir)
    rows = {}
    for item in args.inits:
        name, sep, weights = item.partition("=")
        if not sep or not weights:
            raise UserError(f"expected NAME=WEIGHTS, got {item!r}")
        if weights.startswith("random:"):
            weights = str(write_initial_weights(out / name / "random_init.pth", "resnet18",
                                                int(weights.split(":", 1)[1])))
        rows[name] = init_quality(weights, out / name, args.device, args.willow)
        print(format_row(name, rows[name]), flush=True)
    atomic_write_json(out / "walk_quality.json", rows)
    print("\n| init | val crops: cycle loss / centre baseline, px² (ratio) | trn crops: the same | hard walk "
          "acc. val / trn (%) | demo val PCK 0.05 / 0.1 | demo val, BN re-est. | PF-WILLOW every 9th, 0.05 / "
          "0.1 |\n|---|---|---|---|---|---|---|")
    print("\n".join(format_row(n, r) for n, r in rows.items()))
    return 0


if __name__ == "__main__":
    run_cli(main)
