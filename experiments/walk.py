"""Walk quality of an init, before any training step: how well the pixel-level cycle's walk already works.

On the demo's crops (the stage-2 recipe's cycle settings, `configs/demo.yaml`) of a pair split, with a fixed
generator: the cycle loss (px², soft-argmax walk), its crop-centre baseline (the MSE of answering every
cell with its crop's mean ground truth: a walk that cannot place cells inside the crop does not beat it)
and the hard-argmax walk accuracy (share of valid crop cells that return within one stride of their origin,
`models.cycle.hard_walk_accuracy`). BatchNorm uses batch statistics, as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from configs import CONFIG_DIR

WALK_PRESET = CONFIG_DIR / "demo.yaml"


@torch.no_grad()
def walk_quality(weights: str | Path, split: str = "val", rounds: int = 10, seed: int = 0,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """Mean over `rounds` passes over the demo `split` pairs (each pass in a shuffled order, as training
    mixes pairs: consecutive demo pairs share a photo, and a BN group of one photo's pairs walks much worse;
    order and crops drawn from a generator seeded with `seed`) -> {"loss_cycle", "centre_baseline",
    "loss_ratio", "hard_walk_acc", "crops"}; loss and baseline in px² at the recipe's image size. Batches of
    pair_batch_size / moco.bn_splits pairs: the BN groups of training. The cycle loss is heavy-tailed: 90
    crops differ by ~20 % between generator seeds, hence 10 rounds."""
    from data.demo import ensure_demo_data
    from models.cycle import cycle_loss
    from models.weights import load_resnet
    from training.config import load_train_config
    from training.loader import build_pair_dataset

    ensure_demo_data()
    cfg = load_train_config(WALK_PRESET, [f"pixel_data.split={split}"])
    net = load_resnet("resnet18", str(weights))[0].to(device).train()
    pairs = build_pair_dataset(cfg.pixel_data).dataset
    gen = torch.Generator().manual_seed(seed)
    batch_size = max(1, cfg.pair_batch_size // cfg.moco.bn_splits)
    sums = {"loss_cycle": 0.0, "centre_baseline": 0.0, "hard_walk_acc": 0.0}
    n = 0
    for _ in range(rounds):
        order = torch.randperm(len(pairs), generator=gen).tolist()
        for start in range(0, len(pairs), batch_size):
            items = [pairs[i] for i in order[start:start + batch_size]]
            src = torch.stack([it["src"] for it in items]).to(device)
            trg = torch.stack([it["trg"] for it in items]).to(device)
            res = cycle_loss(net, src, trg, cfg.cycle, gen, bn_groups=cfg.moco.bn_splits)
            values = {"loss_cycle": res.loss, "centre_baseline": res.stats["cycle_centre_baseline"],
                      "hard_walk_acc": res.stats["cycle_hard_walk_acc"]}
            for key, value in values.items():
                sums[key] += float(value) * len(items)
            n += len(items)
    out: dict[str, Any] = {k: v / n for k, v in sums.items()}
    out["loss_ratio"] = out["loss_cycle"] / out["centre_baseline"]
    out["crops"] = n
    return out


def pck_every(weights: str | Path, dataset: str, datapath: str | None, split: str, every: int,
              device: str | torch.device = "cpu") -> dict[str, float]:
    """PCK (%) per alpha of `weights` on every `every`-th pair of (dataset, split), with the demo evaluation
    preset's ResNet-18 ids and resolution (thres: the dataset's default)."""
    import argparse

    from configs.runtime import resolve_device
    from data import build_dataset
    from experiments.evaluation import EVAL_PRESET
    from models.backbone import HyperpixelBackbone
    from models.weights import load_resnet
    from validation_and_test.config import resolve_config
    from validation_and_test.evaluate import Matcher, MatchSettings, evaluate

    cfg, _, _ = resolve_config(argparse.Namespace(config=str(EVAL_PRESET), dataset=dataset, datapath=datapath,
                                                  split=split, thres="auto"))
    pairs = build_dataset(dataset, datapath, split)
    model, arch, _ = load_resnet("resnet18", str(weights))
    matcher = Matcher(HyperpixelBackbone(model, arch), MatchSettings.from_config(cfg), resolve_device(device))
    res = evaluate(matcher, pairs, cfg.hyperpixel, cfg.alpha, cfg.thres,
                   indices=range(0, len(pairs), every))
    return {k: float(v) for k, v in res.summary["pck"].items()}


def init_quality(weights: str | Path, work: Path, device: str = "cpu",
                 willow_root: str | None = None) -> dict[str, Any]:
    """The walk-quality row of an init: `walk_quality` on demo val crops (and under "trn" on the demo trn
    crops stage 2 trains on), PCK on demo val (as is and with BN
    statistics re-estimated on the demo trn pair images) and, with `willow_root`, on every 9th PF-WILLOW test
    pair (reported, never used to choose). `work` holds the BN-re-estimated copy."""
    from experiments.evaluation import eval_long_side, pair_images, write_bn_recalibrated

    row: dict[str, Any] = {"weights": str(weights), **walk_quality(weights, device=device),
                           "trn": walk_quality(weights, "trn", rounds=2, device=device)}
    row["demo_val_pck"] = pck_every(weights, "demo", None, "val", 1, device)
    bn = write_bn_recalibrated(Path(weights), work / "bn_weights.pth",
                               pair_images("demo", None, "trn", eval_long_side(), device), device)
    row["demo_val_pck_bn"] = pck_every(bn, "demo", None, "val", 1, device)
    if willow_root:
        row["pfwillow_every9_pck"] = pck_every(weights, "pfwillow", willow_root, "test", 9, device)
    return row
