"""Ablation: what does each part of training contribute? Six rows, several seeds, PCK mean and spread.

    python scripts/ablation.py --setting demo --seeds 0 1 2                      # demo test pairs
    python scripts/ablation.py --setting demo --split val --seeds 0 [key=value ...]  # recipe search (val)
    python scripts/ablation.py --setting pfwillow --datapath ../Datasets_SCOT --max-pairs 300

Rows (every row starts from the same seeded random ResNet-18 of its seed and is evaluated with the same
preset, ids and resolution):
    untrained       the initial weights
    untrained_bn    the initial weights, BatchNorm statistics re-estimated on the training images
    image_only      trained with the image-level MoCo branch alone (cycle.loss_weight=0)
    pixel_only      trained with the pixel-level cycle branch alone (moco.loss_weight=0)
    both            trained with both branches (the recipe)
    both_bn         `both`, BatchNorm statistics re-estimated like `untrained_bn`
Settings: `demo` (generated data: MoCo on the demo image folder, the cycle on demo trn pairs, evaluation
on demo val or test); `pfwillow` (real PF-WILLOW under --datapath: MoCo on its images as an ImageFolder,
the cycle on its unlabelled test pairs, the paper's transductive use, evaluation on its test pairs).
Training uses configs/demo.yaml plus the trailing overrides; BN re-estimation uses the source and target
images of the pixel-branch pairs at evaluation resolution.

Writes <output-dir>/ablation.json (settings, per-seed PCK, mean and spread), ablation.md (the table) and
ablation.png (bars with the seed spread). Finished rows are reused on a re-run (delete a row's folder to
redo it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from configs import CONFIG_DIR  # noqa: E402
from configs.runtime import UserError, atomic_torch_save, atomic_write_json, atomic_write_text, run_cli  # noqa: E402
from models.batchnorm import recalibrate_batchnorm  # noqa: E402

TRAIN_PRESET = CONFIG_DIR / "demo.yaml"
EVAL_PRESET = CONFIG_DIR / "eval" / "demo.yaml"
ALPHAS = ("0.05", "0.1", "0.15")
ROWS = {
    "untrained": "untrained",
    "untrained_bn": "untrained + BN re-estimated",
    "image_only": "image branch only",
    "pixel_only": "pixel branch only",
    "both": "both branches",
    "both_bn": "both branches + BN re-estimated",
}
BRANCH_OVERRIDES = {"image_only": ["cycle.loss_weight=0"], "pixel_only": ["moco.loss_weight=0"], "both": []}


@dataclass
class Setting:
    """Where a row's data comes from: evaluation flags, training overrides, the pairs used for BN."""

    name: str
    eval_args: list[str]
    train_overrides: list[str]
    pair_dataset: str
    pair_root: str | None
    pair_split: str
    notes: dict[str, Any] = field(default_factory=dict)
    eval_tag: str = ""  # suffix of the evaluation folders (set when --hyperpixel changes the ids)


def build_setting(name: str, split: str, datapath: str | None, max_pairs: int | None) -> Setting:
    """The `demo` or `pfwillow` setting (see the module doc)."""
    eval_args = ["--split", split] + (["--max-pairs", str(max_pairs)] if max_pairs else [])
    if name == "demo":
        return Setting("demo", eval_args, [], "demo", None, "trn",
                       {"pixel_pairs": "demo trn", "images": "demo image folder"})
    if name == "pfwillow":
        if not datapath:
            raise UserError("--setting pfwillow needs --datapath (the folder holding PF-WILLOW/)")
        root = str(Path(datapath).resolve())
        if not (Path(root) / "PF-WILLOW").is_dir():
            raise UserError(f"{root}/PF-WILLOW not found; fetch it with: bash scripts/download_datasets.sh "
                            f"pfwillow")
        return Setting(
            "pfwillow", ["--dataset", "pfwillow", "--datapath", root, "--thres", "auto", *eval_args],
            ["pixel_data.dataset=pfwillow", "pixel_data.split=test", f"pixel_data.root={root}",
             "image_data.source=imagefolder", f"image_data.root={root}/PF-WILLOW", "steps_per_epoch=3"],
            "pfwillow", root, "test",
            {"pixel_pairs": "PF-WILLOW test pairs, unlabelled (transductive)",
             "images": "PF-WILLOW images as an ImageFolder", "steps_per_epoch": "3, as the demo recipe"})
    raise UserError(f"unknown setting {name!r} (demo or pfwillow)")


def pair_images(setting: Setting, long_side: int, device: torch.device | str,
                max_pairs: int | None = None) -> Iterator[torch.Tensor]:
    """Each distinct image of the setting's pixel-branch pairs (the first `max_pairs`) once, prepared as for
    evaluation: ImageNet-normalised, long side `long_side`, (1, 3, h, w)."""
    from data import build_dataset
    from data.io import read_rgb_uint8
    from validation_and_test.preprocess import prepare_image

    dataset = build_dataset(setting.pair_dataset, setting.pair_root, setting.pair_split)
    seen: set[str] = set()
    for i in range(len(dataset) if max_pairs is None else min(max_pairs, len(dataset))):
        for path in dataset.image_paths(i):
            if str(path) not in seen:
                seen.add(str(path))
                yield prepare_image(read_rgb_uint8(path), "scot", long_side, device)[0]


def write_initial_weights(path: Path, arch: str, seed: int) -> Path:
    """Seeded torchvision ResNet with a 128-d linear head, saved as a plain state dict (read by both CLIs)."""
    if not path.is_file():
        from models.weights import load_resnet

        atomic_torch_save(load_resnet(arch, "random", seed)[0].state_dict(), path)
    return path


def write_bn_recalibrated(weights: Path, path: Path, images: Iterator[torch.Tensor],
                          device: torch.device | str = "cpu") -> Path:
    """`weights` (any checkpoint the CLIs read) with BN statistics re-estimated on `images`, as a plain
    state dict."""
    if not path.is_file():
        from models.weights import load_resnet

        net, _, _ = load_resnet("auto", str(weights))
        recalibrate_batchnorm(net.to(device), images)
        atomic_torch_save({k: v.cpu() for k, v in net.state_dict().items()}, path)
    return path


def evaluate(weights: Path, out_dir: Path, device: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """`validation_and_test/test.py` with the demo preset (+ `extra` flags); returns its results.json."""
    results = out_dir / "results.json"
    if not results.is_file():
        from validation_and_test.test import main as test_main

        test_main(["--config", str(EVAL_PRESET), "--weights", str(weights), "--device", device,
                   "--output-dir", str(out_dir), *extra])
    return json.loads(results.read_text())


def train_row(row: str, seed: int, init: Path, out_dir: Path, setting: Setting, overrides: Sequence[str],
              device: str) -> Path:
    """Train one branch row from `init`; returns its last checkpoint (resumes an interrupted run)."""
    from training.config import load_train_config
    from training.trainer import train

    cfg = load_train_config(TRAIN_PRESET, [f"seed={seed}", "init.kind=checkpoint", f"init.checkpoint={init}",
                                           "log.vis_interval=0", "log.progress=false",
                                           *setting.train_overrides, *overrides, *BRANCH_OVERRIDES[row]])
    summary = train(cfg, out_dir, resume="auto", device=device, preset=str(TRAIN_PRESET))
    return Path(summary["checkpoint"]) if summary["checkpoint"] else out_dir / "checkpoints" / "last.pth"


def run_seed(seed: int, rows: Sequence[str], out: Path, setting: Setting, overrides: Sequence[str],
             device: str, long_side: int, bn_pairs: int | None = None) -> dict[str, dict[str, float]]:
    """Every requested row for one seed -> {row: {alpha: PCK}}."""
    from configs.runtime import resolve_device

    dev = resolve_device(device)
    root = out / f"seed{seed}"
    init = write_initial_weights(root / "init_weights.pth", "resnet18", seed)
    weights: dict[str, Path] = {"untrained": init}
    pck: dict[str, dict[str, float]] = {}
    for row in rows:
        print(f"[seed {seed}] {row}", flush=True)
        if row in BRANCH_OVERRIDES:
            weights[row] = train_row(row, seed, init, root / f"train_{row}", setting, overrides, device)
        elif row.endswith("_bn"):
            base = row[:-3]
            if base not in weights:
                weights[base] = train_row(base, seed, init, root / f"train_{base}", setting, overrides,
                                          device)
            weights[row] = write_bn_recalibrated(weights[base], root / f"{row}_weights.pth",
                                                 pair_images(setting, long_side, dev, bn_pairs), dev)
        res = evaluate(weights[row], root / f"eval_{row}{setting.eval_tag}", device, setting.eval_args)
        pck[row] = {a: float(res["pck"][a]) for a in ALPHAS}
    return pck


def summarise(per_seed: dict[int, dict[str, dict[str, float]]], rows: Sequence[str]) -> dict[str, Any]:
    """{row: {alpha: {"mean", "std", "min", "max", "n"}}} over the seeds (std: sample, 0 for one seed)."""
    out: dict[str, Any] = {}
    for row in rows:
        out[row] = {}
        for a in ALPHAS:
            vals = [per_seed[s][row][a] for s in per_seed if row in per_seed[s]]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[row][a] = {"mean": statistics.fmean(vals), "std": std, "min": min(vals), "max": max(vals),
                           "n": len(vals)}
    return out


def format_table(summary: dict[str, Any], title: str) -> str:
    """Markdown table: one row per ablation row, mean ± std over seeds per alpha."""
    lines = [f"| {title} | " + " | ".join(f"α {a}" for a in ALPHAS) + " |",
             "|---|" + "---|" * len(ALPHAS)]
    for row, stats in summary.items():
        cells = [f"{stats[a]['mean']:.1f} ± {stats[a]['std']:.1f}" for a in ALPHAS]
        lines.append(f"| {ROWS[row]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], title: str, png: Path) -> None:
    """Grouped bars (one group per alpha, one bar per row) with the seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(ALPHAS))]
        ax.bar(xs, [summary[row][a]["mean"] for a in ALPHAS], width,
               yerr=[summary[row][a]["std"] for a in ALPHAS], capsize=2, label=ROWS[row])
    ax.set_xticks(range(len(ALPHAS)), [f"α = {a}" for a in ALPHAS])
    ax.set_ylabel("PCK (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    lo = min(summary[r][a]["mean"] - summary[r][a]["std"] for r in rows for a in ALPHAS)
    ax.set_ylim(max(0.0, lo - 10.0), 100.0)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=("demo", "pfwillow"), default="demo")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="evaluation split")
    parser.add_argument("--datapath", default=None, help="folder holding PF-WILLOW/ (setting pfwillow)")
    parser.add_argument("--max-pairs", type=int, default=None, help="evaluate the first N pairs only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bn-pairs", type=int, default=None, help="BN re-estimation on the first N pairs")
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS))
    parser.add_argument("--output-dir", default=None, help="default runs/ablation_<setting>_<split>")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--hyperpixel", default=None, help="evaluation ids, all rows (default: preset)")
    parser.add_argument("--figure", default=None, help="also write the plot here (figs/...)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="training config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from configs.schema import load_yaml
    from data.demo import ensure_demo_data

    setting = build_setting(args.setting, args.split, args.datapath, args.max_pairs)
    if args.hyperpixel:
        setting.eval_args += ["--hyperpixel", args.hyperpixel]
        setting.eval_tag = "_ids" + args.hyperpixel.replace(",", "-")
    out = Path(args.output_dir or f"runs/ablation_{args.setting}_{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    ensure_demo_data()
    long_side = int(load_yaml(EVAL_PRESET).get("long_side", 300))
    rows = [r for r in ROWS if r in args.rows]
    per_seed = {seed: run_seed(seed, rows, out, setting, args.overrides, args.device, long_side,
                               args.bn_pairs) for seed in args.seeds}
    summary = summarise(per_seed, rows)
    title = (f"{args.setting} {args.split} PCK (%), ResNet-18, mean ± std over seeds "
             f"{', '.join(map(str, args.seeds))}")
    table = format_table(summary, title)
    atomic_write_json(out / "ablation.json", {
        "setting": args.setting, "split": args.split, "max_pairs": args.max_pairs, "seeds": args.seeds,
        "bn_pairs": args.bn_pairs,
        "rows": {r: ROWS[r] for r in rows}, "train_preset": "configs/demo.yaml",
        "train_overrides": [*setting.train_overrides, *args.overrides],
        "eval_preset": "configs/eval/demo.yaml", "eval_args": setting.eval_args, "notes": setting.notes,
        "per_seed": {str(s): v for s, v in per_seed.items()}, "summary": summary,
        "transductive": args.setting == "pfwillow"})
    atomic_write_text(out / "ablation.md", table + "\n")
    plot(summary, title, out / "ablation.png")
    if args.figure:
        plot(summary, title, Path(args.figure))
    print("\n" + table)
    print(f"\nwritten: {out}/ablation.json, ablation.md, ablation.png")
    return 0


if __name__ == "__main__":
    run_cli(main)
