"""Offline stage 1 (the shipped init): a self-supervised ResNet-18 from a seeded random one, no network.

    python scripts/pretrain_offline.py [--config configs/pretrain_offline.yaml] [--output-dir
        runs/pretrain_offline] [--seed 0] [--device auto] [--export PATH] [key.sub=value ...]

Trains the stage-1 config (default `configs/pretrain_offline.yaml`; resumes an interrupted run) and
writes the query encoder as an fp16 state dict (default `<output-dir>/stage1_resnet18.pth`) and prints
its sha256. The shipped `pretrained_models/stage1_resnet18.pth` and its recipe: pretrained_models/README.md.
`make demo` never re-runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import file_digest, run_cli  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None,
                        help="stage-1 preset (default configs/pretrain_offline.yaml)")
    parser.add_argument("--output-dir", default="runs/pretrain_offline")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init and of training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--export", default=None, help="where to write the fp16 encoder")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="stage-1 config overrides")
    args = parser.parse_args(argv)
    from experiments.stage1 import STAGE1_PRESET, pretrain_offline

    t0 = time.perf_counter()
    summary = pretrain_offline(Path(args.output_dir), args.seed, args.device, args.overrides,
                               Path(args.export) if args.export else None, Path(args.config or STAGE1_PRESET))
    print(f"done: step {summary['step']} in {time.perf_counter() - t0:.0f} s; wrote {summary['export']} "
          f"(sha256 {file_digest(summary['export'])})")
    return 0


if __name__ == "__main__":
    run_cli(main)
