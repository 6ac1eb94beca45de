"""Hyperpixel layer selection by beam search (HPF/SCOT style); thin CLI over `layer_search`.

    python validation_and_test/beamsearch.py --dataset pfpascal --weights W --score pck
    python validation_and_test/beamsearch.py --dataset pfpascal --weights W --classmap 0 --exp2 0.5
    python validation_and_test/beamsearch.py --dataset spair --weights W --score cycle --max-pairs 200

Split: `val` by default; PF-WILLOW has none, so it searches `test` and flags search.json `test_tuned`.
`--score pck` uses test.py's settings for the dataset (`configs/eval/<dataset>.yaml` or `--config`, then the
matching flags given here), so a found set scores the same in the `test.py` run printed at the end.
`--bases 0-3 --duplicate break` reproduces the original's search (bases range(beam), `break`).
Writes `search.json` (best set, every scored set, settings, split, weights) to `--output-dir`
(default `runs/search/<dataset>-<score>-<time>`); a folder holding a complete `search.json` is refused
unless `--overwrite`, and one in use by another run is refused (`.lock`), as for `test.py`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import run_cli  # noqa: E402
from configs.validate import check_values  # noqa: E402
from validation_and_test.config import CONFIG_KEYS, eval_parent_parser, parse_ids  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[eval_parent_parser()],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    search = p.add_argument_group("search")
    search.add_argument("--split", choices=("trn", "val", "test"), default=None,
                        help="default val (test for PF-WILLOW, flagged test-tuned)")
    search.add_argument("--score", choices=("pck", "cycle"), default="pck",
                        help="pck: validation PCK@alpha; cycle: label-free cycle re-localisation error")
    search.add_argument("--beam", type=int, default=4, help="sets kept per depth")
    search.add_argument("--depth", type=int, default=8, help="maximum set size")
    search.add_argument("--bases", type=parse_ids, default=None,
                        help="base ids, e.g. 0-3 (original); default every id")
    search.add_argument("--candidates", type=parse_ids, default=None,
                        help="ids that may extend a set; default every id")
    search.add_argument("--duplicate", choices=("continue", "break"), default="continue",
                        help="a duplicate extension is skipped (continue) or ends its parent's loop "
                             "(original)")
    search.add_argument("--alpha", dest="search_alpha", type=float, default=0.1,
                        help="PCK alpha of --score pck")
    search.add_argument("--cache-mb", dest="search_cache_mb", type=float, default=8192.0,
                        help="feature cache budget (all block maps of every image, native resolution)")
    search.add_argument("--progress", action="store_true", help="print every set as it is scored")
    search.add_argument("--output-dir", dest="search_output_dir", default=None)
    search.add_argument("--overwrite", action="store_true",
                        help="replace a complete search.json in --output-dir")
    cyc = p.add_argument_group("label-free score (--score cycle)")
    cyc.add_argument("--crop-seed", dest="crop_seed", type=int, default=0,
                     help="crops: rng([seed, pair index])")
    cyc.add_argument("--patch", type=int, default=128, help="crop side (resized-frame px)")
    cyc.add_argument("--rotate", type=float, default=10.0, help="rotation range (+- degrees)")
    cyc.add_argument("--flip-prob", dest="flip_prob", type=float, default=0.5)
    cyc.add_argument("--temperature", type=float, default=0.0007)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_values(vars(args), "command line")
    from validation_and_test.layer_scores import CycleScoreSettings
    from validation_and_test.layer_search import (
        BeamSettings,
        resolve_search_config,
        run_layer_search,
    )

    flags = {k: getattr(args, k) for k in CONFIG_KEYS if hasattr(args, k) and k != "split"}
    cfg, preset, fell_back = resolve_search_config(flags, args.config, args.split)
    beam = BeamSettings(beam=args.beam, depth=args.depth,
                        bases=args.bases, candidates=args.candidates,
                        on_duplicate=args.duplicate)
    cycle = CycleScoreSettings(seed=args.crop_seed, patch=args.patch, rotate_deg=args.rotate,
                               flip_prob=args.flip_prob, temperature=args.temperature)
    run_layer_search(cfg, beam, args.score, args.search_alpha, cycle, args.search_output_dir, preset,
                     args.config, fell_back, args.search_cache_mb, progress=args.progress,
                     overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    run_cli(main)
