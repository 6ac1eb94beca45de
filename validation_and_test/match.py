"""Match two images of your own with the evaluation matcher; thin CLI over `Correspondence`.

    python validation_and_test/match.py SRC TRG --src-kps "120,80;200,150" --output-dir runs/match/x
    python validation_and_test/match.py SRC TRG --grid 8 --preset spair --weights runs/x/checkpoints/last.pth

Settings: `configs/eval/<preset>.yaml` (default pfpascal) <- flags (the matching flags of test.py).
Writes to `--output-dir`: `matches.json` (each source point, its predicted target point, its confidence,
and the settings and weights identity as in results.json), `matches.png` and `warp.png`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import REPO_ROOT  # noqa: E402
from configs.runtime import (  # noqa: E402
    COMPLETE_KEY,
    atomic_write_json,
    claim_output_dir,
    get_logger,
    release_output_dir,
    run_cli,
    unique_suffix,
)
from data import DATASETS  # noqa: E402
from validation_and_test.config import eval_parent_parser, parse_ids, resolve_config  # noqa: E402
from validation_and_test.correspondence import Correspondence, DenseMatches, MatchResult  # noqa: E402

__all__ = ["Correspondence", "DenseMatches", "MatchResult", "build_parser", "main", "matches_record"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                parents=[eval_parent_parser(data_flags=False)],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = argparse.SUPPRESS
    p.add_argument("src", help="source image (any format Pillow reads)")
    p.add_argument("trg", help="target image")
    io = p.add_argument_group("keypoints and outputs")
    io.add_argument("--src-kps", dest="src_kps", default=None,
                    help='source keypoints "x1,y1;x2,y2;..." (pixels) or a .json/.csv file of them')
    io.add_argument("--grid", type=int, default=8,
                    help="without --src-kps: an N x N grid over the source (over its CAM-salient region "
                         "when CAM is on)")
    io.add_argument("--preset", dest="dataset", choices=sorted(DATASETS), default=d,
                    help="matching settings of configs/eval/<preset>.yaml (default pfpascal)")
    io.add_argument("--hyperpixel", type=parse_ids, default=d, help="hyperpixel ids, e.g. 2,12,13,15")
    io.add_argument("--output-dir", dest="output_dir", default=d, help="default runs/match/<time>")
    io.add_argument("--no-figures", dest="figures", action="store_false", help="write matches.json only")
    io.add_argument("--overwrite", action="store_true",
                    help="replace a complete matches.json in --output-dir")
    return p


def matches_record(result: MatchResult, src: str, trg: str, keypoint_source: str) -> list | dict:
    """The pair part of matches.json: images, keypoint source, and one entry per source keypoint."""
    rows = []
    for (sx, sy), (tx, ty), c in zip(result.src_keypoints.tolist(), result.keypoints.tolist(),
                                     result.confidence.tolist()):
        found = tx == tx and ty == ty  # NaN: no source box holds the keypoint
        rows.append({"src": [round(sx, 3), round(sy, 3)],
                     "trg": [round(tx, 3), round(ty, 3)] if found else None,
                     "confidence": round(c, 6) if found else None})
    return {"src_image": {"path": src, "size": list(result.src_size)},
            "trg_image": {"path": trg, "size": list(result.trg_size)},
            "keypoint_source": keypoint_source, "n_keypoints": len(rows),
            "n_unmatched": sum(r["trg"] is None for r in rows), "matches": rows,
            "dense": {"grid": list(result.dense.grid), "mean_confidence": round(float(
                result.dense.confidence.mean()), 6)},
            "chance_confidence": round(1.0 / result.n_target_hyperpixels, 6)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from data.io import read_rgb_uint8
    from validation_and_test.keypoints_io import check_inside, parse_keypoints

    cfg, preset, ids_given = resolve_config(args)
    src_img, trg_img = read_rgb_uint8(args.src), read_rgb_uint8(args.trg)  # missing / unreadable: one line
    src_kps = None
    if args.src_kps is not None:
        src_kps = parse_keypoints(args.src_kps)
        check_inside(src_kps, (int(src_img.shape[2]), int(src_img.shape[1])))
    elif args.grid < 1:
        from configs.runtime import UserError

        raise UserError(f"--grid must be at least 1, got {args.grid}")
    out_dir = claim_output_dir(cfg.output_dir or REPO_ROOT / "runs" / "match" / unique_suffix(),
                               args.overwrite, marker="matches.json")
    log = get_logger("match")
    corr = Correspondence(cfg, preset, ids_given)
    result = corr(src_img, trg_img, src_kps, grid=args.grid)
    how = f"--src-kps {args.src_kps}" if src_kps is not None else f"--grid {args.grid}"
    record = {**matches_record(result, args.src, args.trg, how), **corr.record(),
              "timings": {"match_s": round(result.seconds, 3)}}
    if args.figures:
        from validation_and_test.match_figures import save_matches_figure, save_warp_figure

        save_matches_figure(out_dir / "matches.png", src_img, trg_img, result)
        save_warp_figure(out_dir / "warp.png", src_img, trg_img, result)
    atomic_write_json(out_dir / "matches.json", {**record, COMPLETE_KEY: True})  # last: marks completion
    release_output_dir(out_dir)
    log.info("%d keypoints matched (%d without a source box) in %.2f s on %s; %s/matches.json%s",
             record["n_keypoints"], record["n_unmatched"], result.seconds, corr.device, out_dir,
             ", matches.png, warp.png" if args.figures else "")
    return 0


if __name__ == "__main__":
    run_cli(main)
