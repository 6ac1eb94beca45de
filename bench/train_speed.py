"""Training throughput benchmark (never a test): images/s, data vs compute time, peak memory.

    python bench/train_speed.py --preset demo  --device cpu            # configs/demo.yaml on the CPU
    python bench/train_speed.py --preset paper --device cuda [--amp bf16 --channels-last]
                                                   # configs/train/pfpascal_r50.yaml on one GPU

`paper`: the paper's recipe on one GPU with per-GPU batch 32 + 32 (bn_splits 1, as one of the 8 original
GPUs), random initialisation, a generated ImageFolder of 224-px JPEGs standing in for ImageNet and the
offline demo pairs at 224 px standing in for PF-PASCAL (no downloads). Runs the real training loop
(`training.trainer.train`) for --warmup + --steps steps and reports the means over the last --steps from
its metrics.jsonl: data time (waiting for the loader) and compute time (forward, backward, step, synced).
Reference points: MoCo v2 ~168 images/s per V100; target >= 1,500 ImageNet images/s per H100.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from configs import REPO_ROOT  # noqa: E402
from configs.runtime import DistInfo, resolve_device  # noqa: E402
from training.config import load_train_config  # noqa: E402
from training.metrics import read_metrics  # noqa: E402

PRESETS = {"demo": REPO_ROOT / "configs" / "demo.yaml",
           "paper": REPO_ROOT / "configs" / "train" / "pfpascal_r50.yaml"}


def make_jpeg_folder(root: Path, count: int, size: int = 224, classes: int = 10, seed: int = 0) -> Path:
    """`count` random-texture JPEGs of size x size in `classes` sub-folders (an ImageNet stand-in)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        img.save(folder / f"img_{i:06d}.JPEG", quality=90)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 5 demo, 30 paper)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured steps (default 2 demo, 10 paper)")
    p.add_argument("--batch-size", type=int, default=None, help="per-GPU ImageNet batch (paper default 32)")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--images", type=int, default=None, help="generated JPEGs (paper preset)")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    paper = args.preset == "paper"
    steps = args.steps or (30 if paper else 5)
    warmup = args.warmup if args.warmup is not None else (10 if paper else 2)
    work = Path(tempfile.mkdtemp(prefix="train_speed_"))
    overrides = [f"max_steps={steps + warmup}", "epochs=1", "log.interval=1", "log.vis_interval=0",
                 "log.tensorboard=false", "log.progress=false", "checkpoint.every_steps=1000000",
                 "init.kind=random"]
    batch = args.batch_size or (32 if paper else None)
    if paper:
        n_img = args.images or batch * (steps + warmup)
        t0 = time.perf_counter()
        make_jpeg_folder(work / "imagenet", n_img)
        print(f"generated {n_img} JPEGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        overrides += [f"image_data.root={work / 'imagenet'}", "pixel_data.dataset=demo",
                      "pixel_data.split=trn",
                      f"batch_size={batch}", f"pair_batch_size={batch}", "moco.bn_splits=1"]
    elif batch:
        overrides += [f"batch_size={batch}", f"pair_batch_size={batch}"]
    if args.num_workers is not None:
        overrides.append(f"num_workers={args.num_workers}")
    if args.amp:
        overrides.append(f"amp={args.amp}")
    if args.channels_last:
        overrides.append("channels_last=true")
    cfg = load_train_config(PRESETS[args.preset], overrides + list(args.overrides))
    if not paper:  # the demo folder is small: enough epochs for the requested steps
        steps_per_epoch = max(1, 36 // cfg.batch_size)
        cfg.epochs = -(-(steps + warmup) // steps_per_epoch)

    from training.trainer import train

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    train(cfg, work / "run", info=info)
    wall = time.perf_counter() - t0
    rows = [r for r in read_metrics(work / "run" / "metrics.jsonl") if r["step"] > warmup]
    data_t = float(np.mean([r["data_time"] for r in rows]))
    comp_t = float(np.mean([r["compute_time"] for r in rows]))
    result = {
        "preset": args.preset, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(), "arch": cfg.moco.arch,
        "image_size": cfg.image_data.image_size,
        "batch_size": cfg.batch_size, "pair_batch_size": cfg.pair_batch_size, "amp": cfg.amp,
        "channels_last": cfg.channels_last, "num_workers": cfg.num_workers, "measured_steps": len(rows),
        "data_time_s": data_t, "compute_time_s": comp_t,
        "images_per_s": cfg.batch_size / (data_t + comp_t),
        "images_per_s_compute_only": cfg.batch_size / comp_t,
        "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                if device.type == "cuda" else None),
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "wall_s": wall, "torch": torch.__version__,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
