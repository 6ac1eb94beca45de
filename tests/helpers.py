"""Builders shared by several test modules (import as `from helpers import ...`; tests/ is on sys.path):
the released cycle config, an in-memory dataset, official-layout dataset fixtures (PF-PASCAL, SPair-71k,
PF-WILLOW) written into a folder, and the tiny training run's settings."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from scipy.io import savemat

from data.pfpascal import PFPASCAL_CLASSES
from data.pfwillow import HEADER
from models.cycle import CycleConfig

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}  # for subprocesses run from REPO


def original_cycle_config(**changes: Any) -> CycleConfig:
    """The released code's cycle switches, read from their only home (`configs/train/original.yaml`),
    then `changes`."""
    released = yaml.safe_load((REPO / "configs/train/original.yaml").read_text())["cycle"]
    return CycleConfig(**{**released, **changes})


class ListDataset(torch.utils.data.Dataset):
    """The data layer's sample contract (`data.registry.PairDataset`), built in memory from samples."""

    def __init__(self, samples: list[dict[str, Any]], name: str = "pfwillow", default_thres: str = "bbox",
                 split: str = "test"):
        self.samples, self.name, self.default_thres, self.split = samples, name, default_thres, split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]

    def pair_meta(self, i: int) -> dict[str, Any]:
        return {k: v for k, v in self.samples[i].items() if not torch.is_tensor(v)}

    def check_thres(self, thres: str) -> str:
        return self.default_thres if thres == "auto" else thres

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "split": self.split, "pairs": len(self)}


# ------------------------------------------------------------------------------------------ PF-PASCAL
NAN = np.nan
# image -> (class, kps K x 2 with NaN rows, bbox)
MATS = {
    "2008_000001": ("car", [[10, 11], [NAN, NAN], [30, 31], [40, 41]], [5, 6, 50, 45]),
    "2008_000002": ("car", [[12, 13], [22, 23], [NAN, NAN], [42, 43]], [7, 8, 55, 48]),
    "2008_000003": ("car", [[NAN, NAN], [NAN, NAN], [25, 26], [NAN, NAN]], [1, 1, 30, 30]),
    "2008_000004": ("car", [[1, 2], [3, 4], [5, 6]], [0, 0, 9, 9]),  # K = 3: mismatch with the others
}


def write_pascal(root: Path) -> Path:
    """An official-layout PF-PASCAL under `root` (grey images, `MATS` annotations, test/val/trn lists)."""
    folder = root / "PF-PASCAL"
    (folder / "JPEGImages").mkdir(parents=True)
    for stem, (cls, kps, bbox) in MATS.items():
        Image.fromarray(np.full((48, 64, 3), 100, np.uint8)).save(folder / "JPEGImages" / f"{stem}.jpg")
        (folder / "Annotations" / cls).mkdir(parents=True, exist_ok=True)
        savemat(folder / "Annotations" / cls / f"{stem}.mat",
                {"kps": np.array(kps, dtype=np.float64), "bbox": np.array([bbox], dtype=np.float64)})
    car = PFPASCAL_CLASSES.index("car") + 1
    path = "PF-dataset-PASCAL/JPEGImages/{}.jpg"
    tables = {
        "test": (["source_image", "target_image", "class", "XA", "YA", "XB", "YB"],
                 [[path.format("2008_000001"), path.format("2008_000002"), car, "10;40", "11;41", "12;42",
                   "13;43"]]),
        "val": (["source_image", "target_image", "class", "flip"],
                [[path.format("2008_000002"), path.format("2008_000001"), car, 0]]),
        "trn": (["source_image", "target_image", "class", "flip"],
                [[path.format("2008_000001"), path.format("2008_000002"), car, 0],
                 [path.format("2008_000001"), path.format("2008_000002"), car, 1],
                 [path.format("2008_000002"), path.format("2008_000003"), car, 1]]),
    }
    for split, (header, rows) in tables.items():
        with (folder / f"{split}_pairs.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    return root


# ------------------------------------------------------------------------------------------ SPair-71k
def pair_json(line: str, src: str, trg: str, cat: str, k: int = 3, **override) -> dict:
    """One SPair pair annotation (source 60x40, target 50x40, `k` keypoints), then `override`."""
    ann = {"pair_id": int(line[:6]), "filename": line, "src_imname": f"{src}.jpg", "trg_imname": f"{trg}.jpg",
           "src_imsize": [60, 40, 3], "trg_imsize": [50, 40, 3], "src_bndbox": [1, 2, 50, 30],
           "trg_bndbox": [3, 4, 40, 35], "category": cat, "src_pose": "Left", "trg_pose": "Right",
           "src_kps": [[5 + i, 6 + i] for i in range(k)], "trg_kps": [[10 + i, 7 + 2 * i] for i in range(k)],
           "kps_ids": [str(i) for i in range(k)], "mirror": 0, "viewpoint_variation": 2, "scale_variation": 1,
           "truncation": 3, "occlusion": 0}
    ann.update(override)
    return ann


def write_spair(root: Path, pairs: list[tuple[str, str, str, dict]], split: str = "test",
                trailing_newline: bool = True) -> Path:
    """An official-layout SPair-71k under `root` holding `pairs` (layout line, src, trg, annotation)."""
    folder = root / "SPair-71k"
    for line, src, trg, ann in pairs:
        cat = line.split(":")[1]
        for stem, (w, h) in ((src, (60, 40)), (trg, (50, 40))):
            path = folder / "JPEGImages" / cat / f"{stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
        ann_path = folder / "PairAnnotation" / split / f"{line}.json"
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        ann_path.write_text(json.dumps(ann))  # no trailing newline, as the official files
    layout = folder / "Layout" / "large" / f"{split}.txt"
    layout.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(p[0] for p in pairs)
    layout.write_text(text + ("\n" if trailing_newline else ""))
    return root


def spair_pairs(specs: list[tuple[str, str, str]]) -> list[tuple[str, str, str, dict]]:
    """(src, trg, category) triples -> `write_spair` entries with numbered layout lines."""
    out = []
    for n, (src, trg, cat) in enumerate(specs, start=1):
        line = f"{n:06d}-{src}-{trg}:{cat}"
        out.append((line, src, trg, pair_json(line, src, trg, cat)))
    return out


# ------------------------------------------------------------------------------------------ PF-WILLOW
def write_willow(root: Path, rows: list[list], images: dict[str, tuple[int, int]]) -> Path:
    """An official-layout PF-WILLOW under `root`: grey images of the given (w, h) and `test_pairs.csv`."""
    folder = root / "PF-WILLOW"
    for name, (w, h) in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / name)
    with (folder / "test_pairs.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return root


def willow_row(a: str, b: str, seed: int) -> list:
    """A `test_pairs.csv` row for images `a` -> `b` with seeded keypoints in [5, 95]."""
    rng = np.random.default_rng(seed)
    return [f"PF-dataset/{a}", f"PF-dataset/{b}"] + [f"{v:.3f}" for v in rng.uniform(5, 95, 40)]


# ------------------------------------------------------------------------------------------ training runs
def tiny_overrides(image_root: Path, init: Path | None, queue: int = 16) -> list[str]:
    """`training/train.py` overrides for a tiny run (32 px, 2 epochs of 3 steps, checkpoint every 2)."""
    return ["image_data.source=imagefolder", f"image_data.root={image_root}", "image_data.image_size=32",
            "pixel_data.image_size=32", "cycle.patch_size=16", "batch_size=4", "pair_batch_size=2",
            "epochs=2", "steps_per_epoch=3", f"moco.queue_size={queue}", "checkpoint.every_steps=2",
            "checkpoint.keep_last=2",
            "log.interval=1", "log.vis_interval=0", "log.tensorboard=false", "log.progress=false",
            *(["init.kind=checkpoint", f"init.checkpoint={init}"] if init else ["init.kind=random"])]


def assert_same_tensors(a, b, where: str = "") -> None:
    """Recursive exact equality of checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def write_small_willow(root: Path, n_rows: int = 3) -> Path:
    """A PF-WILLOW of `n_rows` car(G) pairs over four seeded-noise 120x100 images (keypoints inside them)."""
    names = [f"car(G)/{k}.png" for k in "abcd"]
    rows = [willow_row(names[i % 4], names[(i + 1) % 4], i) for i in range(n_rows)]
    write_willow(root, rows, {name: (120, 100) for name in names})
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(root / "PF-WILLOW" / name)
    return root
