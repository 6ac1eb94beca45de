"""Network passes of one image (backbone + CAM, what `Matcher` computes per new image) in the contiguous and
the channels_last layout, interleaved so that a shared machine's load falls on both alike.

    python bench/layout_speed.py --device cpu --repeats 7
    python bench/layout_speed.py --device cpu --repeats 7 --bf16   # bf16 autocast, both layouts

Prints the median and the fastest of `--repeats` passes per layout (ms) and the ratio of the medians. Not a
test. Generated look-alike image (`bench/lookalike.py`) at PF-WILLOW's size (300 x 225 after resizing; the CAM
passes at 1.5 and 2.0 of that).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.lookalike import lookalike_image  # noqa: E402
from configs.runtime import resolve_device, set_faithful_numerics  # noqa: E402
from models.backbone_loader import load_backbone  # noqa: E402
from validation_and_test.config import parse_ids  # noqa: E402
from validation_and_test.matcher import Matcher, MatchSettings  # noqa: E402

LAYOUTS = ("contiguous", "channels_last")


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--hyperpixel", type=parse_ids, default=[2, 12, 13, 15])
    p.add_argument("--repeats", type=int, default=7, help="timed passes per layout (after one warm-up each)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (forced, even where emulated)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    set_faithful_numerics(device)
    backbone, _ = load_backbone(args.backbone, "random", seed=0)
    arch = backbone.name
    matchers = {layout: Matcher(backbone, MatchSettings(layout=layout), device, cache_mb=0,
                                bf16=args.bf16) for layout in LAYOUTS}
    img, _ = lookalike_image(0, (225, 300))
    ids = tuple(args.hyperpixel)
    times: dict[str, dict[str, list[float]]] = {k: {"features": [], "cam": []} for k in LAYOUTS}
    for rep in range(args.repeats + 1):
        order = LAYOUTS if rep % 2 == 0 else LAYOUTS[::-1]
        for layout in order:
            m = matchers[layout]
            before = dict(m.timings)
            m._blocks(img, ids)
            if rep:  # the first pass of each layout warms up
                times[layout]["features"].append(m.timings["features"] - before["features"])
                times[layout]["cam"].append(m.timings["cam"] - before["cam"])
    precision = matchers[LAYOUTS[0]].precision("float32")
    print(f"{arch} on {device} ({precision}, {torch.get_num_threads()} threads), one 300x225 image, "
          f"{args.repeats} interleaved passes per layout; ms median (fastest)")
    print(f"{'stage':<18}" + "".join(f"{k:>24}" for k in LAYOUTS) + f"{'contiguous/channels_last':>27}")
    for stage in ("features", "cam", "total"):
        cols = {}
        for layout in LAYOUTS:
            t = times[layout]
            vals = [a + b for a, b in zip(t["features"], t["cam"])] if stage == "total" else t[stage]
            cols[layout] = (1000 * statistics.median(vals), 1000 * min(vals))
        line = f"{stage:<18}" + "".join(f"{med:>14.1f} ({low:>7.1f})" for med, low in cols.values())
        print(line + f"{cols['contiguous'][0] / cols['channels_last'][0]:>27.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
