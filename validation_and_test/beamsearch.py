"""Hyperpixel layer selection by beam search (`evaluation.md` §13); thin CLI over `layer_search`.

    python validation_and_test/beamsearch.py --dataset pfpascal --weights W --score pck
    python validation_and_test/beamsearch.py --dataset pfpascal --weights W --classmap 0 --exp2 0.5
    python validation_and_test/beamsearch.py --dataset spair --weights W --score cycle --max-pairs 200

Split: `val` by default; PF-WILLOW has none, so it searches `test` and flags search.json `test_tuned`.
`--score pck` uses test.py's settings for the dataset (`configs/eval/<dataset>.yaml` or `--config`, then the
matching flags given here), so a found set scores the same in the `test.py` run printed at the end.
`--bases 0-3 --duplicate break` reproduces the original's search (bases range(beam), `break`).
Writes `search.json` (best set, every scored set, settings, split, weights) to `--output-dir`
(default `runs/search/<dataset>-<score>-<time>`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import check_writable_dir, run_cli  # noqa: E402
from configs.validate import check_values  # noqa: E402

DATASET_CHOICES = ("pfpascal", "pfwillow", "spair", "demo")
# flags forwarded to test.py's config resolution (dest = EvalConfig key)
CONFIG_FLAGS = ("dataset", "datapath", "backbone", "weights", "seed", "thres", "sim", "exp1", "exp2", "eps",
                "sinkhorn_iters", "classmap", "hpf", "device", "fast", "max_pairs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = argparse.SUPPRESS  # only flags given on the command line override test.py's preset
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASET_CHOICES, default=d, help="benchmark (default pfpascal)")
    data.add_argument("--datapath", default=d, help="folder holding PF-PASCAL/, PF-WILLOW/, SPair-71k/")
    data.add_argument("--split", choices=("trn", "val", "test"), default=None,
                      help="default val (test for PF-WILLOW, flagged test-tuned)")
    data.add_argument("--max-pairs", dest="max_pairs", type=int, default=d, help="first N pairs of the split")
    model = p.add_argument_group("model")
    model.add_argument("--backbone", choices=("auto", "resnet18", "resnet34", "resnet50", "resnet101"),
                       default=d)
    model.add_argument("--weights", default=d, help="imagenet, random, or a checkpoint path")
    model.add_argument("--seed", type=int, default=d, help="seed of --weights random")
    search = p.add_argument_group("search")
    search.add_argument("--score", choices=("pck", "cycle"), default="pck",
                        help="pck: validation PCK@alpha; cycle: label-free cycle re-localisation error")
    search.add_argument("--beam", type=int, default=4, help="sets kept per depth")
    search.add_argument("--depth", type=int, default=8, help="maximum set size")
    search.add_argument("--bases", default=None, help="base ids, e.g. 0-3 (original); default every id")
    search.add_argument("--candidates", default=None, help="ids that may extend a set; default every id")
    search.add_argument("--duplicate", choices=("continue", "break"), default="continue",
                        help="a duplicate extension is skipped (continue) or ends its parent's loop "
                             "(original)")
    search.add_argument("--alpha", dest="search_alpha", type=float, default=0.1,
                        help="PCK alpha of --score pck")
    search.add_argument("--cache-mb", dest="cache_mb", type=float, default=8192.0,
                        help="feature cache budget (all block maps of every image, native resolution)")
    match = p.add_argument_group("matching (--score pck; defaults: test.py's preset for the dataset)")
    match.add_argument("--thres", choices=("auto", "img", "bbox"), default=d)
    match.add_argument("--sim", choices=("OTGeo", "OT", "cosGeo", "cos"), default=d)
    match.add_argument("--exp1", type=float, default=d)
    match.add_argument("--exp2", type=float, default=d, help="the paper's search commands: 0.5")
    match.add_argument("--eps", type=float, default=d)
    match.add_argument("--sinkhorn-iters", dest="sinkhorn_iters", type=int, default=d)
    match.add_argument("--classmap", type=int, choices=(0, 1), default=d,
                       help="the paper's search commands: 0")
    match.add_argument("--hpf", action="store_true", default=d)
    cyc = p.add_argument_group("label-free score (--score cycle)")
    cyc.add_argument("--crop-seed", dest="crop_seed", type=int, default=0,
                     help="crops: rng([seed, pair index])")
    cyc.add_argument("--patch", type=int, default=128, help="crop side (resized-frame px)")
    cyc.add_argument("--rotate", type=float, default=10.0, help="rotation range (+- degrees)")
    cyc.add_argument("--flip-prob", dest="flip_prob", type=float, default=0.5)
    cyc.add_argument("--temperature", type=float, default=0.0007)
    run = p.add_argument_group("run")
    run.add_argument("--progress", action="store_true", help="print every set as it is scored")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d)
    run.add_argument("--fast", action="store_true", default=d, help="allow TF32 on CUDA (recorded)")
    run.add_argument("--output-dir", dest="search_output_dir", default=None)
    run.add_argument("--config", default=None, help="YAML preset replacing configs/eval/<dataset>.yaml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_values(vars(args), "command line")
    if args.search_output_dir:
        check_writable_dir(args.search_output_dir, "--output-dir")
    from validation_and_test.cycle_score import CycleScoreSettings
    from validation_and_test.layer_search import (
        BeamSettings,
        parse_id_ranges,
        resolve_search_config,
        run_layer_search,
    )

    flags = {k: getattr(args, k) for k in CONFIG_FLAGS if hasattr(args, k)}
    cfg, preset, fell_back = resolve_search_config(flags, args.config, args.split)
    beam = BeamSettings(beam=args.beam, depth=args.depth,
                        bases=parse_id_ranges(args.bases) if args.bases else None,
                        candidates=parse_id_ranges(args.candidates) if args.candidates else None,
                        on_duplicate=args.duplicate)
    cycle = CycleScoreSettings(seed=args.crop_seed, patch=args.patch, rotate_deg=args.rotate,
                               flip_prob=args.flip_prob, temperature=args.temperature)
    run_layer_search(cfg, beam, args.score, args.search_alpha, cycle, args.search_output_dir, preset,
                     args.config, fell_back, args.cache_mb, progress=args.progress)
    return 0


if __name__ == "__main__":
    run_cli(main)
