"""Evaluation speed: per-stage time and peak memory per pair, three implementations side by side.

    python bench/eval_speed.py --device cpu --pairs 3
    python bench/eval_speed.py --device cuda --pairs 20 --end-to-end 299

Generated look-alike pairs (`bench/lookalike.py`: bundled scikit-image photos resized to benchmark image
sizes, source and target two shifted, recoloured variants of one photo): never a test, never real data.
Columns, measured in one run with the pairs interleaved (the column order rotates from pair to pair, so a
shared CPU's load falls on all of them):
- `reference`: a direct re-statement of the reference algorithm: dense (N, D) hyperpixels, the original's
  dense plan products diag(a) K diag(b) and its dense (Ns x n_bins) Hough buffer;
- `before`: this project's matcher before the factorised similarity: dense hyperpixels and cosine, a fresh
  kernel buffer in OT, int64 Hough bins and an indexed gather;
- `ours`: the current `Matcher` (factorised similarity, in-place OT and RHM).
Stages: features (backbone + hyperpixel assembly), CAM, similarity, OT (kernel, Sinkhorn, exp2), RHM,
transfer. The backbone and CAM passes are shared (run once per image, timed once). Peak memory of each
column's matching is measured in a fresh child process that loads the saved block maps (`--memory`).
`--end-to-end N` times the full `evaluate()` over N PF-PASCAL-sized pairs decoded from JPEG files.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.lookalike import LookalikePairs, lookalike_image  # noqa: E402
from configs.runtime import resolve_device, set_faithful_numerics, synchronize  # noqa: E402
from models.backbone import HyperpixelBackbone  # noqa: E402
from models.rhm import gaussian_filter_7x7, hough_bins, hough_histogram, smooth_histogram  # noqa: E402
from models.sinkhorn import cosine_similarity, ot_votes  # noqa: E402
from models.transfer import transfer_keypoints  # noqa: E402
from models.weights import load_resnet  # noqa: E402
from validation_and_test.config import parse_ids  # noqa: E402
from validation_and_test.evaluate import Matcher, MatchSettings, evaluate  # noqa: E402
from validation_and_test.preprocess import scale_keypoints  # noqa: E402

SIZES = {"pfwillow": [(225, 300)], "pfpascal": [(375, 500), (333, 500), (500, 375), (281, 500)],
         "spair": [(375, 500), (500, 333), (334, 500), (500, 500)]}
STAGES = ("features", "cam", "similarity", "ot", "rhm", "transfer")
MATCH_STAGES = ("similarity", "ot", "rhm")
COLUMNS = ("reference", "before", "ours")


def look_alike_pair(index: int, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """(src uint8 (3,H,W), trg uint8, src_kps (10,2), trg_kps): two look-alike variants (shifted,
    recoloured) of one bundled photo (`bench.lookalike`), keypoints moving with the content."""
    other = index + 4 * (1 + index % 3)  # the same photo (index mod 4), another shift and colour
    (src, src_shift), (trg, trg_shift) = lookalike_image(index, hw), lookalike_image(other, hw)
    g = torch.Generator().manual_seed(index)
    kps = torch.stack([torch.rand(10, generator=g) * (hw[1] - 90) + 30,
                       torch.rand(10, generator=g) * (hw[0] - 90) + 30], dim=1)
    return src, trg, kps + src_shift, kps + trg_shift


class _Clock:
    """Adds the seconds of consecutive laps to `times[stage]` (device synchronised)."""

    def __init__(self, times: dict[str, float], device: torch.device):
        self.times, self.device = times, device
        synchronize(device)
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.times[stage] += now - self.t
        self.t = now


def _match_reference(src, trg, mu, nu, st: MatchSettings, clock: _Clock) -> torch.Tensor:
    """The reference algorithm restated: dense diag(a) K diag(b) products, dense (Ns, n_bins) Hough buffer."""
    sim = cosine_similarity(src.feats, trg.feats)
    clock.lap("similarity")
    cost = 1 - sim.clamp(min=0)
    kernel = torch.exp(-cost / st.eps)
    a = torch.ones_like(mu) / mu.shape[0]
    b = nu / (kernel.t() @ a)
    a = mu / (kernel @ b)
    plan = torch.diag(a) @ kernel @ torch.diag(b)
    votes = (plan * mu.shape[0]).clamp(min=0).pow(st.exp2)
    del sim, cost, kernel, plan
    clock.lap("ot")
    bins, (ny, nx) = hough_bins(src.centers, trg.centers, src.size, trg.size)
    dense = torch.zeros(votes.shape[0], ny * nx, dtype=votes.dtype, device=votes.device)
    dense.scatter_add_(1, bins, votes)
    hist = dense.sum(0)
    gauss = gaussian_filter_7x7(votes.device).view(1, 1, 7, 7)
    smoothed = F.conv2d(hist.view(1, 1, ny, nx), gauss, padding=3).view(-1)
    conf = votes * smoothed[bins]
    clock.lap("rhm")
    return conf


def _match_before(src, trg, mu, nu, st: MatchSettings, clock: _Clock) -> torch.Tensor:
    """This project's matching before the factorised similarity (same numbers as `--similarity dense`)."""
    sim = cosine_similarity(src.feats, trg.feats)
    clock.lap("similarity")
    votes = ot_votes(sim, mu, nu, eps=st.eps, exp2=st.exp2, n_iters=st.sinkhorn_iters, solver=st.solver)
    del sim
    clock.lap("ot")
    bins, (ny, nx) = hough_bins(src.centers, trg.centers, src.size, trg.size)  # int64
    conf = smooth_histogram(hough_histogram(votes, bins, ny * nx), ny, nx)[bins].mul_(votes)
    clock.lap("rhm")
    return conf


def _match_ours(src, trg, mu, nu, st: MatchSettings, clock: _Clock, matcher: Matcher) -> torch.Tensor:
    sim = matcher.similarity(src, trg)
    clock.lap("similarity")
    votes = ot_votes(sim, mu, nu, eps=st.eps, exp2=st.exp2, n_iters=st.sinkhorn_iters, solver=st.solver,
                     sim_again=lambda: matcher.similarity(src, trg))
    del sim
    clock.lap("ot")
    from models.rhm import regularized_hough_matching

    conf = regularized_hough_matching(votes, src.centers, trg.centers, src.size, trg.size, inplace=True)
    clock.lap("rhm")
    return conf


def _matchers(matcher: Matcher) -> dict[str, Matcher]:
    """A matcher per column over the same backbone (dense hyperpixels for the two dense columns)."""
    dense = Matcher(matcher.backbone, replace(matcher.settings, similarity="dense"), matcher.device,
                    cache_mb=0)
    return {"reference": dense, "before": dense, "ours": matcher}


def match_column(column: str, matchers: dict[str, Matcher], blocks, ids, src_kps, times) -> torch.Tensor:
    """Assemble the pair's hyperpixels for `column` and run its matching + transfer; stage times added."""
    m = matchers[column]
    st = m.settings
    clock = _Clock(times, m.device)
    src, trg = (m._assemble(b, ids) for b in blocks)
    mu, nu = src.weights / src.weights.sum(), trg.weights / trg.weights.sum()
    clock.lap("features")
    if column == "ours":
        conf = _match_ours(src, trg, mu, nu, st, clock, m)
    else:
        conf = (_match_reference if column == "reference" else _match_before)(src, trg, mu, nu, st, clock)
    pred, _ = transfer_keypoints(conf, src.boxes, trg.boxes, scale_keypoints(src_kps.to(m.device), src.scale))
    clock.lap("transfer")
    return pred


def bench_stages(matcher: Matcher, ids, pairs, columns=COLUMNS) -> dict[str, dict[str, float]]:
    """Per-pair stage seconds per column, averaged over `pairs`; backbone and CAM shared (timed once)."""
    matchers = _matchers(matcher)
    times = {c: dict.fromkeys(STAGES, 0.0) for c in columns}
    for k, (src_img, trg_img, src_kps, _) in enumerate(pairs):
        shared = dict.fromkeys(STAGES, 0.0)
        cam0 = matcher.timings["cam"]
        clock = _Clock(shared, matcher.device)
        blocks = [matcher._blocks(img, ids) for img in (src_img, trg_img)]
        clock.lap("features")
        shared["cam"] = matcher.timings["cam"] - cam0
        shared["features"] -= shared["cam"]
        order = columns[k % len(columns):] + columns[: k % len(columns)]
        preds = {c: match_column(c, matchers, blocks, ids, src_kps, times[c]) for c in order}
        for c in columns:
            times[c]["features"] += shared["features"]
            times[c]["cam"] += shared["cam"]
        first = columns[-2] if len(columns) > 1 else columns[0]  # "before" (dense) vs "ours" (factorised)
        if not torch.allclose(preds[first], preds[columns[-1]], equal_nan=True):
            print(f"note: pair {k}: {first} and {columns[-1]} transfer some keypoints differently")
    return {c: {s: v / len(pairs) for s, v in t.items()} for c, t in times.items()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(column: str, blocks_file: str, ids, backbone: str) -> None:
    """Child process: load the saved block maps, match with `column` once while a thread samples the
    resident set every millisecond; print RSS before matching and its peak during matching (MB)."""
    import threading

    model, arch, _ = load_resnet(backbone, "random", seed=0)
    matcher = Matcher(HyperpixelBackbone(model, arch), MatchSettings(), "cpu", cache_mb=0)
    blocks, src_kps = torch.load(blocks_file, weights_only=False)
    before = peak = _rss_mb()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with torch.no_grad():
        match_column(column, _matchers(matcher), blocks, ids, src_kps, dict.fromkeys(STAGES, 0.0))
    done.set()
    sampler.join()
    print(f"{before:.0f} {peak:.0f}")


def memory_table(matcher: Matcher, ids, pair, backbone: str) -> dict[str, tuple[float, float]]:
    """(RSS before matching, peak RSS during it) in MB of each column's matching, each in a fresh process."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blocks.pt"
        with torch.no_grad():
            torch.save(([matcher._blocks(img, ids) for img in pair[:2]], pair[2]), path)
        for column in COLUMNS:
            cmd = [sys.executable, __file__, "--memory-child", column, str(path), "--backbone", backbone,
                   "--hyperpixel", ",".join(map(str, ids))]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            before, peak = map(float, res.stdout.split()[-2:])
            out[column] = (before, peak)
    return out


def _ratio(a: float, b: float) -> str:
    return f"{a / max(b, 1e-9):>8.2f}"


def print_table(times: dict[str, dict[str, float]], reuse: int = 18) -> None:
    """Stage rows, then the pair cold (both images new) and with each image in `reuse` pairs, where the
    per-image cache (this project's columns; the reference recomputes every pair) divides features + CAM."""
    cols = list(times)
    print(f"{'stage (ms)':<22}" + "".join(f"{c:>12}" for c in cols) + f"{'before/ours':>13}{'ref/ours':>10}")
    rows = [(s, {c: times[c][s] for c in cols}) for s in STAGES]
    rows.append(("matching (sim+OT+RHM)", {c: sum(times[c][s] for s in MATCH_STAGES) for c in cols}))
    rows.append(("per pair, cold", {c: sum(times[c].values()) for c in cols}))
    rows.append((f"per pair, images x{reuse}", {
        c: sum(times[c].values()) - (0 if c == "reference" else (1 - 1 / reuse) * (times[c]["features"]
                                                                                   + times[c]["cam"]))
        for c in cols}))
    for label, vals in rows:
        line = f"{label:<22}" + "".join(f"{1000 * vals[c]:>12.1f}" for c in cols)
        if "ours" in vals:
            line += (f"{_ratio(vals['before'], vals['ours']):>13}" if "before" in vals else "")
            line += (_ratio(vals["reference"], vals["ours"]) + "  " if "reference" in vals else "")
        print(line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--hyperpixel", type=parse_ids, default=[2, 12, 13, 15])
    p.add_argument("--dataset-sizes", default="pfwillow", choices=sorted(SIZES))
    p.add_argument("--pairs", type=int, default=3, help="pairs per measurement (after one warm-up pair)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference and before columns")
    p.add_argument("--memory", action="store_true", help="peak RSS of each column's matching (CPU, children)")
    p.add_argument("--end-to-end", type=int, default=0, help="also time evaluate() on N JPEG pairs")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--layout", choices=("auto", "channels_last", "contiguous"), default="auto",
                   help="memory layout of the backbone and CAM passes (auto: channels_last on the CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--reuse", type=int, default=18, help="pairs per image for the cached row (PF-WILLOW: 18)")
    p.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ids = tuple(args.hyperpixel)
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], ids, args.backbone)
        return 0
    device = resolve_device(args.device)
    numerics = set_faithful_numerics(device, args.fast)
    model, arch, _ = load_resnet(args.backbone, "random", seed=0)
    settings = MatchSettings(fast=args.fast, layout=args.layout)
    matcher = Matcher(HyperpixelBackbone(model, arch), settings, device, cache_mb=0)
    numerics = matcher.numerics(numerics)
    sizes = SIZES[args.dataset_sizes]
    pairs = [look_alike_pair(i, sizes[i % len(sizes)]) for i in range(args.pairs + 1)]
    columns = ("ours",) if args.no_reference else COLUMNS
    with torch.no_grad():
        bench_stages(matcher, ids, pairs[:1], columns)  # warm-up
        times = bench_stages(matcher, ids, pairs[1:], columns)
    n = matcher._assemble(matcher._blocks(pairs[0][0], ids), ids).factors
    print(f"{arch} ids {ids} on {device} ({numerics['precision']}, {numerics['layout']}, "
          f"{torch.get_num_threads()} threads), "
          f"{args.dataset_sizes} sizes {sizes}, {args.pairs} pairs; first image: {n.n} hyperpixels x {n.dim}")
    print_table(times, args.reuse)
    if args.memory and device.type == "cpu":
        mem = memory_table(matcher, ids, pairs[1], args.backbone)
        cells = ", ".join(f"{c} {b:.0f} -> {pk:.0f} (+{pk - b:.0f})" for c, (b, pk) in mem.items())
        print(f"resident memory of one pair's matching, fresh process each (MB, before -> peak): {cells}")
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            sizes = SIZES["pfpascal"]
            pairs = [look_alike_pair(i, sizes[i % len(sizes)]) for i in range(args.end_to_end)]
            ds = LookalikePairs.from_pairs(pairs, folder=Path(tmp), name="pfpascal", default_thres="img")
            e2e = Matcher(HyperpixelBackbone(model, arch), settings, device)
            start = time.perf_counter()
            result = evaluate(e2e, ds, ids, num_workers=min(4, os.cpu_count() or 1))
            total = time.perf_counter() - start
        print(f"end to end: {args.end_to_end} PF-PASCAL-sized JPEG pairs in {total:.2f} s "
              f"({1000 * total / args.end_to_end:.0f} ms/pair), PCK@0.1 {result.summary['pck']['0.1']:.1f}, "
              f"per-image cache hit rate {100 * result.cache['hit_rate']:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
