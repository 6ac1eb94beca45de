"""Generated look-alike pairs for benchmarks and device checks (never real data, never a score).

`LookalikePairs(n_images, size)`: `n_images` photos (bundled scikit-image pictures, cropped to `size`, each
a shifted, recoloured variant) and every ordered pair (i, j), i != j, so each image is in 2 (n - 1) pairs
(10 images: 90 pairs, 18 per image, as PF-WILLOW). Optionally written to / decoded from JPEG files.
Samples have the benchmark datasets' keys (`src_img` uint8 (3, H, W), `src_kps` (K, 2) px, boxes, names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.registry import extent_box

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def lookalike_image(index: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (3, H, W) image, shift (2,) px (x, y)) of look-alike image `index` at `size` = (H, W)."""
    from skimage import data as skdata

    photo = getattr(skdata, PHOTOS[index % len(PHOTOS)])()
    img = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float().unsqueeze(0)
    img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)[0]
    dx, dy = 4 * (index % 5), 3 * (index % 7)
    out = torch.zeros_like(img)
    out[:, dy:, dx:] = img[:, : size[0] - dy, : size[1] - dx] * (0.85 + 0.03 * (index % 5)) + 5 * (index % 3)
    return out.clamp(0, 255).round().to(torch.uint8), torch.tensor([dx, dy], dtype=torch.float32)


class LookalikePairs(torch.utils.data.Dataset):
    """Every ordered pair of `n_images` look-alike images (see module doc); `max_pairs` keeps the first ones.
    `LookalikePairs.from_pairs` wraps given pairs instead (each image in one pair: a cold cache).

    `folder`: images are written there as JPEG and decoded per sample (the loader's real work).
    """

    split = "test"

    def __init__(self, n_images: int, size: tuple[int, int] = (375, 500), n_kps: int = 10,
                 folder: Path | None = None, max_pairs: int | None = None, name: str = "lookalike"):
        images = [lookalike_image(i, size) for i in range(n_images)]
        g = torch.Generator().manual_seed(0)
        height, width = size
        base = torch.stack([torch.rand(n_kps, generator=g) * (width - 100) + 40,
                            torch.rand(n_kps, generator=g) * (height - 100) + 40], dim=1)
        pairs = [(i, j) for i in range(n_images) for j in range(n_images) if i != j][:max_pairs]
        self._setup([img for img, _ in images], [base + shift for _, shift in images], pairs, folder, name,
                    "bbox")

    @classmethod
    def from_pairs(cls, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                   folder: Path | None = None, name: str = "lookalike", default_thres: str = "bbox"
                   ) -> LookalikePairs:
        """Pairs (src uint8 (3, H, W), trg, src_kps (K, 2), trg_kps) as a dataset, images 2k and 2k + 1."""
        obj = cls.__new__(cls)
        obj._setup([img for p in pairs for img in p[:2]], [kps for p in pairs for kps in p[2:]],
                   [(2 * k, 2 * k + 1) for k in range(len(pairs))], folder, name, default_thres)
        return obj

    def _setup(self, images: list[torch.Tensor], kps: list[torch.Tensor], pairs: list[tuple[int, int]],
               folder: Path | None, name: str, default_thres: str) -> None:
        self.images, self.kps, self.pairs = images, kps, pairs
        self.folder, self.name, self.default_thres = folder, name, default_thres
        if folder is not None:
            from PIL import Image

            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"img{i:03d}.jpg", quality=95)

    def __len__(self) -> int:
        return len(self.pairs)

    def check_thres(self, thres: str) -> str:
        return self.default_thres if thres == "auto" else thres

    def _image(self, i: int) -> torch.Tensor:
        if self.folder is None:
            return self.images[i]
        from data.io import read_rgb_uint8

        return read_rgb_uint8(self.folder / f"img{i:03d}.jpg")

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, j = self.pairs[k]
        box = torch.from_numpy(extent_box(self.kps[j].numpy()))
        return {"index": k, "src_name": f"img{i:03d}", "trg_name": f"img{j:03d}", "class_name": "lookalike",
                "src_img": self._image(i), "trg_img": self._image(j), "src_kps": self.kps[i].clone(),
                "trg_kps": self.kps[j].clone(), "src_bbox": box.clone(), "trg_bbox": box}
