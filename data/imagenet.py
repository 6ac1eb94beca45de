"""ImageNet-style ImageFolder with MoCo v1 / v2 two-view augmentation and indexed randomness.

Every random draw of item i in epoch e comes from a generator seeded by (seed, epoch, i), so a resumed run
(or any worker layout) sees identical augmentations. The augmentation algorithms are torchvision's
(`RandomResizedCrop` parameter sampling, `ColorJitter` in a random order, MoCo v2's PIL Gaussian blur),
with their parameters drawn from that generator.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as tvf
from PIL import Image, ImageFilter

from configs.runtime import UserError
from data.io import IMAGE_EXTENSIONS, open_rgb
from data.transforms import normalize, to_float_tensor


def list_image_folder(root: str | Path) -> list[Path]:
    """Images in `root/<class>/<image>` (any depth below the class folder), sorted; labels ignored."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist (ImageNet: pass the path of ILSVRC2012 train/, "
                        f"laid out as train/<wnid>/<image>.JPEG; any ImageFolder works)")
    files = []
    for class_dir in sorted(e.path for e in os.scandir(root) if e.is_dir()):
        for folder, _, names in os.walk(class_dir, followlinks=True):
            files += [Path(folder) / n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    files.sort()
    if not files:
        raise UserError(f"image folder {root} holds no images in <class>/<image> sub-folders (expected the "
                        f"ImageFolder layout, e.g. train/<wnid>/<image>.JPEG)")
    return files


class IndexedRandom:
    """Random draws of one item: a torch.Generator seeded from (seed, epoch, index)."""

    def __init__(self, seed: int, epoch: int, index: int) -> None:
        entropy = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(2)
        self.gen = torch.Generator().manual_seed(int(entropy[0]) << 31 ^ int(entropy[1]))

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return float(torch.empty(1).uniform_(low, high, generator=self.gen))

    def randint(self, low: int, high: int) -> int:
        """Integer in [low, high] inclusive."""
        return int(torch.randint(low, high + 1, (1,), generator=self.gen))

    def permutation(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.gen).tolist()


def resized_crop_params(width: int, height: int, rnd: IndexedRandom, scale: tuple[float, float] = (0.2, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params with our generator -> (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rnd.uniform(*scale)
        aspect = math.exp(rnd.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(img: Image.Image, rnd: IndexedRandom, b: float, c: float, s: float, h: float) -> Image.Image:
    """torchvision ColorJitter(b, c, s, h): factors uniform in [1-x, 1+x] (hue [-h, h]), random order
    (the same draws, in the same order, as `ColorJitter.get_params`)."""
    order = rnd.permutation(4)
    factors = [rnd.uniform(max(0.0, 1 - b), 1 + b), rnd.uniform(max(0.0, 1 - c), 1 + c),
               rnd.uniform(max(0.0, 1 - s), 1 + s), rnd.uniform(-h, h)]
    ops = [tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue]
    for k in order:
        img = ops[k](img, factors[k])
    return img


def moco_view(img: Image.Image, rnd: IndexedRandom, aug: str, size: int) -> torch.Tensor:
    """One augmented view -> ImageNet-normalised float32 (3, size, size).

    v1: RandomResizedCrop(0.2, 1) -> RandomGrayscale(0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4) -> HFlip(0.5).
    v2: RandomResizedCrop(0.2, 1) -> ColorJitter(0.4, 0.4, 0.4, 0.1) w.p. 0.8 -> RandomGrayscale(0.2)
        -> GaussianBlur(sigma in [0.1, 2]) w.p. 0.5 -> HFlip(0.5).
    """
    top, left, h, w = resized_crop_params(img.width, img.height, rnd)
    img = tvf.resized_crop(img, top, left, h, w, [size, size], interpolation=tvf.InterpolationMode.BILINEAR)
    if aug == "v1":
        if rnd.uniform() < 0.2:
            img = tvf.to_grayscale(img, num_output_channels=3)
        img = color_jitter(img, rnd, 0.4, 0.4, 0.4, 0.4)
    else:
        if rnd.uniform() < 0.8:
            img = color_jitter(img, rnd, 0.4, 0.4, 0.4, 0.1)
        if rnd.uniform() < 0.2:
            img = tvf.to_grayscale(img, num_output_channels=3)
        if rnd.uniform() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(radius=rnd.uniform(0.1, 2.0)))
    if rnd.uniform() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return normalize(to_float_tensor(img))


class TwoViewImageFolder(torch.utils.data.Dataset):
    """Item i -> {"im_q": float32 (3, S, S), "im_k": float32 (3, S, S), "index": i}; two independent MoCo
    views of image i, drawn from (seed, epoch, i). Call `set_epoch(epoch)` at the start of every epoch."""

    def __init__(self, root: str | Path, aug: str = "v1", image_size: int = 224, seed: int = 0) -> None:
        super().__init__()
        if aug not in ("v1", "v2"):
            raise UserError(f"unknown MoCo augmentation {aug!r} (choose v1 or v2)")
        self.root = Path(root)
        self.files = list_image_folder(self.root)
        self.aug = aug
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = open_rgb(self.files[i], max_aspect=None)  # random crops: any aspect ratio is fine
        rnd = IndexedRandom(self.seed, self.epoch, i)
        im_q = moco_view(img, rnd, self.aug, self.image_size)
        im_k = moco_view(img, rnd, self.aug, self.image_size)
        return {"im_q": im_q, "im_k": im_k, "index": int(i)}
