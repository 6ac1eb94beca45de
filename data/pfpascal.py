"""PF-PASCAL: `{trn,val,test}_pairs.csv`, `JPEGImages/<image>.jpg`, `Annotations/<class>/<image>.mat`.

Keypoints and boxes come from the `.mat` files (default): `kps` K x 2 (NaN rows = invisible), `bbox` first
row (x1, y1, x2, y2); a keypoint is kept iff it is non-NaN in both images. The `XA;YA;XB;YB` columns of
`test_pairs.csv` are used only with `keypoint_source="csv"` (then only threshold "img" is available and the
boxes are NaN).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from configs.runtime import UserError
from data.io import parse_float, parse_int, read_csv_rows
from data.registry import PairDataset, PairRecord, check_box, check_kps, register

PFPASCAL_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                    "train", "tvmonitor"]
HEADERS = {"test": ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"],
           "val": ["source_image", "target_image", "class", "flip"],
           "trn": ["source_image", "target_image", "class", "flip"]}


def read_pair_list(csv_path: str | Path, split: str) -> list[dict[str, Any]]:
    """Parse a PF-PASCAL split CSV -> [{"line", "src", "trg" (basenames), "class_id" (0-based), "flip",
    and for test "src_kps", "trg_kps" float32 (K, 2) from the XA;YA;XB;YB columns}]."""
    path = Path(csv_path)
    header = HEADERS[split]
    _, rows = read_csv_rows(path, header, what=f"PF-PASCAL {split} pair list")
    out = []
    for line, cells in rows:
        if len(cells) != len(header):
            raise UserError(f"{path}:{line}: expected {len(header)} columns ({','.join(header)}), "
                            f"got {len(cells)}")
        cls = parse_int(cells[2], path, line, "class")
        if not 1 <= cls <= len(PFPASCAL_CLASSES):
            raise UserError(f"{path}:{line}: class {cls} outside 1..{len(PFPASCAL_CLASSES)}")
        entry: dict[str, Any] = {"line": line, "src": PurePosixPath(cells[0].replace("\\", "/")).name,
                                 "trg": PurePosixPath(cells[1].replace("\\", "/")).name, "class_id": cls - 1,
                                 "flip": 0}
        if not entry["src"] or not entry["trg"]:
            raise UserError(f"{path}:{line}: empty image path")
        if split == "test":
            xa, ya, xb, yb = ([parse_float(v, path, line, name) for v in cells[3 + j].split(";") if v.strip()]
                              for j, name in enumerate(("XA", "YA", "XB", "YB")))
            if not len(xa) == len(ya) == len(xb) == len(yb):
                raise UserError(f"{path}:{line}: keypoint count mismatch (XA {len(xa)}, YA {len(ya)}, "
                                f"XB {len(xb)}, YB {len(yb)})")
            entry["src_kps"] = np.stack([xa, ya], axis=1).astype(np.float32).reshape(-1, 2)
            entry["trg_kps"] = np.stack([xb, yb], axis=1).astype(np.float32).reshape(-1, 2)
        else:
            flip = parse_int(cells[3], path, line, "flip")
            if flip not in (0, 1):
                raise UserError(f"{path}:{line}: flip must be 0 or 1, got {flip}")
            entry["flip"] = flip
        out.append(entry)
    return out


def read_mat_annotation(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`Annotations/<class>/<image>.mat` -> (kps float64 (K, 2) with NaN rows, bbox float32 (4,))."""
    from scipy.io import loadmat

    if not path.is_file():
        raise UserError(f"PF-PASCAL annotation {path} is missing (re-download PF-PASCAL)")
    try:
        mat = loadmat(str(path))
    except Exception as err:  # scipy raises many types for corrupt files
        raise UserError(f"PF-PASCAL annotation {path} is unreadable ({type(err).__name__}: {err})") from None
    for key in ("kps", "bbox"):
        if key not in mat:
            raise UserError(f"PF-PASCAL annotation {path} has no variable {key!r}")
    kps = np.asarray(mat["kps"], dtype=np.float64)
    bbox = np.asarray(mat["bbox"], dtype=np.float64)
    if kps.ndim != 2 or kps.shape[1] != 2:
        raise UserError(f"PF-PASCAL annotation {path}: kps has shape {kps.shape}, expected (K, 2)")
    if bbox.ndim == 1:
        bbox = bbox[None]
    if bbox.ndim != 2 or bbox.shape[1] != 4:
        raise UserError(f"PF-PASCAL annotation {path}: bbox has shape {bbox.shape}, expected (1, 4)")
    return kps, bbox[0].astype(np.float32)


@register("pfpascal")
class PFPascal(PairDataset):
    """PF-PASCAL pairs. Options: `keypoint_source` "mat" (default) | "csv" (test only, threshold "img" only);
    `drop_pairs_in`: a split name whose pairs (either order) are removed from this split, e.g. "test" when
    training on trn."""

    folder = "PF-PASCAL"
    splits = ("trn", "val", "test")
    default_thres = "img"
    classes = PFPASCAL_CLASSES

    def __init__(self, root: str | Path | None = None, split: str = "test", keypoint_source: str = "mat",
                 drop_pairs_in: str | None = None) -> None:
        if keypoint_source not in ("mat", "csv"):
            raise UserError(f"PF-PASCAL keypoint_source {keypoint_source!r} unknown (choose mat or csv)")
        if keypoint_source == "csv" and split != "test":
            raise UserError(f"PF-PASCAL split {split} has no keypoint columns; keypoint_source csv needs "
                            f"split test (use keypoint_source mat)")
        if drop_pairs_in is not None and (drop_pairs_in not in self.splits or drop_pairs_in == split):
            raise UserError(f"PF-PASCAL drop_pairs_in {drop_pairs_in!r} must be another split of "
                            f"{', '.join(self.splits)}")
        self.keypoint_source = keypoint_source
        self.drop_pairs_in = drop_pairs_in
        self.supported_thres = ("img",) if keypoint_source == "csv" else ("img", "bbox")
        self.num_dropped = 0
        super().__init__(root, split)

    def split_file(self) -> Path:
        return self.dir / f"{self.split}_pairs.csv"

    def _describe_options(self) -> dict[str, Any]:
        return {"keypoint_source": self.keypoint_source, "comparable": self.keypoint_source == "mat",
                "drop_pairs_in": self.drop_pairs_in, "pairs_dropped": self.num_dropped}

    def required_paths(self) -> list[Path]:
        paths = [self.dir, self.split_file(), self.dir / "JPEGImages"]
        return paths + ([self.dir / "Annotations"] if self.keypoint_source == "mat" else [])

    def _read_records(self) -> list[PairRecord]:
        entries = read_pair_list(self.split_file(), self.split)
        if self.drop_pairs_in is not None:
            other = read_pair_list(self.dir / f"{self.drop_pairs_in}_pairs.csv", self.drop_pairs_in)
            banned = {frozenset((e["src"], e["trg"])) for e in other}
            kept = [e for e in entries if frozenset((e["src"], e["trg"])) not in banned]
            self.num_dropped = len(entries) - len(kept)
            entries = kept
        records = []
        for e in entries:
            stem_s, stem_t = Path(e["src"]).stem, Path(e["trg"]).stem
            extra = {"flip": e["flip"], "line": e["line"]}
            if self.keypoint_source == "csv":
                check_kps(e["src_kps"], e["trg_kps"], f"{self.split_file()}:{e['line']}")
                extra.update(src_kps=e["src_kps"], trg_kps=e["trg_kps"])
            cid = e["class_id"]
            src_name, trg_name = f"JPEGImages/{e['src']}", f"JPEGImages/{e['trg']}"
            records.append(PairRecord(f"{stem_s}-{stem_t}", src_name, trg_name, self.classes[cid], cid,
                                      extra))
        return records

    def pair_meta(self, i: int) -> dict[str, Any]:
        meta = super().pair_meta(i)
        meta["flip"] = int(self.records[i].extra["flip"])
        return meta

    def annotation_paths(self, i: int) -> tuple[Path, Path]:
        rec = self.records[i]
        folder = self.dir / "Annotations" / rec.class_name
        return folder / f"{Path(rec.src_name).stem}.mat", folder / f"{Path(rec.trg_name).stem}.mat"

    def _annotation(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        if self.keypoint_source == "csv":
            nan_box = np.full(4, np.nan, dtype=np.float32)
            return {"src_kps": rec.extra["src_kps"], "trg_kps": rec.extra["trg_kps"],
                    "src_bbox": nan_box, "trg_bbox": nan_box.copy()}
        src_path, trg_path = self.annotation_paths(i)
        src_kps, src_box = read_mat_annotation(src_path)
        trg_kps, trg_box = read_mat_annotation(trg_path)
        if len(src_kps) != len(trg_kps):
            raise UserError(f"keypoint count mismatch: {src_path} has {len(src_kps)} rows, {trg_path} has "
                            f"{len(trg_kps)} (both must list every keypoint of class {rec.class_name})")
        visible = ~np.isnan(src_kps).any(axis=1) & ~np.isnan(trg_kps).any(axis=1)
        if not visible.any():
            raise UserError(f"{self.split_file()}:{rec.extra['line']}: no keypoint is visible in both "
                            f"{src_path.name} and {trg_path.name}")
        check_box(trg_box, str(trg_path), "bbox")
        return {"src_kps": src_kps[visible].astype(np.float32),
                "trg_kps": trg_kps[visible].astype(np.float32), "src_bbox": src_box, "trg_bbox": trg_box}
