"""Batching of evaluation pairs (masks, no sentinels) and the unlabelled pair view for training."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from data.io import open_rgb
from data.registry import PairDataset
from data.spair import DIFFICULTY_KEYS
from data.transforms import resize_square_normalized

_STACKED_INTS = ("index", "class_id", *DIFFICULTY_KEYS)


def collate_pairs(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch evaluation samples.

    Images stay lists of uint8 (3, H_b, W_b) (sizes differ). `src_kps`, `trg_kps` -> float32 (B, Kmax, 2)
    padded with 0.0 and `kps_mask` bool (B, Kmax) (True = real keypoint; padded rows must be masked out),
    `n_kps` int64 (B,). Boxes -> float32 (B, 4). Integer metadata (index, class_id, SPair flags) -> int64
    (B,); other metadata (names) -> lists.
    """
    if not samples:
        raise ValueError("collate_pairs needs at least one sample")
    batch: dict[str, Any] = {}
    n_kps = torch.tensor([len(s["src_kps"]) for s in samples], dtype=torch.int64)
    k_max = int(n_kps.max())
    mask = torch.arange(k_max)[None, :] < n_kps[:, None]
    for key in ("src_kps", "trg_kps"):
        padded = torch.zeros(len(samples), k_max, 2, dtype=torch.float32)
        for b, s in enumerate(samples):
            padded[b, : len(s[key])] = s[key]
        batch[key] = padded
    batch["kps_mask"] = mask
    batch["n_kps"] = n_kps
    for key in samples[0]:
        if key in batch:
            continue
        values = [s[key] for s in samples]
        if key in ("src_bbox", "trg_bbox"):
            batch[key] = torch.stack(values).float()
        elif key in _STACKED_INTS:
            batch[key] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[key] = values
    return batch


class UnlabelledPairs(torch.utils.data.Dataset):
    """The two images of each benchmark pair for the pixel-level branch (keypoints, boxes, classes unused).

    Item: {"src": float32 (3, S, S), "trg": float32 (3, S, S), "index": int}: Pillow RGB, resized to S x S
    ignoring the aspect ratio (PIL bicubic), ImageNet-normalised. PF-PASCAL's `flip` column (both images
    mirrored horizontally) is honoured for split trn only when `honour_flip`. Deterministic.
    """

    def __init__(self, pair_dataset: PairDataset, image_size: int = 224, honour_flip: bool = True) -> None:
        super().__init__()
        self.pairs = pair_dataset
        self.image_size = int(image_size)
        self.honour_flip = honour_flip

    def __len__(self) -> int:
        return len(self.pairs)

    def flipped(self, i: int) -> bool:
        if not (self.honour_flip and self.pairs.split == "trn"):
            return False
        return bool(self.pairs.records[i].extra.get("flip", 0))

    def __getitem__(self, i: int) -> dict[str, Any]:
        src_path, trg_path = self.pairs.image_paths(i)
        flip = self.flipped(i)
        out: dict[str, Any] = {"index": int(i)}
        for key, path in (("src", src_path), ("trg", trg_path)):
            img = open_rgb(path)
            if flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            out[key] = resize_square_normalized(img, self.image_size)
        return out
