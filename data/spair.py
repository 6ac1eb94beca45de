"""SPair-71k: `Layout/<large|small>/<split>.txt`, `PairAnnotation/<split>/<line>.json`, `JPEGImages/<cat>/`.

Class ids come from the fixed 18-category list (never from the folder listing); `Segmentation/` is not read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from configs.runtime import UserError
from data.io import read_json
from data.registry import PairDataset, PairRecord, check_box, check_kps, register

SPAIR_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog",
                 "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor"]
DIFFICULTY_KEYS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")
REQUIRED_KEYS = ("src_kps", "trg_kps", "src_bndbox", "trg_bndbox", "category") + DIFFICULTY_KEYS
LINE_RE = re.compile(r"^(\d+)-([^-:/\\]+)-([^-:/\\]+):([a-z]+)$")


def parse_layout(path: str | Path) -> list[tuple[str, str, str, str]]:
    """A layout file -> [(pair name = the line, src stem, trg stem, category)].

    A missing trailing newline is tolerated (the last pair is kept); a malformed line or an unknown
    category -> `UserError` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SPair-71k layout file {path} is missing")
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        m = LINE_RE.match(line)
        if m is None or m.group(4) not in SPAIR_CLASSES:
            raise UserError(f"{path}:{n}: {line[:80]!r} is not NNNNNN-<src>-<trg>:<category> with one of the "
                            f"18 SPair-71k categories")
        out.append((line, m.group(2), m.group(3), m.group(4)))
    return out


def difficulty_flag(value: Any, key: str, path: Path) -> int:
    """A difficulty flag must be an integer (JSON 0, 1, 2; a float with an integer value is accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise UserError(f"{path}: field {key} is not an integer ({value!r})")
    return int(value)


@register("spair")
class SPair(PairDataset):
    """SPair-71k pairs; samples add `viewpoint_variation`, `scale_variation`, `truncation`, `occlusion`."""

    folder = "SPair-71k"
    splits = ("trn", "val", "test")
    default_thres = "bbox"
    supported_thres = ("bbox", "img")
    classes = SPAIR_CLASSES

    def __init__(self, root: str | Path | None = None, split: str = "test", layout: str = "large") -> None:
        if layout not in ("large", "small"):
            raise UserError(f"SPair-71k layout {layout!r} unknown (choose large or small)")
        self.layout = layout
        self._json_cache: dict[int, dict[str, Any]] = {}
        super().__init__(root, split)

    def _describe_options(self) -> dict[str, Any]:
        return {"layout": self.layout}

    def split_file(self) -> Path:
        return self.dir / "Layout" / self.layout / f"{self.split}.txt"

    def required_paths(self) -> list[Path]:
        return [self.dir, self.dir / "JPEGImages", self.dir / "PairAnnotation" / self.split,
                self.split_file()]

    def _read_records(self) -> list[PairRecord]:
        return [PairRecord(line, f"JPEGImages/{cat}/{src}.jpg", f"JPEGImages/{cat}/{trg}.jpg", cat,
                           SPAIR_CLASSES.index(cat))
                for line, src, trg, cat in parse_layout(self.split_file())]

    def annotation_path(self, i: int) -> Path:
        return self.dir / "PairAnnotation" / self.split / f"{self.records[i].pair_name}.json"

    def pair_json(self, i: int) -> dict[str, Any]:
        """The validated pair JSON (cached per process)."""
        if i not in self._json_cache:
            path = self.annotation_path(i)
            ann = read_json(path, what="SPair-71k pair annotation")
            if not isinstance(ann, dict):
                raise UserError(f"{path}: expected a JSON object")
            missing = [k for k in REQUIRED_KEYS if k not in ann]
            if missing:
                raise UserError(f"{path}: missing field(s) {', '.join(missing)}")
            if ann["category"] != self.records[i].class_name:
                raise UserError(f"{path}: category {ann['category']!r} differs from the layout line's "
                                f"{self.records[i].class_name!r}")
            self._json_cache[i] = ann
        return self._json_cache[i]

    def pair_meta(self, i: int) -> dict[str, Any]:
        meta = super().pair_meta(i)
        ann = self.pair_json(i)
        path = self.annotation_path(i)
        for key in DIFFICULTY_KEYS:
            meta[key] = difficulty_flag(ann[key], key, path)
        return meta

    def _annotation(self, i: int) -> dict[str, Any]:
        ann, path = self.pair_json(i), self.annotation_path(i)
        arrays = {}
        for key in ("src_kps", "trg_kps", "src_bndbox", "trg_bndbox"):
            try:
                arr = np.asarray(ann[key], dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise UserError(f"{path}: field {key} is malformed ({err})") from None
            if key.endswith("kps"):
                ok = (arr.ndim == 1 and arr.size == 0) or (arr.ndim == 2 and arr.shape[1] == 2)
            else:
                ok = arr.shape == (4,)
            if not ok:  # checked before any reshape: null, rows of 3, ... are named, not reshaped
                raise UserError(f"{path}: field {key} has shape {tuple(arr.shape)} "
                                f"(expected {'(K, 2)' if key.endswith('kps') else '(4,)'})")
            arrays[key] = arr.reshape(-1, 2) if key.endswith("kps") else arr
        check_kps(arrays["src_kps"], arrays["trg_kps"], str(path))
        check_box(arrays["src_bndbox"], str(path), "src_bndbox")
        check_box(arrays["trg_bndbox"], str(path), "trg_bndbox")
        return {"src_kps": arrays["src_kps"], "trg_kps": arrays["trg_kps"],
                "src_bbox": arrays["src_bndbox"], "trg_bbox": arrays["trg_bndbox"]}
