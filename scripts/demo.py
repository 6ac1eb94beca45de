"""The offline demo (`make demo`): the paper's stage 2 from the shipped offline stage-1 init.

    python scripts/demo.py [--output-dir runs/demo] [--device auto] [--seed 0] [key.sub=value ...]

No data and no network needed: the demo benchmark is generated from photographs bundled with scikit-image
(`data.demo`), and the stage-1 init is the committed, sha256-checked pretrained_models/stage1_resnet18.pth
(made by scripts/pretrain_offline.py; the demo never re-runs it). Prints PCK on the demo test pairs for: a
seeded random ResNet-18 and its BN-re-estimated copy (the reference for the whole pipeline); the shipped
init and its BN-re-estimated copy; the init trained with configs/demo.yaml (MoCo + pixel-level cycle, the
paper's setting: stage 2 from a stage-1 init) and its BN-re-estimated copy (the like-for-like comparison).
Writes `results.json` and figures to `<output-dir>/figs/`. Trailing `key.sub=value` pairs override the
training config; `--seed` seeds the random reference and training. Re-running resumes training and reuses
finished evaluations. `scripts/ablation.py` runs each branch alone over several seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import run_cli  # noqa: E402
from experiments.demo import run_demo  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random reference and of training")
    parser.add_argument("--max-pairs", type=int, default=None,
                        help="evaluate only the first N >= 1 test pairs (default: all)")
    parser.add_argument("--bn-pairs", type=int, default=None,
                        help="BN re-estimation on the first N >= 1 demo trn pairs only (default: all)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="training config overrides")
    args = parser.parse_args(argv)
    run_demo(Path(args.output_dir), args.device, args.seed, args.max_pairs, args.bn_pairs, args.overrides)
    return 0


if __name__ == "__main__":
    run_cli(main)
