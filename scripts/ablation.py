"""Ablation: what does each part of stage 2 contribute? Six rows from one init, several seeds.

    python scripts/ablation.py --setting demo --seeds 0 1 2                      # demo test pairs
    python scripts/ablation.py --setting demo --split val --seeds 0 [key=value ...]  # recipe search (val)
    python scripts/ablation.py --setting pfwillow --datapath ../Datasets_SCOT --max-pairs 300
    python scripts/ablation.py --init random ...                                 # from seeded random weights

Rows (`experiments.ablation`): init, init + BN re-estimated, image level only, pixel level only, both (the
recipe, configs/demo.yaml + trailing overrides), both + BN re-estimated; all from the same init: `--init
shipped` (default; pretrained_models/stage1_resnet18.pth, sha256-checked, the same for every seed) or
`random` (a seeded random ResNet-18 per seed), or a ResNet-18 checkpoint file (the same for every seed).
BN re-estimation uses the source and target images of the pixel-branch pairs at evaluation resolution.

Writes <output-dir>/ablation_<split>.json (settings, per-seed PCK, mean and spread), ablation_<split>.md
(the table) and ablation_<split>.png (bars with the seed spread). Finished rows are reused on a re-run
(delete a row's folder to redo it); val and test runs of one setting share the trained checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import atomic_write_json, atomic_write_text, run_cli  # noqa: E402
from experiments.ablation import ROWS, build_setting, format_table, plot, run_seed, summarise  # noqa: E402
from experiments.evaluation import check_pair_count  # noqa: E402
from experiments.weights import INIT_KINDS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=("demo", "pfwillow"), default="demo")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="evaluation split")
    parser.add_argument("--datapath", default=None, help="folder holding PF-WILLOW/ (setting pfwillow)")
    parser.add_argument("--init", default="shipped",
                        help="the rows' initial weights: shipped, random or a ResNet-18 checkpoint file")
    parser.add_argument("--max-pairs", type=int, default=None, help="evaluate the first N >= 1 pairs only "
                                                                      "(default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bn-pairs", type=int, default=None,
                        help="BN re-estimation on the first N >= 1 pairs (default: all)")
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS))
    parser.add_argument("--output-dir", default=None,
                        help="default runs/ablation_<setting>_<init> (val and test share its checkpoints)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hyperpixel", default=None, help="evaluation ids, all rows (default: preset)")
    parser.add_argument("--figure", default=None, help="also write the plot here (figs/...)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="training config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from data.demo import ensure_demo_data
    from validation_and_test.config import parse_ids

    setting = build_setting(args.setting, args.split, args.datapath,
                            check_pair_count(args.max_pairs, "--max-pairs"))
    check_pair_count(args.bn_pairs, "--bn-pairs")
    if args.hyperpixel:
        setting.eval_settings["hyperpixel"] = parse_ids(args.hyperpixel)
        setting.eval_tag = "_ids" + args.hyperpixel.replace(",", "-")
    init_name = args.init if args.init in INIT_KINDS else Path(args.init).stem
    out = Path(args.output_dir or f"runs/ablation_{args.setting}_{init_name}")
    out.mkdir(parents=True, exist_ok=True)
    ensure_demo_data()
    rows = [r for r in ROWS if r in args.rows]
    per_seed = {seed: run_seed(seed, rows, out, setting, args.overrides, args.device, args.init,
                               args.bn_pairs) for seed in args.seeds}
    summary = summarise(per_seed, rows)
    title = (f"{args.setting} {args.split} PCK (%), ResNet-18 from the {init_name} init, mean ± std over "
             f"seeds {', '.join(map(str, args.seeds))}")
    table = format_table(summary, title)
    atomic_write_json(out / f"ablation_{args.split}.json", {
        "setting": args.setting, "split": args.split, "init": args.init, "max_pairs": args.max_pairs,
        "seeds": args.seeds, "bn_pairs": args.bn_pairs, "rows": {r: ROWS[r] for r in rows},
        "train_preset": "configs/demo.yaml", "train_overrides": [*setting.train_overrides, *args.overrides],
        "eval_preset": "configs/eval/demo.yaml", "eval_settings": setting.eval_settings,
        "notes": setting.notes,
        "per_seed": {str(s): v for s, v in per_seed.items()}, "summary": summary,
        "transductive": args.setting == "pfwillow"})
    atomic_write_text(out / f"ablation_{args.split}.md", table + "\n")
    plot(summary, title, out / f"ablation_{args.split}.png")
    if args.figure:
        plot(summary, title, Path(args.figure))
    print("\n" + table)
    print(f"\nwritten: {out}/ablation_{args.split}.json, .md, .png")
    return 0


if __name__ == "__main__":
    run_cli(main)
