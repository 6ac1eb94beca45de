"""Evaluating a checkpoint and re-estimating its BatchNorm statistics, as functions for the experiments.

Every evaluation uses `configs/eval/demo.yaml` (same ids and resolution) plus the setting's flags; a finished
evaluation folder (results.json present) is reused.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from configs import CONFIG_DIR
from configs.runtime import UserError, atomic_torch_save

EVAL_PRESET = CONFIG_DIR / "eval" / "demo.yaml"
ALPHAS = ("0.05", "0.1", "0.15")


def check_pair_count(value: int | None, flag: str) -> int | None:
    """None (all pairs) or a positive count; one-line `UserError` for 0 or less (0 never means "all")."""
    if value is not None and value < 1:
        raise UserError(f"{flag} must be at least 1 (got {value}); leave it out to use every pair")
    return value


def eval_long_side() -> int:
    """The evaluation resolution (long side, px) of the shared preset."""
    from configs.schema import load_yaml

    return int(load_yaml(EVAL_PRESET).get("long_side", 300))


def evaluate_weights(weights: Path, out_dir: Path, device: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Evaluate `weights` with the demo preset and `settings` (EvalConfig keys: split, dataset, datapath,
    thres, max_pairs, hyperpixel, vis_dir) into `out_dir`; returns its results.json content."""
    results = out_dir / "results.json"
    if not results.is_file():
        from validation_and_test.config import resolve_config
        from validation_and_test.run import run_evaluation

        flags = argparse.Namespace(config=str(EVAL_PRESET), weights=str(weights), device=device,
                                   output_dir=str(out_dir), **settings)
        cfg, preset, ids_given = resolve_config(flags)
        run_evaluation(cfg, preset, ids_given)
    return json.loads(results.read_text())


def pair_images(dataset: str, root: str | None, split: str, long_side: int, device: torch.device | str,
                max_pairs: int | None = None) -> Iterator[torch.Tensor]:
    """Each distinct image of the first `max_pairs` pairs of (dataset, split) once, prepared as for
    evaluation: ImageNet-normalised, long side `long_side`, (1, 3, h, w)."""
    from data import build_dataset
    from data.io import read_rgb_uint8
    from validation_and_test.preprocess import prepare_image

    pairs = build_dataset(dataset, root, split)
    seen: set[str] = set()
    for i in range(len(pairs) if max_pairs is None else min(max_pairs, len(pairs))):
        for path in pairs.image_paths(i):
            if str(path) not in seen:
                seen.add(str(path))
                yield prepare_image(read_rgb_uint8(path), "scot", long_side, device)[0]


def write_bn_recalibrated(weights: Path, path: Path, images: Iterator[torch.Tensor],
                          device: torch.device | str = "cpu") -> Path:
    """`weights` (any checkpoint the loaders read) with BN statistics re-estimated on `images`, as a plain
    fp32 state dict (`models.batchnorm.recalibrate_batchnorm`)."""
    if not path.is_file():
        from models.batchnorm import recalibrate_batchnorm
        from models.weights import load_resnet

        net, _, _ = load_resnet("auto", str(weights))
        recalibrate_batchnorm(net.to(device), images)
        atomic_torch_save({k: v.cpu() for k, v in net.state_dict().items()}, path)
    return path
