"""Training data: the two sources (ImageNet views, benchmark pairs), their loader and seeded samplers.

`TrainingSources` answers the keys of `MixedBatchSampler` (`("img", i)` -> two views of image i,
`("pair", j)` -> the two images of pair j); `collate_training` stacks them into one batch dict:
`im_q`, `im_k` (B, 3, S, S), `image_index` (B,), `src`, `trg` (B', 3, S', S'), `pair_index` (B',).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from configs.runtime import DistInfo, UserError
from training.config import ImageDataConfig, PixelDataConfig, TrainConfig
from training.samplers import ImageStreamSampler, MixedBatchSampler, PairStreamSampler


class TrainingSources(Dataset):
    """Index with `("img", i)` or `("pair", j)`; `set_epoch` reaches the image augmentation."""

    def __init__(self, images: Dataset | None, pairs: Dataset) -> None:
        self.images, self.pairs = images, pairs

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.images, "set_epoch"):
            self.images.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.images if self.images is not None else self.pairs)

    def __getitem__(self, key: tuple[str, int]) -> tuple[str, dict[str, Any]]:
        kind, index = key
        return kind, (self.images[index] if kind == "img" else self.pairs[index])


def collate_training(items: list[tuple[str, dict[str, Any]]]) -> dict[str, torch.Tensor]:
    imgs = [x for kind, x in items if kind == "img"]
    pairs = [x for kind, x in items if kind == "pair"]
    out: dict[str, torch.Tensor] = {}
    if imgs:
        out["im_q"] = torch.stack([x["im_q"] for x in imgs])
        out["im_k"] = torch.stack([x["im_k"] for x in imgs])
        out["image_index"] = torch.tensor([int(x["index"]) for x in imgs])
    if pairs:
        out["src"] = torch.stack([x["src"] for x in pairs])
        out["trg"] = torch.stack([x["trg"] for x in pairs])
        out["pair_index"] = torch.tensor([int(x["index"]) for x in pairs])
    return out


def build_image_dataset(cfg: ImageDataConfig, seed: int) -> Dataset:
    """TwoViewImageFolder over the ImageNet root (or the demo ImageFolder)."""
    from data.imagenet import TwoViewImageFolder

    if cfg.source == "demo":
        from data.demo import demo_imagefolder, ensure_demo_data

        root = demo_imagefolder(ensure_demo_data())
    else:
        root = Path(cfg.root)
    return TwoViewImageFolder(root, aug=cfg.aug, image_size=cfg.image_size, seed=seed)


@dataclass
class PairSelection:
    """The benchmark pairs the pixel branch uses, with the trn/test overlap counts (docs/method.md, Data)."""

    dataset: Dataset
    num_pairs: int
    overlap: dict[str, int]


def build_pair_dataset(cfg: PixelDataConfig) -> PairSelection:
    """UnlabelledPairs of (dataset, split); for non-test splits, count (and optionally drop) pairs that
    share an image with the test split."""
    from data import UnlabelledPairs, build_dataset

    base = build_dataset(cfg.dataset, root=cfg.root, split=cfg.split)
    pairs: Dataset = UnlabelledPairs(base, image_size=cfg.image_size, honour_flip=cfg.honour_flip)
    overlap: dict[str, int] = {}
    if cfg.split != "test":
        try:
            test = build_dataset(cfg.dataset, root=cfg.root, split="test")
        except UserError:
            test = None
        if test is not None:
            test_images: set[str] = set()
            test_pairs: set[tuple[str, str]] = set()
            for i in range(len(test)):
                m = test.pair_meta(i)
                test_images.update((m["src_name"], m["trg_name"]))
                test_pairs.add((m["src_name"], m["trg_name"]))
            metas = [base.pair_meta(i) for i in range(len(base))]
            shares = [i for i, m in enumerate(metas)
                      if m["src_name"] in test_images or m["trg_name"] in test_images]
            equal = sum((m["src_name"], m["trg_name"]) in test_pairs for m in metas)
            overlap = {"pairs": len(base), "pairs_sharing_test_image": len(shares),
                       "pairs_equal_to_test_pair": equal,
                       "test_images": len(test_images)}
            if cfg.drop_test_overlap:
                drop = set(shares)
                keep = [i for i in range(len(base)) if i not in drop]
                if not keep:
                    raise UserError(f"pixel_data.drop_test_overlap left no {cfg.dataset}/{cfg.split} pairs")
                pairs = Subset(pairs, keep)
                overlap["dropped"] = len(drop)
    if len(pairs) == 0:
        raise UserError(f"pixel_data: {cfg.dataset}/{cfg.split} has no pairs")
    return PairSelection(dataset=pairs, num_pairs=len(pairs), overlap=overlap)


@dataclass
class TrainingData:
    loader: DataLoader
    sampler: MixedBatchSampler
    sources: TrainingSources
    steps_per_epoch: int
    pair_overlap: dict[str, int]
    num_images: int
    num_pairs: int

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        """Position the streams at (epoch, step_in_epoch) before iterating the loader."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(step_in_epoch)
        self.sources.set_epoch(epoch)


def build_training_data(cfg: TrainConfig, info: DistInfo, images: Dataset | None = None,
                        pairs: PairSelection | None = None) -> TrainingData:
    """Datasets, rank-disjoint seeded samplers and the DataLoader (one per rank). With
    `image_data.source: none` there is no image stream and an epoch is one pass over the pairs."""
    pixel_only = cfg.image_data.source == "none"  # with moco.loss_weight 0 (check_train_settings)
    if images is None and not pixel_only:
        images = build_image_dataset(cfg.image_data, cfg.seed)
    pairs = pairs if pairs is not None else build_pair_dataset(cfg.pixel_data)
    n_img = len(images) if images is not None else 0
    if pixel_only:
        steps = pairs.num_pairs // info.world_size // cfg.pair_batch_size
    else:
        steps = n_img // info.world_size // cfg.batch_size
    if cfg.steps_per_epoch is not None:
        steps = min(steps, cfg.steps_per_epoch)
    if steps < 1:
        what = (f"pixel_data: {pairs.num_pairs} pairs" if pixel_only else f"image_data: {n_img} images")
        batch = "pair_batch_size" if pixel_only else "batch_size"
        raise UserError(f"{what} are fewer than one batch per rank ({info.world_size} ranks x {batch} "
                        f"{getattr(cfg, batch)}); lower {batch}")
    img_sampler = None if pixel_only else ImageStreamSampler(n_img, info.rank, info.world_size, cfg.seed)
    pair_sampler = PairStreamSampler(pairs.num_pairs, steps * cfg.pair_batch_size, info.rank, info.world_size,
                                     cfg.seed)
    sampler = MixedBatchSampler(img_sampler, pair_sampler, 0 if pixel_only else cfg.batch_size,
                                cfg.pair_batch_size, steps)
    sources = TrainingSources(images, pairs.dataset)
    loader = DataLoader(sources, batch_sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_training, pin_memory=info.device.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if cfg.num_workers > 0 else None)
    return TrainingData(loader=loader, sampler=sampler, sources=sources, steps_per_epoch=steps,
                        pair_overlap=pairs.overlap, num_images=n_img, num_pairs=pairs.num_pairs)
