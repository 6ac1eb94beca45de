"""Evaluate SCOT-style matching and PCK on a benchmark (SCOT protocol); thin CLI over `evaluate`.

    python validation_and_test/test.py --dataset pfwillow --weights runs/x/checkpoints/last.pth
    torchrun --nproc_per_node=4 validation_and_test/test.py --dataset spair

Settings: dataclass defaults <- `configs/eval/<dataset>.yaml` (or `--config`) <- flags. Writes
`results.json`, `per_pair.csv`, `config.yaml`, `pck_curve.png` and `per_class.png` (`--no-plots`: not the
PNGs) to `--output-dir` (default `runs/eval/<dataset>-<time>`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import run_cli  # noqa: E402
from validation_and_test.config import eval_parent_parser, parse_ids, resolve_config  # noqa: E402
from validation_and_test.run import run_evaluation  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[eval_parent_parser()],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = argparse.SUPPRESS
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--split", choices=("trn", "val", "test"), default=d, help="split (default test)")
    ev.add_argument("--pfpascal-kps", dest="pfpascal_kps", choices=("mat", "csv"), default=d,
                    help="PF-PASCAL keypoints: .mat files (default) or the test CSV columns (recorded, "
                         "not comparable; thres img only)")
    ev.add_argument("--hyperpixel", type=parse_ids, default=d, help="hyperpixel ids, e.g. 2,12,13,15")
    ev.add_argument("--alpha", type=float, nargs="+", default=d, help="PCK alphas (default 0.05 0.1 0.15)")
    ev.add_argument("--output-dir", dest="output_dir", default=d, help="default runs/eval/<dataset>-<time>")
    ev.add_argument("--vis-dir", dest="vis_dir", default=d, help="write PNGs of the pairs here")
    ev.add_argument("--overwrite", action="store_true", help="replace a complete result in --output-dir")
    ev.add_argument("--no-plots", dest="plots", action="store_false",
                    help="do not write pck_curve.png and per_class.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, preset, ids_given = resolve_config(args)
    run_evaluation(cfg, preset, ids_given, args.overwrite, args.plots)
    return 0


if __name__ == "__main__":
    run_cli(main)
