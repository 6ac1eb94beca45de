"""The offline demo (`make demo`): evaluate an untrained ResNet-18, train it with both losses, evaluate again.

    python scripts/demo.py [--output-dir runs/demo] [--device auto] [--seed 0] [key.sub=value ...]

No data and no network needed: the demo benchmark is generated from photographs bundled with scikit-image
(`data.demo`). Steps: (1) generate the demo data and write the initial weights (seeded ResNet-18, 128-d
head); (2) evaluate them on the held-out demo test pairs; (3) control: the same weights with only their
BatchNorm statistics re-estimated on the demo trn images (`recalibrate_batchnorm`), evaluated alike;
(4) train from the initial weights with `configs/demo.yaml` (MoCo on the demo image folder + pixel-level
cycle on demo trn pairs); (5) evaluate the trained encoder; (6) print the three-row PCK table and write
`results.json` and figures to `<output-dir>/figs/`. All rows use `configs/eval/demo.yaml` (same ids).
Trailing `key.sub=value` pairs override the training config. Re-running resumes training where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from configs import CONFIG_DIR  # noqa: E402
from configs.runtime import atomic_torch_save, atomic_write_json, run_cli  # noqa: E402
from models.cycle import batchnorm_layers  # noqa: E402
from models.weights import build_resnet  # noqa: E402

TRAIN_PRESET = CONFIG_DIR / "demo.yaml"
EVAL_PRESET = CONFIG_DIR / "eval" / "demo.yaml"
ALPHAS = ("0.05", "0.1", "0.15")


def write_initial_weights(path: Path, arch: str, seed: int) -> Path:
    """Seeded torchvision ResNet with a 128-d linear head, saved as a plain state dict (read by both CLIs)."""
    if not path.is_file():
        torch.manual_seed(seed)
        net = build_resnet(arch)
        atomic_torch_save(net.state_dict(), path)
    return path


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics from `batches` ((B, 3, H, W) each), no gradients.

    The statistics are reset, then `net` runs in train mode with momentum None (cumulative average), so
    each running mean (variance) becomes the mean over the batches of the per-batch channel mean (unbiased
    variance), each layer seeing inputs normalised with batch statistics (as `swa_utils.update_bn`).
    Weights are unchanged; the train/eval flag and the momenta are restored. Returns the number of batches.
    """
    bns = batchnorm_layers(net)
    momenta = [m.momentum for m in bns]
    was_training = net.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    n = 0
    try:
        for x in batches:
            net(x)
            n += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        net.train(was_training)
    if n == 0:
        raise ValueError("recalibrate_batchnorm needs at least one batch")
    return n


def demo_trn_images(device: torch.device | str = "cpu", long_side: int = 300,
                    max_pairs: int | None = None) -> Iterator[torch.Tensor]:
    """Source and target images of the demo trn pairs (first `max_pairs`), prepared as for evaluation
    (ImageNet-normalised, long side `long_side`): one (1, 3, h, w) tensor each."""
    from data import build_dataset
    from validation_and_test.preprocess import prepare_image

    dataset = build_dataset("demo", None, "trn")
    for i in range(len(dataset) if max_pairs is None else min(max_pairs, len(dataset))):
        sample = dataset[i]
        for key in ("src_img", "trg_img"):
            yield prepare_image(sample[key], "scot", long_side, device)[0]


def write_bn_recalibrated_weights(init: Path, path: Path, arch: str, long_side: int,
                                  device: torch.device | str = "cpu", max_pairs: int | None = None) -> Path:
    """The initial weights with BN statistics re-estimated on the demo trn images (the BN-only control)."""
    if not path.is_file():
        net = build_resnet(arch)
        net.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
        recalibrate_batchnorm(net.to(device), demo_trn_images(device, long_side, max_pairs))
        atomic_torch_save({k: v.cpu() for k, v in net.state_dict().items()}, path)
    return path


def evaluate(weights: Path, out_dir: Path, device: str, max_pairs: int | None) -> dict[str, Any]:
    """`validation_and_test/test.py` with the demo preset; returns its results.json."""
    from validation_and_test.test import main as test_main

    argv = ["--config", str(EVAL_PRESET), "--weights", str(weights), "--device", device,
            "--output-dir", str(out_dir), "--vis-dir", str(out_dir / "vis")]
    if max_pairs is not None:
        argv += ["--max-pairs", str(max_pairs)]
    test_main(argv)
    return json.loads((out_dir / "results.json").read_text())


def plot_training_curves(metrics_path: Path, out_png: Path) -> None:
    """Loss terms, MoCo top-1 and LR against the step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step" in r and "loss" in r]
    panels = [("loss_moco", "MoCo InfoNCE"), ("loss_cycle", "cycle MSE (px²)"),
              ("moco_top1", "MoCo top-1 (%)"), ("lr", "learning rate")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), lw=1.5)
        ax.set_title(title)
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


ROWS = (("untrained", "untrained"), ("bn_recalibrated", "untrained, BN re-est."), ("trained", "trained"))


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
    wall["data_and_init_s"] = time.perf_counter() - t0
    evals: dict[str, dict[str, Any]] = {}
    print("[2/6] evaluating the untrained network")
    t0 = time.perf_counter()
    evals["untrained"] = evaluate(init, out / "eval_before", args.device, args.max_pairs)
    wall["eval_untrained_s"] = time.perf_counter() - t0

    print("[3/6] control: the untrained network with BN statistics re-estimated on the demo trn images")
    t0 = time.perf_counter()
    long_side = int(load_yaml(EVAL_PRESET).get("long_side", 300))
    recal = write_bn_recalibrated_weights(init, out / "bn_recalibrated_weights.pth", "resnet18", long_side,
                                          resolve_device(args.device), args.bn_pairs)
    evals["bn_recalibrated"] = evaluate(recal, out / "eval_bn_recalibrated", args.device, args.max_pairs)
    wall["bn_recalibration_and_eval_s"] = time.perf_counter() - t0

    print("[4/6] training (MoCo + pixel-level cycle) with configs/demo.yaml")
    t0 = time.perf_counter()
    summary = train(cfg, out / "train", resume="auto", device=args.device, preset=str(TRAIN_PRESET))
    wall["train_s"] = time.perf_counter() - t0

    print("[5/6] evaluating the trained network")
    t0 = time.perf_counter()
    evals["trained"] = evaluate(Path(summary["checkpoint"]), out / "eval_after", args.device, args.max_pairs)
    wall["eval_trained_s"] = time.perf_counter() - t0

    print("[6/6] figures")
    plot_training_curves(out / "train" / "metrics.jsonl", figs / "training_curves.png")
    written = ["training_curves.png", *copy_figures(out, figs)]
    first = evals["untrained"]
    atomic_write_json(out / "results.json", {
        "dataset": "demo", "split": first["split"], "n_pairs": first["n_pairs"], "thres": first["thres"],
        "hyperpixel": first["hyperpixel"], "alphas": list(ALPHAS),
        "pck_before": first["pck"], "pck_bn_recalibrated": evals["bn_recalibrated"]["pck"],
        "pck_after": evals["trained"]["pck"],
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
