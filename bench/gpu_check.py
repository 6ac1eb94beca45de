"""One prepared device check: CUDA tests, CPU/GPU parity, evaluation and training speed, a tiny training run.

    bash bench/gpu_check.sh OUT [--realdata DIR]          # on a GPU machine: about 8 minutes on one H100
    bash bench/gpu_check.sh OUT --device cpu --tiny       # the same on the CPU, small (make test-slow)

Writes OUT/gpu_check.json (every figure) and OUT/gpu_check.txt (the short table, also printed). Sections:
tests    the GPU part of the suite (`pytest --device cuda -m cuda`); on the CPU the CPU-forced twins;
parity   per-pair PCK and predicted keypoints, CPU (`Matcher`) against the device (`ConcurrentMatcher`, CUDA
         branches), faithful numerics; real SPair / PF-WILLOW test pairs from --realdata, else look-alikes;
         on the CPU the device side is the CPU with the CUDA branches forced;
eval     ms per pair of `evaluate()` on JPEG look-alike pairs (warm-up excluded), faithful and --fast,
         cache off (PF-PASCAL sizes) and on (PF-WILLOW pattern: 18 pairs per image), sequential and
         concurrent images, stage breakdown, peak memory; plus bench/eval_speed.py's stage table;
train    bench/train_speed.py, paper preset (ResNet-50, 32 per GPU, pixel branch on): fp32, bf16,
         bf16 + channels_last; images/s, data vs compute time, peak memory;
tiny     20 training steps with bf16, finite loss and a checkpoint, then resumed for 5 more steps.
A failing section is recorded (`ok: false`, the error) and the others still run; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from configs import REPO_ROOT  # noqa: E402
from configs.runtime import atomic_write_json, git_sha, resolve_device, set_faithful_numerics  # noqa: E402

SECTIONS = ("tests", "parity", "eval", "train", "tiny")


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: `full` (a GPU, about 8 minutes) or `tiny` (CPU, a few minutes on 2 cores)."""

    arch: str
    ids: tuple[int, ...]
    parity_pairs: dict[str, int]  # dataset -> first pairs of its test split
    cold_pairs: int
    warm_images: int
    train_args: tuple[str, ...]
    tiny_size: int
    tiny_batch: int
    timeout_s: int


FULL = Profile(
    arch="resnet50",
    ids=(2, 12, 13, 15),
    parity_pairs={"spair": 12, "pfwillow": 24},
    cold_pairs=20,
    warm_images=10,
    train_args=(),
    tiny_size=96,
    tiny_batch=16,
    timeout_s=240,
)
TINY = Profile(
    arch="resnet18",
    ids=(2, 4, 6),
    parity_pairs={"spair": 2, "pfwillow": 2},
    cold_pairs=2,
    warm_images=3,
    tiny_size=32,
    tiny_batch=4,
    timeout_s=240,
    train_args=(
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--num-workers",
        "0",
        "moco.arch=resnet18",
        "moco.queue_size=16",
        "image_data.image_size=64",
        "pixel_data.image_size=64",
        "cycle.patch_size=32",
    ),
)


@dataclass
class Context:
    out: Path
    work: Path
    device: torch.device
    profile: Profile
    tiny: bool
    realdata: Path | None
    weights: str


def _run(cmd: list[str], timeout_s: int, log: Path) -> subprocess.CompletedProcess:
    """Run a child Python command from the repository root; its output goes to `log`."""
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)} (log {log.name})")
    return proc


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset (CUDA) or the process's peak resident set (CPU), MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------------------------ sections
def section_tests(ctx: Context) -> dict[str, Any]:
    xml = ctx.out / "tests.xml"
    sel = (
        ["tests", "-m", "cuda", "--device", "cuda"]
        if ctx.device.type == "cuda"
        else ["tests/test_cuda_paths.py", "-m", "not slow", "--device", "cpu"]
    )
    cmd = [sys.executable, "-m", "pytest", *sel, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=ctx.profile.timeout_s)
    (ctx.out / "tests.log").write_text(proc.stdout + proc.stderr)
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    ok = proc.returncode == 0 and passed > 0
    return {
        "ok": ok,
        "selection": " ".join(sel),
        "passed": passed,
        **counts,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _backbone(ctx: Context):
    from models.backbone import HyperpixelBackbone
    from models.weights import load_resnet

    model, arch, _ = load_resnet(ctx.profile.arch, ctx.weights, seed=0)
    return HyperpixelBackbone(model, arch)


def _parity_sets(ctx: Context) -> list[tuple[str, Any, float]]:
    """(name, dataset, exp2) of the pairs to compare: real test splits when --realdata, else look-alikes."""
    if ctx.realdata is not None:
        from data import build_dataset

        sets = []
        for name, n in ctx.profile.parity_pairs.items():
            ds = build_dataset(name, ctx.realdata, "test")
            sets.append(
                (name, torch.utils.data.Subset(ds, range(min(n, len(ds)))), 1.0 if name == "spair" else 0.5)
            )
        return sets
    from bench.lookalike import LookalikePairs

    n = sum(ctx.profile.parity_pairs.values())
    return [("lookalike", LookalikePairs(4, size=(240, 320), max_pairs=n), 0.5)]


@torch.no_grad()
def section_parity(ctx: Context) -> dict[str, Any]:
    import models.rhm as rhm
    from validation_and_test.evaluate import Matcher, MatchSettings, pair_correct
    from validation_and_test.pair_streams import ConcurrentMatcher

    set_faithful_numerics(ctx.device, fast=False)
    forced = ctx.device.type == "cpu"
    out: dict[str, Any] = {
        "reference": "cpu Matcher",
        "device_side": (
            "cpu ConcurrentMatcher, CUDA branches forced" if forced else f"{ctx.device} ConcurrentMatcher"
        ),
        "data": "real test pairs" if ctx.realdata else "look-alike pairs",
        "sets": {},
    }
    alphas = (0.05, 0.1, 0.15)
    ok = True
    cpu_backbone, dev_backbone = _backbone(ctx), _backbone(ctx)  # two: a Matcher moves its backbone
    for name, ds, exp2 in _parity_sets(ctx):
        settings = MatchSettings(exp2=exp2)
        cpu = Matcher(cpu_backbone, settings, "cpu")
        dev = ConcurrentMatcher(dev_backbone, settings, ctx.device, concurrent=True)
        thres = getattr(ds, "dataset", ds).check_thres("auto")
        same, max_diff = 0, 0.0
        for k in range(len(ds)):
            sample = ds[k]
            rhm.CUDA_PATHS_ON_CPU = False
            a = cpu.predict_pair(sample, ctx.profile.ids)
            rhm.CUDA_PATHS_ON_CPU = forced
            try:
                b = dev.predict_pair(sample, ctx.profile.ids)
            finally:
                rhm.CUDA_PATHS_ON_CPU = False
            same += bool(
                torch.equal(pair_correct(sample, a, alphas, thres), pair_correct(sample, b, alphas, thres))
            )
            diff = (a.pred - b.pred.cpu()).abs()
            max_diff = max(max_diff, float(diff.nan_to_num(0).max()) if diff.numel() else 0.0)
        out["sets"][name] = {"pairs": len(ds), "pck_identical": same, "max_keypoint_diff_px": max_diff}
        ok &= same == len(ds)
    out["ok"] = ok
    return out


def _timed_eval(matcher, dataset, ids, workers: int) -> dict[str, Any]:
    """`evaluate()` after a one-pair warm-up (same matcher, then its timings and cache are reset)."""
    from validation_and_test.evaluate import evaluate

    evaluate(matcher, dataset, ids, indices=[0])
    matcher.timings = dict.fromkeys(matcher.timings, 0.0)
    matcher.cache.clear()
    _reset_peak(matcher.device)
    res = evaluate(matcher, dataset, ids, num_workers=workers)
    n = max(res.n_pairs, 1)
    return {
        "pairs": res.n_pairs,
        "ms_per_pair": res.timings["ms_per_pair"],
        "stages_ms_per_pair": {
            k: round(1000 * res.timings[k] / n, 2) for k in ("features", "cam", "match", "transfer")
        },
        "cache_hit_rate": res.cache["hit_rate"],
        "peak_memory_mib": round(peak_memory_mib(matcher.device), 1),
    }


def section_eval(ctx: Context) -> dict[str, Any]:
    from bench.lookalike import LookalikePairs
    from validation_and_test.evaluate import Matcher, MatchSettings
    from validation_and_test.pair_streams import ConcurrentMatcher

    p = ctx.profile
    cold = LookalikePairs(
        max(4, p.cold_pairs // 2 + 2),
        size=(375, 500),
        folder=ctx.work / "cold",
        max_pairs=p.cold_pairs + 1,
        name="pfpascal-sized",
    )
    warm = LookalikePairs(p.warm_images, size=(225, 300), folder=ctx.work / "warm", name="pfwillow-pattern")
    workers = 0 if ctx.tiny else 4
    runs: dict[str, Any] = {}
    backbone = _backbone(ctx)
    for fast in (False, True):
        mode = "fast" if fast else "faithful"
        set_faithful_numerics(ctx.device, fast)
        for label, ds, cache_mb in (("cache_off", cold, 0.0), ("cache_on", warm, 2048.0)):
            for conc in (False, True):
                m = (
                    ConcurrentMatcher(
                        backbone, MatchSettings(), ctx.device, cache_mb=cache_mb, concurrent=True
                    )
                    if conc
                    else Matcher(backbone, MatchSettings(), ctx.device, cache_mb=cache_mb)
                )
                runs[f"{mode}/{label}/{'concurrent' if conc else 'sequential'}"] = _timed_eval(
                    m, ds, p.ids, workers
                )
    set_faithful_numerics(ctx.device, False)
    table = None
    script = [
        sys.executable,
        "bench/eval_speed.py",
        "--device",
        ctx.device.type,
        "--no-reference",
        "--pairs",
        "1" if ctx.tiny else "5",
    ]
    if ctx.tiny:
        script += ["--backbone", ctx.profile.arch, "--hyperpixel", ",".join(map(str, p.ids))]
    try:
        table = _run(script, p.timeout_s, ctx.out / "eval_speed.log").stdout.strip()
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        table = f"bench/eval_speed.py failed: {err}"
    return {
        "ok": all(math.isfinite(r["ms_per_pair"]) and r["pairs"] > 0 for r in runs.values()),
        "backbone": p.arch,
        "ids": list(p.ids),
        "loader_workers": workers,
        "runs": runs,
        "eval_speed_table": table,
    }


def section_train(ctx: Context) -> dict[str, Any]:
    variants = {
        "fp32": [],
        "bf16": ["--amp", "bf16"],
        "bf16+channels_last": ["--amp", "bf16", "--channels-last"],
    }
    runs = {}
    for name, extra in variants.items():
        path = ctx.out / f"train_speed_{name.replace('+', '_')}.json"
        cmd = [
            sys.executable,
            "bench/train_speed.py",
            "--preset",
            "paper",
            "--device",
            ctx.device.type,
            "--json",
            str(path),
            *extra,
            *ctx.profile.train_args,
        ]
        _run(cmd, ctx.profile.timeout_s, ctx.out / f"train_speed_{name.replace('+', '_')}.log")
        r = json.loads(path.read_text())
        runs[name] = {
            k: r[k]
            for k in (
                "images_per_s",
                "images_per_s_compute_only",
                "data_time_s",
                "compute_time_s",
                "peak_gpu_memory_gib",
                "peak_host_rss_gib",
                "batch_size",
                "arch",
                "image_size",
                "measured_steps",
            )
        }
    return {"ok": all(r["images_per_s"] > 0 for r in runs.values()), "runs": runs}


def section_tiny(ctx: Context) -> dict[str, Any]:
    from bench.train_speed import make_jpeg_folder
    from training.metrics import read_metrics

    p = ctx.profile
    images = make_jpeg_folder(ctx.work / "tiny_images", 10 * p.tiny_batch, size=max(p.tiny_size, 40))
    run_dir = ctx.out / "tiny_train"
    overrides = [
        "amp=bf16",
        "moco.arch=resnet18",
        f"moco.queue_size={4 * p.tiny_batch}",
        "moco.bn_splits=1",
        "image_data.source=imagefolder",
        f"image_data.root={images}",
        f"image_data.image_size={p.tiny_size}",
        "pixel_data.dataset=demo",
        "pixel_data.split=trn",
        f"pixel_data.image_size={p.tiny_size}",
        f"cycle.patch_size={p.tiny_size // 2}",
        f"batch_size={p.tiny_batch}",
        f"pair_batch_size={p.tiny_batch // 2}",
        "epochs=3",
        "num_workers=0",
        "checkpoint.every_steps=10",
        "log.interval=5",
        "log.vis_interval=0",
        "log.tensorboard=false",
        "log.progress=false",
        "init.kind=random",
    ]
    base = [
        sys.executable,
        "training/train.py",
        "--config",
        "configs/train/pfpascal_r50.yaml",
        "--device",
        ctx.device.type,
        "--output-dir",
        str(run_dir),
    ]
    t0 = time.perf_counter()
    _run([*base, *overrides, "max_steps=20"], p.timeout_s, ctx.out / "tiny_train.log")
    first = read_metrics(run_dir / "metrics.jsonl")
    ckpts = sorted(str(x.name) for x in (run_dir / "checkpoints").glob("*.pth"))
    _run([*base, "--resume", "auto", *overrides, "max_steps=25"], p.timeout_s, ctx.out / "tiny_resume.log")
    rows = read_metrics(run_dir / "metrics.jsonl")
    losses = [r[k] for r in rows for k in ("loss", "loss_moco", "loss_cycle") if k in r]
    finite = bool(losses) and all(isinstance(v, float) and math.isfinite(v) for v in losses)
    step_20 = max((r["step"] for r in first), default=0)
    step_25 = max((r["step"] for r in rows), default=0)
    return {
        "ok": finite and step_20 == 20 and step_25 == 25 and "last.pth" in ckpts,
        "finite_loss": finite,
        "steps_first_run": step_20,
        "steps_after_resume": step_25,
        "checkpoints": ckpts,
        "last_loss": rows[-1].get("loss") if rows else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "tests": section_tests,
    "parity": section_parity,
    "eval": section_eval,
    "train": section_train,
    "tiny": section_tiny,
}


# --------------------------------------------------------------------------------------------- table
def summary_lines(result: dict[str, Any]) -> list[str]:
    """The short human table of a result dict."""
    s = result["sections"]
    lines = [
        f"gpu_check on {result['device_name']} ({result['device']}, {'tiny' if result['tiny'] else 'full'}),"
        f" torch {result['torch']}, git {result['git_sha']}: {'PASS' if result['ok'] else 'FAIL'}"
        f" in {result['seconds']:.0f} s"
    ]
    for name in SECTIONS:
        sec = s.get(name)
        if sec is None:
            continue
        head = f"{name:<7}{'ok' if sec.get('ok') else 'FAILED':<7}{sec.get('seconds', 0):>6.0f} s  "
        if "error" in sec:
            lines.append(head + sec["error"][:160])
        elif name == "tests":
            lines.append(
                head + f"{sec['passed']} passed, {sec['failures'] + sec['errors']} failed, "
                f"{sec['skipped']} skipped ({sec['selection']})"
            )
        elif name == "parity":
            cells = [
                f"{k}: PCK identical {v['pck_identical']}/{v['pairs']}, "
                f"max kp diff {v['max_keypoint_diff_px']:.3g} px"
                for k, v in sec["sets"].items()
            ]
            lines.append(head + "; ".join(cells))
        elif name == "eval":
            lines.append(head + f"{sec['backbone']} ids {sec['ids']}, ms/pair (peak MiB):")
            for k, v in sec["runs"].items():
                st = ", ".join(f"{a} {b:.1f}" for a, b in v["stages_ms_per_pair"].items())
                lines.append(
                    f"    {k:<36}{v['ms_per_pair']:>9.1f} ms  ({v['peak_memory_mib']:.0f} MiB; {st})"
                )
        elif name == "train":
            lines.append(head + "images/s (data s + compute s per step, peak):")
            for k, v in sec["runs"].items():
                peak = (
                    v["peak_gpu_memory_gib"]
                    if v["peak_gpu_memory_gib"] is not None
                    else v["peak_host_rss_gib"]
                )
                lines.append(
                    f"    {k:<20}{v['images_per_s']:>9.1f}  ({v['data_time_s']:.3f} + "
                    f"{v['compute_time_s']:.3f} s, {peak:.2f} GiB; {v['arch']} batch {v['batch_size']})"
                )
        elif name == "tiny":
            lines.append(
                head + f"bf16: {sec['steps_first_run']} steps + resume to {sec['steps_after_resume']}, "
                f"finite loss {sec['finite_loss']} (last {sec['last_loss']}), "
                f"checkpoints {sec['checkpoints']}"
            )
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="small sizes (CPU end-to-end run, make test-slow)")
    p.add_argument(
        "--realdata", default=None, help="folder with PF-WILLOW/ and SPair-71k/ for the parity section"
    )
    p.add_argument(
        "--weights", default="random", help="backbone weights for parity and eval (random, imagenet)"
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    realdata = Path(args.realdata) if args.realdata and (Path(args.realdata) / "PF-WILLOW").is_dir() else None
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "tiny": args.tiny,
        "torch": torch.__version__,
        "git_sha": git_sha(short=True),
        "realdata": str(realdata) if realdata else None,
        "weights": args.weights,
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Context(
            out=out,
            work=Path(tmp),
            device=device,
            profile=TINY if args.tiny else FULL,
            tiny=args.tiny,
            realdata=realdata,
            weights=args.weights,
        )
        for name in [s for s in args.sections.split(",") if s]:
            if name not in RUNNERS:
                p.error(f"unknown section {name!r}")
            t0 = time.perf_counter()
            try:
                sec = RUNNERS[name](ctx)
            except Exception as err:  # noqa: BLE001 -- recorded; the other sections still run
                sec = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            sec["seconds"] = round(time.perf_counter() - t0, 1)
            result["sections"][name] = sec
            print(
                f"[gpu_check] {name}: {'ok' if sec['ok'] else 'FAILED'} ({sec['seconds']:.0f} s)", flush=True
            )
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["ok"] = all(s["ok"] for s in result["sections"].values())
    atomic_write_json(out / "gpu_check.json", result)
    text = "\n".join(summary_lines(result)) + "\n"
    (out / "gpu_check.txt").write_text(text)
    print(text, end="")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
