"""The paper's ablation as functions: six rows from one init, several seeds, PCK mean and spread.

Rows (all from the same init, evaluated with the same preset, ids and resolution):
    init          the initial weights (`shipped`: the stage-1 file; `random`: seeded ResNet-18; or a path)
    init_bn       the initial weights, BatchNorm statistics re-estimated on the pixel-branch pair images
    image_only    trained with the image-level MoCo branch alone (cycle.loss_weight=0)
    pixel_only    trained with the pixel-level cycle branch alone (moco.loss_weight=0)
    both          trained with both branches (the recipe, configs/demo.yaml)
    both_bn       `both`, BatchNorm statistics re-estimated like `init_bn`
Settings: `demo` (MoCo on the demo image folder, the cycle on demo trn pairs, evaluation on demo val or
test); `pfwillow` (real PF-WILLOW: MoCo on its images as an ImageFolder, the cycle on its unlabelled test
pairs, the paper's transductive use, evaluation on its test pairs).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.runtime import UserError
from experiments.evaluation import ALPHAS, evaluate_weights, pair_images, write_bn_recalibrated
from experiments.runs import train_from
from experiments.weights import initial_weights

ROWS = {
    "init": "init",
    "init_bn": "init + BN re-estimated",
    "image_only": "image level only",
    "pixel_only": "pixel level only",
    "both": "both (the recipe)",
    "both_bn": "both + BN re-estimated",
}
QUIET = ["log.vis_interval=0", "log.progress=false"]  # training overrides: no figures, no progress bar
BRANCH_OVERRIDES = {"image_only": ["cycle.loss_weight=0"], "pixel_only": ["moco.loss_weight=0"], "both": []}


@dataclass
class Setting:
    """Where a row's data comes from: evaluation settings, training overrides, the pairs used for BN."""

    name: str
    eval_settings: dict[str, Any]
    train_overrides: list[str]
    pair_dataset: str
    pair_root: str | None
    pair_split: str
    notes: dict[str, Any] = field(default_factory=dict)
    eval_tag: str = ""  # suffix of the evaluation folders (set when the ids differ from the preset's)


def build_setting(name: str, split: str, datapath: str | None, max_pairs: int | None) -> Setting:
    """The `demo` or `pfwillow` setting (see the module doc); `max_pairs` None = every pair."""
    settings: dict[str, Any] = {"split": split, "max_pairs": max_pairs}
    if name == "demo":
        return Setting("demo", settings, [], "demo", None, "trn",
                       {"pixel_pairs": "demo trn", "images": "demo image folder"})
    if name == "pfwillow":
        if not datapath:
            raise UserError("--setting pfwillow needs --datapath (the folder holding PF-WILLOW/)")
        root = str(Path(datapath).resolve())
        if not (Path(root) / "PF-WILLOW").is_dir():
            raise UserError(f"{root}/PF-WILLOW not found; fetch it with: bash scripts/download_datasets.sh "
                            f"pfwillow")
        return Setting(
            "pfwillow", {"dataset": "pfwillow", "datapath": root, "thres": "auto", **settings},
            ["pixel_data.dataset=pfwillow", "pixel_data.split=test", f"pixel_data.root={root}",
             "image_data.source=imagefolder", f"image_data.root={root}/PF-WILLOW", "steps_per_epoch=3"],
            "pfwillow", root, "test",
            {"pixel_pairs": "PF-WILLOW test pairs, unlabelled (transductive)",
             "images": "PF-WILLOW images as an ImageFolder", "steps_per_epoch": "3, as the demo recipe"})
    raise UserError(f"unknown setting {name!r} (demo or pfwillow)")


def run_seed(seed: int, rows: Sequence[str], out: Path, setting: Setting, overrides: Sequence[str],
             device: str, init_kind: str = "shipped", bn_pairs: int | None = None
             ) -> dict[str, dict[str, float]]:
    """Every requested row for one seed -> {row: {alpha: PCK}}. Unless the init is random, the init rows do
    not depend on the seed and live (once) in `out/init`; training rows live in `out/seed<seed>`. Evaluation
    folders carry the split (`eval_<row>_<split>`), so val and test runs share one output folder and its
    trained checkpoints."""
    from configs.runtime import resolve_device
    from experiments.evaluation import eval_long_side

    dev = resolve_device(device)
    root = out / f"seed{seed}"
    init_root = root if init_kind == "random" else out / "init"
    init = initial_weights(init_kind, root / "init_weights.pth", seed)
    weights: dict[str, Path] = {"init": init}
    pck: dict[str, dict[str, float]] = {}

    def trained(row: str) -> Path:
        if row not in weights:
            extra = [*QUIET, *setting.train_overrides, *overrides, *BRANCH_OVERRIDES[row]]
            weights[row], _ = train_from(init, root / f"train_{row}", seed, extra, device)
        return weights[row]

    for row in rows:
        print(f"[seed {seed}] {row}", flush=True)
        folder = init_root if row.startswith("init") else root
        if row in BRANCH_OVERRIDES:
            trained(row)
        elif row.endswith("_bn"):
            base = row[:-3]
            images = pair_images(setting.pair_dataset, setting.pair_root, setting.pair_split,
                                 eval_long_side(), dev, bn_pairs)
            weights[row] = write_bn_recalibrated(weights[base] if base == "init" else trained(base),
                                                 folder / f"{row}_weights.pth", images, dev)
        split = setting.eval_settings["split"]
        res = evaluate_weights(weights[row], folder / f"eval_{row}_{split}{setting.eval_tag}", device,
                               setting.eval_settings)
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
