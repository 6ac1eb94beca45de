"""Parity of the factorised hyperpixel similarity with the dense reference (or of the bf16 backbone with
float32, `--variant bf16`, or of channels_last network passes with contiguous ones, `--variant
channels_last`), pair by pair, on real data.

    python bench/similarity_parity.py --dataset pfwillow --datapath Datasets_SCOT --every 9 \
        --weights random --hyperpixel 2,11,12,13,14
    python bench/similarity_parity.py --dataset pfwillow --datapath Datasets_SCOT --variant bf16 \
        --max-pairs 36
    python bench/similarity_parity.py --dataset pfwillow --datapath Datasets_SCOT --every 9 \
        --weights random --hyperpixel 2,11,12,13,14 --variant channels_last
    python bench/similarity_parity.py --dataset spair --datapath Datasets_SCOT --weights random --max-pairs 12

Runs `evaluate()` twice over the same pairs, once per variant (for `dense` the backbone and CAM run once per
image: both matchers share one block cache), and prints the share of pairs whose per-keypoint
correctness is identical at every alpha, and the dataset PCK of both. Not a test (minutes on a CPU);
`tests/test_hyper_similarity.py` holds the small, fast twins.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from configs.runtime import resolve_device, set_faithful_numerics  # noqa: E402
from data import build_dataset  # noqa: E402
from models.backbone import HyperpixelBackbone  # noqa: E402
from models.weights import load_resnet  # noqa: E402
from validation_and_test.config import parse_ids, preset_path, resolve_config  # noqa: E402
from validation_and_test.evaluate import Matcher, MatchSettings, evaluate  # noqa: E402


def compare(rows_a: list[dict], rows_b: list[dict], alphas: list[float]) -> dict:
    """Pairs with equal per-pair PCK at every alpha, and the largest per-pair difference (points)."""
    keys = [f"pck_{a:g}" for a in alphas]
    same = sum(all(ra[k] == rb[k] for k in keys) for ra, rb in zip(rows_a, rows_b))
    worst = max((abs(ra[k] - rb[k]) for ra, rb in zip(rows_a, rows_b) for k in keys), default=0.0)
    return {"pairs": len(rows_a), "identical_pairs": same, "identical_pct": 100 * same / max(len(rows_a), 1),
            "max_pair_diff_pt": worst}


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="pfwillow")
    p.add_argument("--datapath", default=None)
    p.add_argument("--weights", default="random")
    p.add_argument("--backbone", default="auto")
    p.add_argument("--hyperpixel", type=parse_ids, default=None, help="default: the dataset preset's ids")
    p.add_argument("--every", type=int, default=1, help="every k-th pair of the split")
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--long-side", type=int, default=None, help="resize target (default: the preset's, 300)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", choices=("dense", "bf16", "channels_last"), default="dense",
                   help="dense: factorised against the dense product; bf16: the backbone and CAM under bf16 "
                        "autocast (what --fast does where bf16 is native) against float32; channels_last: "
                        "the network passes in channels_last against contiguous layout (float32)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    preset = str(preset_path(args.dataset))
    cfg, _, _ = resolve_config(argparse.Namespace(config=preset, dataset=args.dataset))
    if args.long_side:
        cfg = replace(cfg, long_side=args.long_side)
    device = resolve_device(args.device)
    set_faithful_numerics(device)
    dataset = build_dataset(args.dataset, args.datapath, cfg.split)
    indices = list(range(0, len(dataset), args.every))[: args.max_pairs]
    model, arch, record = load_resnet(args.backbone, args.weights, cfg.seed)
    ids = tuple(args.hyperpixel or cfg.hyperpixel)
    backbone = HyperpixelBackbone(model, arch)
    settings = MatchSettings.from_config(cfg)
    if args.variant == "dense":
        ref = Matcher(backbone, replace(settings, similarity="dense"), device, cache_mb=6144,
                      cache_blocks=True)
        cand = Matcher(backbone, settings, device, cache_blocks=True)
        cand.cache = ref.cache  # one backbone + CAM pass per image for both
        names = ("dense", "factorised")
    elif args.variant == "bf16":
        ref = Matcher(backbone, settings, device)
        cand = Matcher(backbone, settings, device, bf16=True)
        names = ("float32", "bf16")
    else:
        ref = Matcher(backbone, replace(settings, layout="contiguous"), device)
        cand = Matcher(backbone, replace(settings, layout="channels_last"), device)
        names = ("contiguous", "channels_last")
    results = {}
    for name, matcher in zip(names, (ref, cand)):
        results[name] = evaluate(matcher, dataset, ids, cfg.alpha, cfg.thres, indices=indices, progress=True)
    figures = {"dataset": args.dataset, "weights": record, "arch": arch, "ids": list(ids),
               "long_side": cfg.long_side, "feature_cache": results[names[0]].cache,
               **compare(results[names[0]].rows, results[names[1]].rows, cfg.alpha),
               **{f"pck_{n}": results[n].summary["pck"] for n in names},
               **{f"{stage}_s_{n}": m.timings[stage] for n, m in zip(names, (ref, cand))
                  for stage in ("features", "cam", "match")}}
    figures["max_dataset_diff_pt"] = max(abs(figures[f"pck_{names[0]}"][k] - figures[f"pck_{names[1]}"][k])
                                         for k in figures[f"pck_{names[0]}"])
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
