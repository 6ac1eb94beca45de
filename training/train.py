"""Train image-level MoCo + pixel-level cycle-contrastive features.

    python training/train.py --config configs/train/pfpascal_r50.yaml [--output-dir DIR] \
        [--resume auto|PATH | --overwrite] [--device auto|cpu|cuda] [key.sub=value ...]
    torchrun --nproc_per_node=8 training/train.py --config ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from configs.runtime import run_cli  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/train/pfpascal_r50.yaml")
    parser.add_argument("--output-dir", default=None, help="run folder (default runs/<run name>)")
    parser.add_argument("--resume", default=None,
                        help="'auto' = newest valid checkpoint of this run (a fresh start in a folder "
                             "without checkpoint files), or a path")
    parser.add_argument("--overwrite", action="store_true",
                        help="move an existing run in the run folder aside (to <folder>.old-<time>) first")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_intermixed_args(argv)  # overrides may come before or after flags
    from training.config import load_train_config
    from training.trainer import train

    cfg = load_train_config(args.config, args.overrides)
    summary = train(cfg, args.output_dir, resume=args.resume, device=args.device, preset=args.config,
                    overwrite=args.overwrite)
    metrics = summary["last_metrics"]
    shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "loss_moco", "loss_cycle", "moco_top1")
                      if isinstance(metrics.get(k), float))
    print(f"done: step {summary['step']}, {shown}; run folder {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
