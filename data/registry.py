"""Benchmark-pair base class, dataset registry and dataset-root resolution.

Every benchmark dataset is a list of `PairRecord`s built cheaply at construction (pair lists only);
annotations and images are read lazily in `__getitem__`, so datasets work with `num_workers > 0` and never
move tensors to a device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from configs.runtime import UserError, get_logger
from data.io import read_rgb_uint8

DATASETS: dict[str, type[PairDataset]] = {}

DOWNLOAD_HINT = "bash scripts/download_datasets.sh --only {name} --root {root}"


def register(name: str):
    """Class decorator: `DATASETS[name] = cls`."""

    def wrap(cls: type[PairDataset]) -> type[PairDataset]:
        cls.name = name
        DATASETS[name] = cls
        return cls

    return wrap


def default_root() -> Path:
    """`$DATASETS` when set, else `./Datasets_SCOT` (relative to the working directory)."""
    env = os.environ.get("DATASETS")
    return Path(env) if env else Path("Datasets_SCOT")


@dataclass(frozen=True)
class PairRecord:
    """One benchmark pair as listed in a split file (no annotation, no pixels)."""

    pair_name: str
    src_name: str  # image key relative to the benchmark folder, e.g. "car(G)/Cars_006a.png"
    trg_name: str
    class_name: str
    class_id: int
    extra: dict[str, Any] = field(default_factory=dict)  # cheap per-benchmark data (flip, CSV keypoints)


def extent_box(kps: np.ndarray) -> np.ndarray:
    """Keypoint extent box (x1, y1, x2, y2) of (K, 2) points, float32."""
    return np.array([kps[:, 0].min(), kps[:, 1].min(), kps[:, 0].max(), kps[:, 1].max()], dtype=np.float32)


class PairDataset(torch.utils.data.Dataset):
    """Benchmark pairs. Subclasses set `folder`, `splits`, `default_thres`, `classes` and implement
    `_read_records()` and `_annotation(i)`.

    `__getitem__(i)` = `pair_meta(i)` plus `src_img`, `trg_img` (uint8 (3, H, W) RGB, original resolution),
    `src_kps`, `trg_kps` (float32 (K, 2), (x, y) original pixels, index-aligned, K >= 1), `src_bbox`,
    `trg_bbox` (float32 (4,) x1, y1, x2, y2: the box threshold "bbox" uses).
    """

    name: ClassVar[str] = ""
    folder: ClassVar[str] = ""  # benchmark folder under the root, e.g. "PF-WILLOW"
    splits: ClassVar[tuple[str, ...]] = ("test",)
    default_thres: ClassVar[str] = "bbox"
    supported_thres: tuple[str, ...] = ("bbox", "img")
    classes: list[str] = []

    def __init__(self, root: str | Path | None = None, split: str = "test") -> None:
        super().__init__()
        if split not in self.splits:
            raise UserError(f"dataset {self.name} has no split {split!r} "
                            f"(choose from {', '.join(self.splits)})")
        self.split = split
        self.root = Path(root) if root is not None else default_root()
        self.dir = self.root / self.folder if self.folder else self.root
        self._check_folders()
        self.records: list[PairRecord] = self._read_records()
        if not self.records:
            raise UserError(f"split {split!r} of {self.name} is empty ({self.split_file()} lists no pairs)")
        self._check_images()

    # ---------------------------------------------------------------- subclass hooks
    def _read_records(self) -> list[PairRecord]:
        raise NotImplementedError

    def _annotation(self, i: int) -> dict[str, Any]:
        """-> {"src_kps", "trg_kps" float32 (K, 2) numpy, "src_bbox", "trg_bbox" float32 (4,), extras}."""
        raise NotImplementedError

    def split_file(self) -> Path:
        raise NotImplementedError

    def required_paths(self) -> list[Path]:
        """Folders/files whose absence means the benchmark is not downloaded."""
        return [self.dir]

    # ---------------------------------------------------------------- common
    def download_hint(self) -> str:
        return DOWNLOAD_HINT.format(name=self.name, root=self.root)

    def _check_folders(self) -> None:
        if not self.root.is_dir():
            raise UserError(f"dataset root {self.root} does not exist (pass --datapath or set $DATASETS, "
                            f"or download with: {self.download_hint()})")
        for path in self.required_paths():
            if not path.exists():
                raise UserError(f"{self.name}: {path} is missing; download with: {self.download_hint()}")

    def _check_images(self) -> None:
        """Every listed image exists (one stat per distinct image); else name the first missing file."""
        names = dict.fromkeys(n for r in self.records for n in (r.src_name, r.trg_name))
        for name in names:
            path = self.image_path(name)
            if not path.is_file():
                raise UserError(f"{self.name}: image {path} listed in {self.split_file()} is missing "
                                f"(re-download with: {self.download_hint()})")

    def image_path(self, name: str) -> Path:
        return self.dir / name

    def image_paths(self, i: int) -> tuple[Path, Path]:
        rec = self.records[i]
        return self.image_path(rec.src_name), self.image_path(rec.trg_name)

    def check_thres(self, thres: str) -> str:
        """Resolve "auto" to `default_thres`; an unsupported threshold type is a `UserError`."""
        resolved = self.default_thres if thres == "auto" else thres
        if resolved not in self.supported_thres:
            raise UserError(f"--thres {thres} is not available for {self.name} here "
                            f"(choose from auto, {', '.join(self.supported_thres)})")
        return resolved

    def __len__(self) -> int:
        return len(self.records)

    def describe(self) -> dict[str, Any]:
        """What results files should record about the data: name, split, root, pairs, default_thres, plus
        the subclass's options (e.g. PF-PASCAL keypoint_source; `comparable` False for non-standard ones)."""
        return {"dataset": self.name, "split": self.split, "root": str(self.root), "pairs": len(self),
                "default_thres": self.default_thres, "comparable": True, **self._describe_options()}

    def _describe_options(self) -> dict[str, Any]:
        return {}

    def pair_meta(self, i: int) -> dict[str, Any]:
        """Cheap metadata (no image decoding): index, pair_name, src_name, trg_name, class_name, class_id."""
        rec = self.records[i]
        return {"index": i, "pair_name": rec.pair_name, "src_name": rec.src_name, "trg_name": rec.trg_name,
                "class_name": rec.class_name, "class_id": rec.class_id}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        sample = self.pair_meta(i)
        ann = self._annotation(i)
        src_path, trg_path = self.image_paths(i)
        sample["src_img"] = read_rgb_uint8(src_path)
        sample["trg_img"] = read_rgb_uint8(trg_path)
        for key, value in ann.items():
            if isinstance(value, np.ndarray):
                sample[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            else:
                sample[key] = value
        self._warn_outside(sample)
        return sample

    def _warn_outside(self, sample: dict[str, Any]) -> None:
        """Warn, naming the pair, about keypoints lying more than a few pixels outside their image."""
        for side in ("src", "trg"):
            n = keypoints_outside(sample[f"{side}_kps"], sample[f"{side}_img"])
            if n:
                size = tuple(sample[f"{side}_img"].shape[-2:][::-1])
                get_logger("data").warning("%s pair %s: %d %s keypoint(s) lie more than %g px outside the "
                                           "%dx%d image", self.name, sample["pair_name"], n, side,
                                           KPS_MARGIN_PX, *size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, pairs={len(self)})"


def check_kps(src: np.ndarray, trg: np.ndarray, where: str) -> None:
    """Shared keypoint sanity rules: same count, K >= 1, finite."""
    if src.shape != trg.shape:
        raise UserError(f"{where}: keypoint count mismatch (source {len(src)}, target {len(trg)})")
    if len(src) == 0:
        raise UserError(f"{where}: no keypoint is visible in both images")
    if not (np.isfinite(src).all() and np.isfinite(trg).all()):
        raise UserError(f"{where}: non-finite keypoint coordinates")


def check_box(box: np.ndarray, where: str, what: str = "box") -> None:
    """A PCK reference box (x1, y1, x2, y2) must be finite, not inverted, and not a single point."""
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise UserError(f"{where}: {what} {box.tolist()} is not four finite numbers")
    width, height = box[2] - box[0], box[3] - box[1]
    if width < 0 or height < 0:
        raise UserError(f"{where}: {what} {box.tolist()} is inverted (x2 < x1 or y2 < y1)")
    if max(width, height) <= 0:
        raise UserError(f"{where}: {what} {box.tolist()} is a single point, so the PCK threshold would be 0")


KPS_MARGIN_PX = 5.0  # keypoints may sit this far outside the image (annotation rounding) without a warning


def outside_mask(kps: torch.Tensor, size_wh: tuple[int, int], margin: float = 0.0) -> torch.Tensor:
    """(K,) bool: keypoints (K, 2) (x, y) more than `margin` pixels outside [0, W - 1] x [0, H - 1]."""
    w, h = size_wh
    x, y = kps[:, 0], kps[:, 1]
    return (x < -margin) | (y < -margin) | (x > w - 1 + margin) | (y > h - 1 + margin)


def keypoints_outside(kps: torch.Tensor, img: torch.Tensor, margin: float = KPS_MARGIN_PX) -> int:
    """How many (x, y) keypoints lie more than `margin` pixels outside an image (3, H, W)."""
    return int(outside_mask(kps, (img.shape[-1], img.shape[-2]), margin).sum())


def build_dataset(name: str, root: str | Path | None = None, split: str = "test",
                  **options: Any) -> PairDataset:
    """`DATASETS[name](root, split, **options)`; unknown name or option -> `UserError`."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} (choose from {', '.join(sorted(DATASETS))})")
    cls = DATASETS[name]
    try:
        return cls(root=root, split=split, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise UserError(f"dataset {name}: {err}") from None
        raise
