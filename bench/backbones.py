"""Time per pair and peak memory of each backbone under the same matcher: features and matching, cold and
from the on-disk feature cache.

    python bench/backbones.py --pairs 4                 # the README table (CPU, random weights)
    python bench/backbones.py --device cuda --pairs 20

Rows: the ResNet-50 and ResNet-101 PF-PASCAL presets (SCOT: OT + RHM, CAM marginals) and ViT-S/14
(DINOv2) and ViT-B/16 (DINO) with block ids 9,11 (SCOT with uniform marginals, and nearest neighbour).
Random weights (timing does not depend on them). Pairs: generated look-alike pairs (`bench/lookalike.py`)
at the PF-PASCAL / SPair image size 500 x 375, resized by the benchmark rule (long side 300), each image in
one pair (a cold in-memory cache). `cold`: backbone (+ CAM) on every image; `cached`: the same pairs again
with `--feature-cache` filled by the cold pass (files read back instead of running the network). Each phase
runs `--repeats` times (cold: into an emptied cache folder) after one unmeasured warm-up pair (the first
pass of a process pays one-off costs), and the fastest run is reported, so that load from other jobs on a
shared CPU inflates the numbers less. Each row runs in a fresh child process so that
its peak resident memory (`ru_maxrss`) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = {  # label -> (backbone, ids, matcher)
    "ResNet-50 (pfpascal preset)": ("resnet50", (2, 12, 13, 15), "scot"),
    "ResNet-101 (pfpascal_r101 preset)": ("resnet101", (2, 22, 24, 25, 27, 28, 29), "scot"),
    "ViT-S/14 DINOv2": ("timm:vit_small_patch14_dinov2.lvd142m", (9, 11), "scot"),
    "ViT-S/14 DINOv2, nn": ("timm:vit_small_patch14_dinov2.lvd142m", (9, 11), "nn"),
    "ViT-B/16 DINO": ("timm:vit_base_patch16_224.dino", (9, 11), "scot"),
    "ViT-B/16 DINO, nn": ("timm:vit_base_patch16_224.dino", (9, 11), "nn"),
}


def measure(label: str, pairs: int, device: str, cache_dir: str, repeats: int = 2) -> dict:
    """One row, in this process: cold pass, then cached pass over the same pairs."""
    import torch

    from bench.lookalike import LookalikePairs, lookalike_image
    from configs.runtime import resolve_device, set_faithful_numerics
    from models.backbone_loader import load_backbone
    from validation_and_test.evaluate import Matcher, MatchSettings, evaluate
    from validation_and_test.feature_store import DiskFeatureCache

    name, ids, matcher_kind = ROWS[label]
    dev = resolve_device(device)
    set_faithful_numerics(dev, False)
    kps = torch.tensor([[100.0, 100.0], [250.0, 200.0], [400.0, 300.0]])
    data = LookalikePairs.from_pairs([(lookalike_image(2 * k, (375, 500))[0],
                                       lookalike_image(2 * k + 1, (375, 500))[0], kps, kps)
                                      for k in range(pairs)])
    backbone, record = load_backbone(name, "random", 0)
    out = {"label": label, "backbone": name, "ids": list(ids), "matcher": matcher_kind, "pairs": pairs}
    warm = LookalikePairs.from_pairs([(lookalike_image(1000, (375, 500))[0],
                                       lookalike_image(1001, (375, 500))[0], kps, kps)])
    evaluate(Matcher(backbone, MatchSettings(matcher=matcher_kind), dev, cache_mb=0), warm, ids, thres="bbox")
    for phase in ("cold", "cached"):
        for _ in range(repeats):
            if phase == "cold":
                shutil.rmtree(cache_dir, ignore_errors=True)
            matcher = Matcher(backbone, MatchSettings(matcher=matcher_kind), dev, cache_mb=0,
                              disk_cache=DiskFeatureCache(cache_dir, record))
            start = time.perf_counter()
            evaluate(matcher, data, ids, thres="bbox")
            total = time.perf_counter() - start
            t = matcher.timings
            run = {"s_per_pair": total / pairs, "features_s_per_pair": (t["features"] + t["cam"]) / pairs,
                   "matching_s_per_pair": (t["match"] + t["transfer"]) / pairs,
                   "disk_hits": matcher.disk.hits}
            if phase not in out or run["s_per_pair"] < out[phase]["s_per_pair"]:
                out[phase] = run
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="runs per phase; the fastest is reported")
    p.add_argument("--rows", nargs="*", default=list(ROWS), help="labels of the rows to run")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one row, JSON on stdout
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.pairs, args.device, args.cache_dir, args.repeats)))
        return 0
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.pairs} pairs of 500x375 images (long side 300), random weights, fastest of {args.repeats}")
    header = (f"{'backbone':36s} {'ids':>20s} {'cold s/pair':>11s} {'(feat':>7s} {'match)':>7s} "
              f"{'cached s/pair':>13s} {'(feat':>7s} {'match)':>7s} {'peak RSS MB':>11s}")
    print(header)
    for label in args.rows:
        with tempfile.TemporaryDirectory() as cache:
            argv = [sys.executable, __file__, "--one", label, "--pairs", str(args.pairs), "--device",
                    args.device, "--cache-dir", cache, "--repeats", str(args.repeats)]
            res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{label:36s} failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        c, h = r["cold"], r["cached"]
        print(f"{label:36s} {','.join(map(str, r['ids'])):>20s} {c['s_per_pair']:11.3f} "
              f"{c['features_s_per_pair']:7.3f} {c['matching_s_per_pair']:7.3f} {h['s_per_pair']:13.3f} "
              f"{h['features_s_per_pair']:7.3f} {h['matching_s_per_pair']:7.3f} {r['peak_rss_mb']:11.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
