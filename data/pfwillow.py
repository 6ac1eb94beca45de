"""PF-WILLOW (test only): `PF-WILLOW/test_pairs.csv` (42 columns) and PNG images per sub-class folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from configs.runtime import UserError
from data.io import parse_float, read_csv_rows
from data.registry import PairDataset, PairRecord, check_box, check_kps, extent_box, register

PFWILLOW_CLASSES = ["car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)", "motorbike(M)", "motorbike(S)",
                    "winebottle(M)", "winebottle(wC)", "winebottle(woC)"]
NUM_KPS = 10
HEADER = (["imageA", "imageB"] + [f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, NUM_KPS + 1)])


def parse_image_path(cell: str, path: Path, line: int, column: str) -> tuple[str, str]:
    """`PF-dataset/car(G)/Cars_006a.png` -> ("car(G)", "car(G)/Cars_006a.png") (first component dropped)."""
    parts = [p for p in cell.replace("\\", "/").split("/") if p]
    if cell.startswith(("/", "\\")) or ":" in cell or any(p in (".", "..") for p in parts):
        raise UserError(f"{path}:{line}: column {column} {cell!r} leaves the dataset folder (absolute, drive "
                        f"or '..' path); refused")
    if len(parts) < 3 or parts[-2] not in PFWILLOW_CLASSES:
        raise UserError(f"{path}:{line}: column {column} {cell!r} is not <folder>/<sub-class>/<image> with a "
                        f"sub-class among {', '.join(PFWILLOW_CLASSES)}")
    return parts[-2], "/".join(parts[1:])


@register("pfwillow")
class PFWillow(PairDataset):
    """900 pairs, 10 keypoints each; threshold "bbox" = extent of the target keypoints (no box annotation)."""

    folder = "PF-WILLOW"
    splits = ("test",)
    default_thres = "bbox"
    supported_thres = ("bbox", "img")
    classes = PFWILLOW_CLASSES

    def split_file(self) -> Path:
        return self.dir / "test_pairs.csv"

    def required_paths(self) -> list[Path]:
        return [self.dir, self.split_file()]

    def _read_records(self) -> list[PairRecord]:
        path = self.split_file()
        _, rows = read_csv_rows(path, HEADER)
        records = []
        for line, cells in rows:
            if len(cells) != len(HEADER):
                raise UserError(f"{path}:{line}: expected {len(HEADER)} columns (2 images + 4 x {NUM_KPS} "
                                f"coordinates), got {len(cells)}")
            sub_a, src_name = parse_image_path(cells[0], path, line, "imageA")
            sub_b, trg_name = parse_image_path(cells[1], path, line, "imageB")
            if sub_a != sub_b:
                raise UserError(f"{path}:{line}: images from different sub-classes ({sub_a}, {sub_b})")
            coords = np.array([parse_float(c, path, line, HEADER[j + 2]) for j, c in enumerate(cells[2:])],
                              dtype=np.float32).reshape(4, NUM_KPS)
            src_kps, trg_kps = coords[0:2].T.copy(), coords[2:4].T.copy()
            check_kps(src_kps, trg_kps, f"{path}:{line}")
            check_box(extent_box(trg_kps), f"{path}:{line}", "target keypoint extent")
            stem_a, stem_b = Path(src_name).stem, Path(trg_name).stem
            records.append(PairRecord(f"{sub_a}/{stem_a}-{stem_b}", src_name, trg_name, sub_a,
                                      PFWILLOW_CLASSES.index(sub_a),
                                      {"src_kps": src_kps, "trg_kps": trg_kps}))
        return records

    def _annotation(self, i: int) -> dict[str, Any]:
        ex = self.records[i].extra
        return {"src_kps": ex["src_kps"], "trg_kps": ex["trg_kps"],
                "src_bbox": extent_box(ex["src_kps"]), "trg_bbox": extent_box(ex["trg_kps"])}
