"""Evaluate SCOT-style matching and PCK on a benchmark (SCOT protocol); thin CLI over `evaluate`.

    python validation_and_test/test.py --dataset pfwillow --weights runs/x/checkpoints/last.pth
    torchrun --nproc_per_node=4 validation_and_test/test.py --dataset spair

Settings: dataclass defaults <- `configs/eval/<dataset>.yaml` (or `--config`) <- flags. Writes
`results.json`, `per_pair.csv`, `config.yaml`, `pck_curve.png` and `per_class.png` (`--no-plots`: not the
PNGs) to `--output-dir` (default `runs/eval/<dataset>-<time>`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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
    init_distributed,
    release_output_dir,
    run_cli,
    set_faithful_numerics,
    unique_suffix,
    write_run_metadata,
)
from configs.schema import config_to_dict  # noqa: E402
from validation_and_test.config import (  # noqa: E402, F401 (resolve_config: re-exported for callers)
    check_backbone,
    eval_parent_parser,
    parse_ids,
    resolve_config,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[eval_parent_parser()],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = argparse.SUPPRESS
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--split", choices=("trn", "val", "test"), default=d, help="split (default test)")
    ev.add_argument("--pfpascal-kps", dest="pfpascal_kps", choices=("mat", "csv"), default=d,
                    help="PF-PASCAL keypoints: .mat files (default) or the test CSV columns (recorded, "
                         "not comparable; thres img only)")
    ev.add_argument("--hyperpixel", type=parse_ids, default=d, help="hyperpixel ids, e.g. 2,12,13,15")
    ev.add_argument("--alpha", type=float, nargs="+", default=d, help="PCK alphas (default 0.05 0.1 0.15)")
    ev.add_argument("--output-dir", dest="output_dir", default=d, help="default runs/eval/<dataset>-<time>")
    ev.add_argument("--vis-dir", dest="vis_dir", default=d, help="write PNGs of the pairs here")
    ev.add_argument("--overwrite", action="store_true", help="replace a complete result in --output-dir")
    ev.add_argument("--no-plots", dest="plots", action="store_false",
                    help="do not write pck_curve.png and per_class.png")
    return p


def prepare_outputs(cfg, overwrite: bool) -> Path:
    """Claim the output folder (and check --vis-dir) before any work; returns the output folder.
    Under torchrun only rank 0 writes results, so only it claims the folder."""
    if os.environ.get("RANK", "0") != "0":
        return Path(cfg.output_dir or ".")
    if cfg.vis_dir:
        check_writable_dir(cfg.vis_dir, "--vis-dir")
    return claim_output_dir(cfg.output_dir or default_output_dir(cfg.dataset), overwrite)


def default_output_dir(dataset: str) -> Path:
    """runs/eval/<dataset>-<time>-<random suffix>: unique, so two evaluations never share a folder."""
    return REPO_ROOT / "runs" / "eval" / f"{dataset}-{unique_suffix()}"


@torch.no_grad()  # scoped, so callers in the same process (the demo) keep autograd
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg, preset, ids_given = resolve_config(args)
    check_backbone(cfg, preset, ids_given)
    out_dir = prepare_outputs(cfg, args.overwrite)
    from data import build_dataset
    from models.backbone import validate_ids
    from models.backbone_loader import load_backbone
    from validation_and_test.evaluate import Matcher, MatchSettings, evaluate, resolve_thres
    from validation_and_test.feature_store import disk_feature_cache
    from validation_and_test.pck_curve import CurveCollector, chain_hooks
    from validation_and_test.record import settings_record
    from validation_and_test.report import format_table, per_pair_csv
    from validation_and_test.visualize import pair_visualiser

    info = init_distributed(cfg.device)
    log = get_logger("eval", info)
    numerics = set_faithful_numerics(info.device, cfg.fast)
    if cfg.pfpascal_kps != "mat" and cfg.dataset != "pfpascal":
        raise UserError(f"--pfpascal-kps {cfg.pfpascal_kps} applies to --dataset pfpascal only")
    options = {"keypoint_source": cfg.pfpascal_kps} if cfg.dataset == "pfpascal" else {}
    dataset = build_dataset(cfg.dataset, cfg.datapath, cfg.split, **options)
    thres = resolve_thres(dataset, cfg.thres)
    backbone, weights_record = load_backbone(cfg.backbone, cfg.weights, cfg.seed)
    arch = backbone.name
    check_backbone(cfg, preset, ids_given, backbone.id_family)
    ids = validate_ids(cfg.hyperpixel, backbone.n_ids)
    matcher = Matcher(backbone, MatchSettings.from_config(cfg), info.device, cache_mb=cfg.cache_mb,
                      disk_cache=disk_feature_cache(cfg.feature_cache, weights_record))
    numerics = matcher.numerics(numerics)
    log.info("%s %s: %d pairs, %s %s, ids %s, device %s (%s), %d process(es)", cfg.dataset, cfg.split,
             len(dataset) if cfg.max_pairs is None else min(len(dataset), cfg.max_pairs), arch,
             weights_record.get("weights"), ",".join(map(str, ids)), info.device, numerics["precision"],
             info.world_size)
    vis = pair_visualiser(cfg.vis_dir, cfg.alpha, cfg.vis_max, info.world_size) if cfg.vis_dir else None
    curve = CurveCollector(dataset.name, thres)
    result = evaluate(matcher, dataset, ids, cfg.alpha, thres, cfg.max_pairs, info,
                      num_workers=cfg.num_workers, progress=True, on_pair=chain_hooks(curve.on_pair, vis))
    pck_curve = curve.curve(info)  # collective under torchrun
    if not info.is_main:
        return 0
    summary = result.summary
    results = {
        "dataset": cfg.dataset, "split": cfg.split, "n_pairs": result.n_pairs,
        "data": dataset.describe(),  # root, keypoint source, comparable with published numbers or not
        "alphas": [float(a) for a in cfg.alpha], "hyperpixel": list(ids),
        **{k: summary[k] for k in ("pck", "pck_per_keypoint", "per_class", "per_difficulty", "averaging",
                                   "n_keypoints") if k in summary},
        "n_uncovered_keypoints": result.n_uncovered,
        **settings_record(cfg, thres=thres, arch=arch, weights=weights_record, numerics=numerics,
                          preset=preset, matcher=matcher),
        "world_size": info.world_size, "timings": result.timings, "feature_cache": result.cache,
        **({"feature_cache_disk": matcher.disk.stats()} if matcher.disk is not None else {}),
        "pck_curve": pck_curve,
    }
    atomic_write_text(out_dir / "per_pair.csv", per_pair_csv(result.rows, cfg.alpha))
    if args.plots:
        from validation_and_test.plots import write_eval_plots

        write_eval_plots(out_dir, results)
    write_run_metadata(out_dir, config_to_dict(cfg))
    atomic_write_json(out_dir / "results.json", {**results, COMPLETE_KEY: True})  # last: marks completion
    release_output_dir(out_dir)
    print(format_table(results))
    if result.n_uncovered:
        log.info("%d keypoints had no source box around them (counted wrong)", result.n_uncovered)
    log.info("results in %s (%.1f ms/pair, per-image cache hit rate %.1f %%)", out_dir,
             result.timings.get("ms_per_pair", float("nan")), 100 * result.cache.get("hit_rate", 0.0))
    return 0


if __name__ == "__main__":
    run_cli(main)
