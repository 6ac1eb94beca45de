"""Evaluate SCOT-style matching and PCK on a benchmark (`evaluation.md`); thin CLI over `evaluate`.

    python validation_and_test/test.py --dataset pfwillow --weights runs/x/checkpoints/last.pth
    torchrun --nproc_per_node=4 validation_and_test/test.py --dataset spair

Settings: dataclass defaults <- `configs/eval/<dataset>.yaml` (or `--config`) <- flags. Writes
`results.json`, `per_pair.csv` and `config.yaml` to `--output-dir` (default `runs/eval/<dataset>-<time>`).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from configs import REPO_ROOT  # noqa: E402
from configs.runtime import (  # noqa: E402
    COMPLETE_KEY,
    UserError,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
    claim_output_dir,
    get_logger,
    git_sha,
    init_distributed,
    package_versions,
    release_output_dir,
    run_cli,
    set_faithful_numerics,
    unique_suffix,
    write_run_metadata,
)
from configs.schema import build_config, config_to_dict, load_yaml  # noqa: E402
from configs.validate import check_values  # noqa: E402
from validation_and_test.config import EvalConfig, preset_path  # noqa: E402

DATASET_CHOICES = ("pfpascal", "pfwillow", "spair", "demo")
# flag dest -> EvalConfig key
_FLAG_KEYS = ("dataset", "datapath", "split", "pfpascal_kps", "backbone", "weights", "hyperpixel", "alpha",
              "thres", "sim", "exp1", "exp2", "eps", "sinkhorn_iters", "classmap", "max_pairs", "device",
              "seed", "output_dir", "vis_dir", "hpf", "fast")


def parse_ids(text: str) -> list[int]:
    """'2,12,13,15' (also '(2, 12, 13, 15)' or '2 12 13 15') -> [2, 12, 13, 15]."""
    cleaned = text.strip().strip("()[]").replace(",", " ").split()
    try:
        return [int(t) for t in cleaned]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,12,13,15, got {text!r}"
                                         ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = argparse.SUPPRESS  # only flags given on the command line override the preset
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASET_CHOICES, default=d, help="benchmark (default pfpascal)")
    data.add_argument("--datapath", default=d, help="folder holding PF-PASCAL/, PF-WILLOW/, SPair-71k/ "
                                                    "(default $DATASETS else ./Datasets_SCOT)")
    data.add_argument("--split", choices=("trn", "val", "test"), default=d, help="split (default test)")
    data.add_argument("--max-pairs", dest="max_pairs", type=int, default=d,
                      help="first N pairs in split order")
    data.add_argument("--pfpascal-kps", dest="pfpascal_kps", choices=("mat", "csv"), default=d,
                      help="PF-PASCAL keypoints: .mat files (default) or the test CSV columns (recorded, "
                           "not comparable; thres img only)")
    model = p.add_argument_group("model")
    model.add_argument("--backbone", choices=("auto", "resnet18", "resnet34", "resnet50", "resnet101"),
                       default=d, help="auto: the checkpoint's architecture, else resnet50")
    model.add_argument("--weights", default=d, help="imagenet (torchvision IMAGENET1K_V1), random, or a "
                                                    "checkpoint path (MoCo / torchvision / ours)")
    model.add_argument("--hyperpixel", type=parse_ids, default=d, help="hyperpixel ids, e.g. 2,12,13,15")
    match = p.add_argument_group("matching and PCK")
    match.add_argument("--alpha", type=float, nargs="+", default=d, help="PCK alphas (default 0.05 0.1 0.15)")
    match.add_argument("--thres", choices=("auto", "img", "bbox"), default=d, help="PCK reference length")
    match.add_argument("--sim", choices=("OTGeo", "OT", "cosGeo", "cos"), default=d,
                       help="matching confidence")
    match.add_argument("--exp1", type=float, default=d, help="cosine power (cos, cosGeo)")
    match.add_argument("--exp2", type=float, default=d, help="OT plan power (0.5 PF, 1.0 SPair)")
    match.add_argument("--eps", type=float, default=d, help="entropic regularisation")
    match.add_argument("--sinkhorn-iters", dest="sinkhorn_iters", type=int, default=d,
                       help="1 = faithful single update; more = converged log-domain solver")
    match.add_argument("--classmap", type=int, choices=(0, 1), default=d, help="1: CAM marginals, 0: uniform")
    match.add_argument("--hpf", action="store_true", default=d,
                       help="HPF mode: downscale-only resize, margin pruning, RHM on max(0, cos)^3")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d)
    run.add_argument("--seed", type=int, default=d, help="seed of --weights random")
    run.add_argument("--fast", action="store_true", default=d, help="allow TF32 on CUDA (recorded)")
    run.add_argument("--output-dir", dest="output_dir", default=d, help="default runs/eval/<dataset>-<time>")
    run.add_argument("--vis-dir", dest="vis_dir", default=d, help="write PNGs of the pairs here")
    run.add_argument("--config", default=None, help="YAML preset replacing configs/eval/<dataset>.yaml")
    run.add_argument("--overwrite", action="store_true", help="replace a complete result in --output-dir")
    return p


def resolve_config(args: argparse.Namespace) -> tuple[EvalConfig, str, bool]:
    """(config, preset file, ids given on the command line)."""
    flags = {k: getattr(args, k) for k in _FLAG_KEYS if hasattr(args, k)}
    check_values(flags, "command line")
    if args.config is not None:
        path = Path(args.config)
        data = load_yaml(path)
    else:
        path = preset_path(flags.get("dataset", EvalConfig.dataset))
        data = load_yaml(path) if path.is_file() else {}
    check_values(data, str(path))
    data.update(flags)
    return build_config(EvalConfig, data, source=str(path)), str(path), "hyperpixel" in flags


def default_output_dir(dataset: str) -> Path:
    return REPO_ROOT / "runs" / "eval" / f"{dataset}-{unique_suffix()}"


def per_pair_csv(rows: list[dict[str, Any]], alphas: Sequence[float]) -> str:
    keys = [f"pck_{float(a):g}" for a in alphas]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "src", "trg", "class", "n_kps", *keys])
    for r in rows:
        pck = (f"{r[k]:.4f}" for k in keys)
        writer.writerow([r["index"], r["src"], r["trg"], r["class"], r["n_kps"], *pck])
    return buf.getvalue()


def format_table(results: dict[str, Any]) -> str:
    """Plain-text summary: headline per alpha, per-keypoint PCK, per-class PCK at each alpha."""
    alphas = list(results["pck"])
    def row(label: str, values: dict[str, Any]) -> str:
        cells = "".join(f"{values[a]:>10.2f}" if values.get(a) is not None else f"{'-':>10}" for a in alphas)
        return f"{label[:22]:<22}{cells}"

    lines = [f"{results['dataset']} {results['split']}: {results['n_pairs']} pairs, "
             f"thres {results['thres']}, "
             f"{results['backbone']} ({results['weights'].get('weights')}), ids {results['hyperpixel']}",
             f"{'':<22}" + "".join(f"{'PCK@' + a:>10}" for a in alphas),
             row("per pair (headline)", results["pck"]), row("per keypoint", results["pck_per_keypoint"])]
    lines += [row(f"  {cls}", vals) for cls, vals in results.get("per_class", {}).items()]
    for factor, levels in results.get("per_difficulty", {}).items():
        lines += [row(f"  {factor}={level}", vals) for level, vals in levels.items()]
    return "\n".join(lines)


@torch.no_grad()  # scoped, so callers in the same process (the demo) keep autograd
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, preset, ids_given = resolve_config(args)
    if (cfg.backbone not in ("auto", cfg.preset_backbone)) and not ids_given:
        raise UserError(f"{preset} holds hyperpixel ids for {cfg.preset_backbone}, not {cfg.backbone}: give "
                        f"--hyperpixel explicitly (ids mean different blocks) or use a {cfg.backbone} preset")
    out_dir = prepare_outputs(cfg, getattr(args, "overwrite", False))
    from data import build_dataset
    from models.backbone import HyperpixelBackbone, validate_ids
    from models.weights import load_resnet
    from validation_and_test.evaluate import Matcher, MatchSettings, evaluate, resolve_thres

    info = init_distributed(cfg.device)
    log = get_logger("eval", info)
    numerics = set_faithful_numerics(info.device, cfg.fast)
    if cfg.pfpascal_kps != "mat" and cfg.dataset != "pfpascal":
        raise UserError(f"--pfpascal-kps {cfg.pfpascal_kps} applies to --dataset pfpascal only")
    options = {"keypoint_source": cfg.pfpascal_kps} if cfg.dataset == "pfpascal" else {}
    dataset = build_dataset(cfg.dataset, cfg.datapath, cfg.split, **options)
    thres = resolve_thres(dataset, cfg.thres)
    model, arch, weights_record = load_resnet(cfg.backbone, cfg.weights, cfg.seed)
    if arch != cfg.preset_backbone and not ids_given:
        raise UserError(f"{preset} holds hyperpixel ids for {cfg.preset_backbone} but the weights are a "
                        f"{arch}: give --hyperpixel explicitly or --backbone {cfg.preset_backbone}")
    backbone = HyperpixelBackbone(model, arch)
    ids = validate_ids(cfg.hyperpixel, backbone.n_ids)
    settings = MatchSettings.from_config(cfg)
    matcher = Matcher(backbone, settings, info.device, cache_mb=cfg.cache_mb)
    log.info("%s %s: %d pairs, %s %s, ids %s, device %s (%s), %d process(es)", cfg.dataset, cfg.split,
             len(dataset) if cfg.max_pairs is None else min(len(dataset), cfg.max_pairs), arch,
             weights_record.get("weights"), ",".join(map(str, ids)), info.device, numerics["precision"],
             info.world_size)

    on_pair = None
    if cfg.vis_dir:
        on_pair = _visualiser(cfg, info.rank, info.world_size)
    result = evaluate(matcher, dataset, ids, cfg.alpha, thres, cfg.max_pairs, info,
                      num_workers=cfg.num_workers, progress=True, on_pair=on_pair)
    if not info.is_main:
        return 0
    summary = result.summary
    results = {
        "dataset": cfg.dataset, "split": cfg.split, "n_pairs": result.n_pairs, "thres": thres,
        "data": dataset.describe(),  # root, keypoint source, comparable (datasets.md §1)
        "alphas": [float(a) for a in cfg.alpha],
        "pck": summary["pck"], "pck_per_keypoint": summary["pck_per_keypoint"],
        "per_class": summary["per_class"],
        **({"per_difficulty": summary["per_difficulty"]} if "per_difficulty" in summary else {}),
        "averaging": summary.get("averaging"), "n_keypoints": summary.get("n_keypoints"),
        "n_uncovered_keypoints": result.n_uncovered,
        "backbone": arch, "hyperpixel": list(ids), "weights": weights_record,
        "matching": {"sim": "HPF (RHM on max(0,cos)^3)" if cfg.hpf else cfg.sim, "exp1": cfg.exp1,
                     "exp2": cfg.exp2, "eps": cfg.eps, "sinkhorn_iters": cfg.sinkhorn_iters,
                     "sinkhorn_solver": cfg.solver, "classmap": cfg.classmap,
                     "resize_rule": settings.resize_rule, "long_side": cfg.long_side,
                     "prune_margin": cfg.hpf},
        "device": str(info.device), "precision": numerics["precision"], "fast": cfg.fast, "decoder": "pillow",
        "world_size": info.world_size, "preset": preset, "config": config_to_dict(cfg),
        "timings": result.timings, "git_sha": git_sha(), "versions": package_versions(),
    }
    atomic_write_text(out_dir / "per_pair.csv", per_pair_csv(result.rows, cfg.alpha))
    write_run_metadata(out_dir, config_to_dict(cfg))
    atomic_write_json(out_dir / "results.json", {**results, COMPLETE_KEY: True})  # last: marks completion
    release_output_dir(out_dir)
    print(format_table(results))
    if result.n_uncovered:
        log.info("%d keypoints had no source box around them (counted wrong)", result.n_uncovered)
    log.info("results in %s (%.1f ms/pair)", out_dir, result.timings.get("ms_per_pair", float("nan")))
    return 0


def prepare_outputs(cfg: EvalConfig, overwrite: bool) -> Path:
    """Claim the output folder (and check --vis-dir) before any work; returns the output folder.
    Under torchrun only rank 0 writes results, so only it claims the folder."""
    if os.environ.get("RANK", "0") != "0":
        return Path(cfg.output_dir or ".")
    if cfg.vis_dir:
        check_writable_dir(cfg.vis_dir, "--vis-dir")
    return claim_output_dir(cfg.output_dir or default_output_dir(cfg.dataset), overwrite)


def _visualiser(cfg: EvalConfig, rank: int, world_size: int):
    from validation_and_test.visualize import pair_figure_path, save_pair_figure

    headline = min(range(len(cfg.alpha)), key=lambda a: abs(cfg.alpha[a] - 0.1))
    budget = {"left": -(-cfg.vis_max // world_size)}

    def on_pair(sample: dict[str, Any], prediction: Any) -> None:
        if budget["left"] <= 0:
            return
        budget["left"] -= 1
        pred = prediction.pred.cpu() / prediction.trg_scale  # resized -> original target pixels
        path = pair_figure_path(cfg.vis_dir, int(sample["index"]), sample["src_name"], sample["trg_name"])
        save_pair_figure(path, sample["src_img"], sample["trg_img"], sample["src_kps"], sample["trg_kps"],
                         pred, prediction.correct[headline],
                         title=f"{sample.get('class_name', '')} pair {sample['index']}: "
                               f"PCK@{cfg.alpha[headline]:g} = "
                               f"{100 * float(prediction.correct[headline].float().mean()):.1f}")

    return on_pair


if __name__ == "__main__":
    run_cli(main)
