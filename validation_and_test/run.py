"""One evaluation run as a function: matching, PCK and the output folder (results.json, per_pair.csv,
config.yaml, plots). `validation_and_test/test.py` is its CLI; `experiments` calls it directly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from configs import REPO_ROOT
from configs.runtime import (
    COMPLETE_KEY,
    UserError,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
    claim_output_dir,
    get_logger,
    init_distributed,
    release_output_dir,
    set_faithful_numerics,
    unique_suffix,
    write_run_metadata,
)
from configs.schema import config_to_dict
from validation_and_test.config import EvalConfig, check_backbone


def prepare_outputs(cfg: EvalConfig, overwrite: bool) -> Path:
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


@torch.no_grad()  # scoped, so callers in the same process (the experiments) keep autograd
def run_evaluation(cfg: EvalConfig, preset: str, ids_given: bool, overwrite: bool = False,
                   plots: bool = True) -> dict[str, Any] | None:
    """Evaluate `cfg` (from `resolve_config`) and write its outputs; returns results.json's content (None on
    the non-main processes under torchrun)."""
    check_backbone(cfg, preset, ids_given)
    out_dir = prepare_outputs(cfg, overwrite)
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
        return None
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
    if plots:
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
    return results
