"""The offline demo (`make demo`): evaluate an untrained ResNet-18, train it with both losses, evaluate again.

    python scripts/demo.py [--output-dir runs/demo] [--device auto] [--seed 0] [key.sub=value ...]

No data and no network needed: the demo benchmark is generated from photographs bundled with scikit-image
(`data.demo`). Steps: (1) generate the demo data and write the initial weights (seeded ResNet-18, 128-d
head); (2) evaluate them on the held-out demo test pairs; (3) control: the same weights with only their
BatchNorm statistics re-estimated on the demo trn images (`models.batchnorm.recalibrate_batchnorm`);
(4) train from the initial weights with `configs/demo.yaml` (MoCo on the demo image folder + pixel-level
cycle on demo trn pairs); (5) evaluate the trained encoder, as trained and with its BN statistics
re-estimated exactly like the control (the like-for-like comparison); (6) print the four-row PCK table and
write `results.json` and figures to `<output-dir>/figs/`. All rows use `configs/eval/demo.yaml` (same ids,
same resolution). Trailing `key.sub=value` pairs override the training config. Re-running resumes training
where it stopped and reuses finished evaluations. `scripts/ablation.py` runs the same rows over several
seeds, plus each branch alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import (  # noqa: E402
    ALPHAS,
    EVAL_PRESET,
    TRAIN_PRESET,
    build_setting,
    evaluate,
    pair_images,
    write_bn_recalibrated,
    write_initial_weights,
)

from configs.runtime import atomic_write_json, run_cli  # noqa: E402


def plot_training_curves(metrics_path: Path, out_png: Path) -> None:
    """Loss terms, MoCo top-1 and LR against the step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step" in r and "loss" in r]
    # each panel: (metric, title, its reference level drawn dashed: chance, the crop-centre baseline)
    panels = [("loss_moco", "MoCo InfoNCE (dashed: chance)", "moco_chance_loss"),
              ("loss_cycle", "cycle MSE (px², dashed: crop centre)", "cycle_centre_baseline"),
              ("moco_top1", "MoCo top-1 (%)", None), ("lr", "learning rate", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title, reference) in zip(axes, panels):
        for name, style in ((key, "-"), (reference, "--")):
            pts = [(r["step"], r[name]) for r in rows if name and isinstance(r.get(name), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, lw=1.5, color="C0" if style == "-" else "C3")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def copy_figures(out: Path, figs: Path, n_examples: int = 3) -> list[str]:
    """Keypoint-transfer examples before/after and the newest pixel-level figure into `figs/`."""
    written = []
    for tag in ("before", "after"):
        for png in sorted((out / f"eval_{tag}" / "vis").glob("*.png"))[:n_examples]:
            dst = figs / f"transfer_{tag}_{png.name}"
            shutil.copyfile(png, dst)
            written.append(dst.name)
    vis = sorted((out / "train" / "vis").glob("*.png"))
    if vis:
        shutil.copyfile(vis[-1], figs / "pixel_level.png")
        written.append("pixel_level.png")
    return written


ROWS = (("untrained", "untrained"), ("bn_recalibrated", "untrained, BN re-est."), ("trained", "trained"),
        ("trained_bn", "trained, BN re-est."))


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Rows of ROWS present in `results` (key -> an evaluation's results.json), PCK (%) per alpha."""
    lines = [f"{'demo test PCK (%)':<24}" + "".join(f"{'a=' + a:>10}" for a in ALPHAS)]
    for key, label in ROWS:
        if key in results:
            lines.append(f"{label:<24}" + "".join(f"{results[key]['pck'][a]:>10.2f}" for a in ALPHAS))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of training")
    parser.add_argument("--max-pairs", type=int, default=None, help="evaluate only the first N test pairs")
    parser.add_argument("--bn-pairs", type=int, default=None,
                        help="BN re-estimation on the first N demo trn pairs only (default: all)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="training config overrides")
    args = parser.parse_args(argv)

    from configs.runtime import resolve_device
    from configs.schema import load_yaml
    from data.demo import ensure_demo_data
    from training.config import load_train_config
    from training.trainer import train

    out = Path(args.output_dir)
    figs = out / "figs"
    figs.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    print(f"[1/6] demo data: {ensure_demo_data()}")

    init = write_initial_weights(out / "init_weights.pth", "resnet18", args.seed)
    cfg = load_train_config(TRAIN_PRESET, [f"seed={args.seed}", "init.kind=checkpoint",
                                           f"init.checkpoint={init}", *args.overrides])
    if cfg.moco.arch != "resnet18":
        raise SystemExit("the demo evaluates a ResNet-18; do not override moco.arch")
    setting = build_setting("demo", "test", None, args.max_pairs)
    device = resolve_device(args.device)
    long_side = int(load_yaml(EVAL_PRESET).get("long_side", 300))

    def bn_images():  # the demo trn pair images at evaluation resolution (first --bn-pairs pairs)
        return pair_images(setting, long_side, device, args.bn_pairs)

    def run_eval(key: str, weights: Path, folder: str) -> None:
        t = time.perf_counter()
        evals[key] = evaluate(weights, out / folder, args.device,
                              [*setting.eval_args, "--vis-dir", str(out / folder / "vis")])
        wall[f"eval_{key}_s"] = time.perf_counter() - t

    wall["data_and_init_s"] = time.perf_counter() - t0
    evals: dict[str, dict[str, Any]] = {}
    print("[2/6] evaluating the untrained network")
    run_eval("untrained", init, "eval_before")

    print("[3/6] control: the untrained network with BN statistics re-estimated on the demo trn images")
    recal = write_bn_recalibrated(init, out / "bn_recalibrated_weights.pth", bn_images(), device)
    run_eval("bn_recalibrated", recal, "eval_bn_recalibrated")

    print("[4/6] training (MoCo + pixel-level cycle) with configs/demo.yaml")
    t0 = time.perf_counter()
    summary = train(cfg, out / "train", resume="auto", device=args.device, preset=str(TRAIN_PRESET))
    wall["train_s"] = time.perf_counter() - t0

    print("[5/6] evaluating the trained network, as trained and with BN statistics re-estimated")
    trained = Path(summary["checkpoint"] or out / "train" / "checkpoints" / "last.pth")  # None: already done
    run_eval("trained", trained, "eval_after")
    trained_bn = write_bn_recalibrated(trained, out / "trained_bn_recalibrated_weights.pth", bn_images(),
                                       device)
    run_eval("trained_bn", trained_bn, "eval_after_bn_recalibrated")

    print("[6/6] figures")
    plot_training_curves(out / "train" / "metrics.jsonl", figs / "training_curves.png")
    written = ["training_curves.png", *copy_figures(out, figs)]
    first = evals["untrained"]
    atomic_write_json(out / "results.json", {
        "dataset": "demo", "split": first["split"], "n_pairs": first["n_pairs"], "thres": first["thres"],
        "hyperpixel": first["hyperpixel"], "alphas": list(ALPHAS),
        "pck_before": first["pck"], "pck_bn_recalibrated": evals["bn_recalibrated"]["pck"],
        "pck_after": evals["trained"]["pck"], "pck_after_bn_recalibrated": evals["trained_bn"]["pck"],
        "bn_recalibration": {"images": "demo trn pairs, source and target", "pairs": args.bn_pairs,
                             "long_side": long_side, "momentum": None},
        "train_steps": summary["step"], "checkpoint": str(summary["checkpoint"]),
        "wall_s": {k: round(v, 1) for k, v in wall.items()}, "figures": written,
    })
    print()
    print(format_table(evals))
    print(f"\nwritten: {out}/results.json, {out}/train/ (metrics, checkpoints), {figs}/ "
          f"({len(written)} PNGs)")
    return 0


if __name__ == "__main__":
    run_cli(main)
