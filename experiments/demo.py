"""The offline demo (`make demo`) as functions: stage 2 of the paper from the shipped stage-1 init.

Rows, all on the demo test pairs with `configs/eval/demo.yaml`: a seeded random ResNet-18 and the same with
BN statistics re-estimated (the reference for the whole pipeline); the shipped init and the same with BN
re-estimated; the shipped init trained with `configs/demo.yaml` (both losses), as trained and with BN
re-estimated. BN re-estimation always uses the demo trn pair images at evaluation resolution.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from configs.runtime import UserError, atomic_write_json
from experiments.evaluation import (
    ALPHAS,
    check_pair_count,
    eval_long_side,
    evaluate_weights,
    pair_images,
    write_bn_recalibrated,
)
from experiments.runs import TRAIN_PRESET, init_overrides, train_from
from experiments.weights import shipped_init, write_initial_weights

ROWS = (("random", "random init"), ("random_bn", "random init, BN re-est."), ("init", "shipped init"),
        ("init_bn", "shipped init, BN re-est."), ("trained", "trained"),
        ("trained_bn", "trained, BN re-est."))


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Rows of ROWS present in `results` (key -> an evaluation's results.json), PCK (%) per alpha."""
    lines = [f"{'demo test PCK (%)':<26}" + "".join(f"{'a=' + a:>10}" for a in ALPHAS)]
    for key, label in ROWS:
        if key in results:
            lines.append(f"{label:<26}" + "".join(f"{results[key]['pck'][a]:>10.2f}" for a in ALPHAS))
    return "\n".join(lines)


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
    """Keypoint-transfer examples before (shipped init) / after training and the newest pixel-level figure."""
    written = []
    for tag, folder in (("before", "eval_init"), ("after", "eval_trained")):
        for png in sorted((out / folder / "vis").glob("*.png"))[:n_examples]:
            dst = figs / f"transfer_{tag}_{png.name}"
            shutil.copyfile(png, dst)
            written.append(dst.name)
    vis = sorted((out / "train" / "vis").glob("*.png"))
    if vis:
        shutil.copyfile(vis[-1], figs / "pixel_level.png")
        written.append("pixel_level.png")
    return written


def run_demo(out: Path, device: str = "auto", seed: int = 0, max_pairs: int | None = None,
             bn_pairs: int | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Every step of the demo into `out` (resumes; finished evaluations are reused); returns results.json's
    content and prints the table."""
    from configs.runtime import resolve_device
    from data.demo import ensure_demo_data
    from training.config import load_train_config

    check_pair_count(max_pairs, "--max-pairs")
    check_pair_count(bn_pairs, "--bn-pairs")
    figs = out / "figs"
    figs.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    print(f"[1/6] demo data: {ensure_demo_data()}")
    random_init = write_initial_weights(out / "random_init_weights.pth", "resnet18", seed)
    init = shipped_init()
    cfg = load_train_config(TRAIN_PRESET, [*init_overrides(init, seed), *overrides])  # checked up front
    if cfg.moco.arch != "resnet18":
        raise UserError("the demo evaluates a ResNet-18; do not override moco.arch")
    dev = resolve_device(device)
    long_side = eval_long_side()  # of the demo's evaluation preset: BN is re-estimated at it
    settings = {"split": "test", "max_pairs": max_pairs}
    wall["data_and_init_s"] = time.perf_counter() - t0
    evals: dict[str, dict[str, Any]] = {}

    def run_eval(key: str, weights: Path, vis: bool = False) -> None:
        t = time.perf_counter()
        folder = out / f"eval_{key}"
        evals[key] = evaluate_weights(weights, folder, device,
                                      {**settings, **({"vis_dir": str(folder / "vis")} if vis else {})})
        wall[f"eval_{key}_s"] = time.perf_counter() - t

    def with_bn(key: str, weights: Path) -> Path:
        images = pair_images("demo", None, "trn", long_side, dev, bn_pairs)
        return write_bn_recalibrated(weights, out / f"{key}_weights.pth", images, dev)

    print("[2/6] reference: a seeded random ResNet-18, as is and with BN statistics re-estimated")
    run_eval("random", random_init)
    run_eval("random_bn", with_bn("random_bn", random_init))
    print("[3/6] the shipped stage-1 init (pretrained_models/), as is and with BN statistics re-estimated")
    run_eval("init", init, vis=True)
    run_eval("init_bn", with_bn("init_bn", init))
    print("[4/6] stage 2 from the shipped init (MoCo + pixel-level cycle) with configs/demo.yaml")
    t = time.perf_counter()
    trained, summary = train_from(init, out / "train", seed, overrides, device)
    wall["train_s"] = time.perf_counter() - t
    print("[5/6] evaluating the trained network, as trained and with BN statistics re-estimated")
    run_eval("trained", trained, vis=True)
    run_eval("trained_bn", with_bn("trained_bn", trained))
    print("[6/6] figures")
    plot_training_curves(out / "train" / "metrics.jsonl", figs / "training_curves.png")
    written = ["training_curves.png", *copy_figures(out, figs)]
    first = evals["init"]
    results = {
        "dataset": "demo", "split": first["split"], "n_pairs": first["n_pairs"], "thres": first["thres"],
        "hyperpixel": first["hyperpixel"], "alphas": list(ALPHAS), "init": str(init),
        "pck": {key: evals[key]["pck"] for key, _ in ROWS},
        "bn_recalibration": {"images": "demo trn pairs, source and target", "pairs": bn_pairs,
                             "long_side": long_side, "momentum": None},
        "train_steps": summary["step"], "checkpoint": str(summary["checkpoint"]),
        "wall_s": {k: round(v, 1) for k, v in wall.items()}, "figures": written,
    }
    atomic_write_json(out / "results.json", results)
    print()
    print(format_table(evals))
    print(f"\nwritten: {out}/results.json, {out}/train/ (metrics, checkpoints), {figs}/ "
          f"({len(written)} PNGs)")
    return results
