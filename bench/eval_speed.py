"""Evaluation speed: per-stage time and peak memory per pair, ours vs. a direct re-statement of the reference.

    python bench/eval_speed.py --device cpu --pairs 3
    python bench/eval_speed.py --device cuda --pairs 20 --end-to-end 299

Generated look-alike pairs (bundled scikit-image photos cropped/resized to benchmark image sizes, target =
shifted, recoloured copy): never a test, never real data. Stages: features (backbone + hyper-image),
CAM, OT (cosine + Sinkhorn + exp2), RHM, transfer. The reference re-statement uses the original's dense
plan products diag(a) K diag(b) and its dense (Ns x n_bins) Hough buffer. `--end-to-end N` times the full
`evaluate()` over N PF-PASCAL-sized pairs decoded from JPEG files (image loading included).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from configs.runtime import resolve_device, set_faithful_numerics, synchronize  # noqa: E402
from models.backbone import HyperpixelBackbone  # noqa: E402
from models.geometry import transfer_keypoints  # noqa: E402
from models.rhm import gaussian_filter_7x7, hough_bins, regularized_hough_matching  # noqa: E402
from models.sinkhorn import cosine_similarity, ot_votes  # noqa: E402
from models.weights import load_resnet  # noqa: E402
from validation_and_test.evaluate import Matcher, MatchSettings, evaluate  # noqa: E402
from validation_and_test.preprocess import scale_keypoints  # noqa: E402

SIZES = {"pfwillow": [(225, 300)], "pfpascal": [(375, 500), (333, 500), (500, 375), (281, 500)],
         "spair": [(375, 500), (500, 333), (334, 500), (500, 500)]}
STAGES = ("features", "cam", "ot", "rhm", "transfer")


def look_alike_pair(index: int, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """(src uint8 (3,H,W), trg uint8, src_kps (10,2), trg_kps) from a bundled photo; trg = shifted copy."""
    from skimage import data as skdata

    photo = [skdata.astronaut, skdata.chelsea, skdata.coffee, skdata.rocket][index % 4]()
    img = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float().unsqueeze(0)
    img = F.interpolate(img, size=hw, mode="bilinear", align_corners=False).clamp(0, 255)[0]
    src = img.round().to(torch.uint8)
    dx, dy = 10 + index % 7, 6 + index % 5
    trg = torch.zeros_like(src)
    trg[:, dy:, dx:] = (src[:, : hw[0] - dy, : hw[1] - dx].float() * 0.9 + 10).clamp(0, 255).to(torch.uint8)
    g = torch.Generator().manual_seed(index)
    kps = torch.stack([torch.rand(10, generator=g) * (hw[1] - 60) + 30,
                       torch.rand(10, generator=g) * (hw[0] - 60) + 30], dim=1)
    return src, trg, kps, kps + torch.tensor([dx, dy], dtype=torch.float32)


def reference_votes_and_rhm(sim: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, src_c: torch.Tensor,
                            trg_c: torch.Tensor, src_size, trg_size, eps: float, exp2: float,
                            times: dict[str, float]) -> torch.Tensor:
    """The reference algorithm restated: dense diag(a) K diag(b) products, dense (Ns, n_bins) Hough buffer."""
    device = sim.device
    synchronize(device)
    t0 = time.perf_counter()
    cost = 1 - sim.clamp(min=0)
    kernel = torch.exp(-cost / eps)
    a = torch.ones_like(mu) / mu.shape[0]
    b = nu / (kernel.t() @ a)
    a = mu / (kernel @ b)
    plan = torch.diag(a) @ kernel @ torch.diag(b)
    votes = (plan * mu.shape[0]).clamp(min=0).pow(exp2)
    synchronize(device)
    t1 = time.perf_counter()
    bins, (ny, nx) = hough_bins(src_c, trg_c, src_size, trg_size)
    dense = torch.zeros(votes.shape[0], ny * nx, dtype=votes.dtype, device=device)
    dense.scatter_add_(1, bins, votes)
    hist = dense.sum(0)
    gauss = gaussian_filter_7x7(device).view(1, 1, 7, 7)
    smoothed = F.conv2d(hist.view(1, 1, ny, nx), gauss, padding=3).view(-1)
    conf = votes * smoothed[bins]
    synchronize(device)
    times["ot"] += t1 - t0
    times["rhm"] += time.perf_counter() - t1
    return conf


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def _match_ours(src, trg, mu, nu, st, times: dict[str, float], device: torch.device) -> torch.Tensor:
    synchronize(device)
    t0 = time.perf_counter()
    sim = cosine_similarity(src.feats, trg.feats)
    votes = ot_votes(sim, mu, nu, eps=st.eps, exp2=st.exp2, n_iters=st.sinkhorn_iters, solver=st.solver)
    del sim
    synchronize(device)
    t1 = time.perf_counter()
    conf = regularized_hough_matching(votes, src.centers, trg.centers, src.size, trg.size)
    synchronize(device)
    times["ot"] += t1 - t0
    times["rhm"] += time.perf_counter() - t1
    return conf


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def bench_stages(matcher: Matcher, ids, pairs, reference: bool
                 ) -> tuple[dict[str, float], dict[str, float] | None, float, float | None]:
    """Per-pair stage times (s) averaged over `pairs` for ours and (interleaved, same features) the
    reference matching; peak memory (MB) of each. Features and CAM are computed once and shared."""
    device = matcher.device
    st = matcher.settings
    ours = dict.fromkeys(STAGES, 0.0)
    ref = dict.fromkeys(STAGES, 0.0) if reference else None
    ours_mem = ref_mem = 0.0
    for src_img, trg_img, src_kps, _ in pairs:
        _peak_reset(device)
        feats = []
        for img in (src_img, trg_img):
            synchronize(device)
            cam_before = matcher.timings["cam"]
            t0 = time.perf_counter()
            f = matcher._assemble(matcher._blocks(img, ids), ids)  # backbone + CAM map + hyper-image
            synchronize(device)
            cam = matcher.timings["cam"] - cam_before
            ours["cam"] += cam
            ours["features"] += time.perf_counter() - t0 - cam
            feats.append(f)
        src, trg = feats
        kps = scale_keypoints(src_kps.to(device), src.scale)
        mu = src.weights / src.weights.sum()
        nu = trg.weights / trg.weights.sum()
        runs = [(ours, False)] + ([(ref, True)] if ref is not None else [])
        for times, is_ref in runs:
            if is_ref:
                _peak_reset(device)
                sim = cosine_similarity(src.feats, trg.feats)
                conf = reference_votes_and_rhm(sim, mu, nu, src.centers, trg.centers, src.size, trg.size,
                                               st.eps, st.exp2, times)
                del sim
            else:
                conf = _match_ours(src, trg, mu, nu, st, times, device)
            t0 = time.perf_counter()
            transfer_keypoints(conf, src.boxes, trg.boxes, kps)
            synchronize(device)
            times["transfer"] += time.perf_counter() - t0
            del conf
            if is_ref:
                ref_mem = max(ref_mem, peak_mb(device))
            else:
                ours_mem = max(ours_mem, peak_mb(device))
    if ref is not None:
        ref["features"], ref["cam"] = ours["features"], ours["cam"]  # shared (same network passes)
        ref = {k: v / len(pairs) for k, v in ref.items()}
    return {k: v / len(pairs) for k, v in ours.items()}, ref, ours_mem, (ref_mem if reference else None)


class _FilePairs(torch.utils.data.Dataset):
    """Look-alike pairs stored as JPEG files, decoded with Pillow like the benchmarks."""

    name, split, default_thres = "pfpascal", "test", "img"

    def __init__(self, folder: Path, n: int):
        from PIL import Image

        self.items = []
        sizes = SIZES["pfpascal"]
        for i in range(n):
            src, trg, src_kps, trg_kps = look_alike_pair(i, sizes[i % len(sizes)])
            names = (f"img{i:04d}_a.jpg", f"img{i:04d}_b.jpg")
            for name, img in zip(names, (src, trg)):
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / name, quality=95)
            self.items.append((names, src_kps, trg_kps))
        self.folder = folder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        from data.io import read_rgb_uint8

        (a, b), src_kps, trg_kps = self.items[i]
        box = torch.cat([trg_kps.min(0).values, trg_kps.max(0).values])
        return {"index": i, "src_name": a, "trg_name": b, "class_name": "lookalike",
                "src_img": read_rgb_uint8(self.folder / a), "trg_img": read_rgb_uint8(self.folder / b),
                "src_kps": src_kps, "trg_kps": trg_kps, "src_bbox": box, "trg_bbox": box}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--hyperpixel", default="2,12,13,15")
    p.add_argument("--dataset-sizes", default="pfwillow", choices=sorted(SIZES))
    p.add_argument("--pairs", type=int, default=3, help="pairs per measurement (after one warm-up pair)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference re-statement")
    p.add_argument("--end-to-end", type=int, default=0, help="also time evaluate() on N JPEG pairs")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    numerics = set_faithful_numerics(device, args.fast)
    ids = tuple(int(i) for i in args.hyperpixel.split(","))
    model, arch, _ = load_resnet(args.backbone, "random", seed=0)
    matcher = Matcher(HyperpixelBackbone(model, arch), MatchSettings(), device, cache_mb=0)
    sizes = SIZES[args.dataset_sizes]
    pairs = [look_alike_pair(i, sizes[i % len(sizes)]) for i in range(args.pairs + 1)]
    with torch.no_grad():
        bench_stages(matcher, ids, pairs[:1], reference=False)  # warm-up
        ours, ref, ours_mem, ref_mem = bench_stages(matcher, ids, pairs[1:], not args.no_reference)
    n = matcher._assemble(matcher._blocks(pairs[0][0], ids), ids).feats.shape
    print(f"{arch} ids {ids} on {device} ({numerics['precision']}), {args.dataset_sizes} sizes {sizes}, "
          f"{args.pairs} pairs; hyperpixels x channels of the first image: {tuple(n)}")
    print(f"{'stage':<10}{'ours ms':>12}" + ("" if ref is None else f"{'reference ms':>15}{'ratio':>8}"))
    for stage in STAGES:
        line = f"{stage:<10}{1000 * ours[stage]:>12.1f}"
        if ref is not None:
            line += f"{1000 * ref[stage]:>15.1f}{ref[stage] / max(ours[stage], 1e-9):>8.2f}"
        print(line)
    total_ours = sum(ours.values())
    line = f"{'per pair':<10}{1000 * total_ours:>12.1f}"
    if ref is not None:
        total_ref = sum(ref.values())
        line += f"{1000 * total_ref:>15.1f}{total_ref / total_ours:>8.2f}"
    print(line)
    mem = "peak GPU memory" if device.type == "cuda" else "peak process RSS"
    print(f"{mem}: ours {ours_mem:.0f} MB" + ("" if ref is None else f", reference {ref_mem:.0f} MB"))
    if ref is not None:
        match_ours = sum(ours[k] for k in ("ot", "rhm", "transfer"))
        match_ref = sum(ref[k] for k in ("ot", "rhm", "transfer"))
        print(f"matching only (OT + RHM + transfer): reference / ours = {match_ref / match_ours:.2f}; "
              f"features and CAM are shared (same network passes), measured once")
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            ds = _FilePairs(Path(tmp), args.end_to_end)
            e2e = Matcher(HyperpixelBackbone(model, arch), MatchSettings(), device)
            start = time.perf_counter()
            result = evaluate(e2e, ds, ids, num_workers=min(4, os.cpu_count() or 1))
            total = time.perf_counter() - start
        print(f"end to end: {args.end_to_end} PF-PASCAL-sized JPEG pairs in {total:.2f} s "
              f"({1000 * total / args.end_to_end:.0f} ms/pair), PCK@0.1 {result.summary['pck']['0.1']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
