"""Source keypoints for `match.py`: parse `--src-kps` (a string or a JSON/CSV file), make an N x N grid, and
check that keypoints lie inside their image. Every problem is a one-line `UserError`.

    parse_keypoints("10,20;30.5,40")       # -> float32 (2, 2) as (x, y) pixels
    parse_keypoints("kps.json")            # [[x, y], ...] or {"keypoints": [[x, y], ...]}
    parse_keypoints("kps.csv")             # rows x,y (an optional header row)
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch

from configs.runtime import UserError
from data.registry import outside_mask

KEYPOINT_FILE_SUFFIXES = (".json", ".csv")
_FORMAT = '"x1,y1;x2,y2;..." or a .json/.csv file'


def parse_keypoints(text: str, what: str = "--src-kps") -> torch.Tensor:
    """A keypoint string or the path of a .json/.csv file -> float32 (K, 2) as (x, y) in pixels."""
    if Path(text).suffix.lower() in KEYPOINT_FILE_SUFFIXES:
        return read_keypoint_file(text, what)
    rows = [chunk for chunk in text.replace("\n", ";").split(";") if chunk.strip()]
    if not rows:
        raise UserError(f"{what}: no keypoints in {text!r} (expected {_FORMAT})")
    return _as_points([row.split(",") for row in rows], what, text)


def read_keypoint_file(path: str | Path, what: str = "--src-kps") -> torch.Tensor:
    """JSON ([[x, y], ...], [{"x": .., "y": ..}, ...] or {"keypoints": [...]}) or CSV (x,y rows) -> (K, 2)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: keypoint file {path} is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what}: keypoint file {path} is unreadable ({type(err).__name__})") from None
    if path.suffix.lower() == ".json":
        try:
            data: Any = json.loads(text)
        except ValueError as err:
            raise UserError(f"{what}: {path} is not valid JSON ({err})") from None
        if isinstance(data, dict):
            data = data.get("keypoints", data.get("src_kps"))
        if not isinstance(data, list):
            raise UserError(f"{what}: {path} must hold a list of [x, y] or {{\"keypoints\": [[x, y], ...]}}")
        data = [[p.get("x"), p.get("y")] if isinstance(p, dict) else p for p in data]
        return _as_points(data, what, str(path))
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    if rows and not _numeric(rows[0][0]):
        rows = rows[1:]  # a header row such as "x,y"
    return _as_points(rows, what, str(path))


def _numeric(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _as_points(rows: list[Any], what: str, source: str) -> torch.Tensor:
    points = []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, (list, tuple)) or len(row) != 2:
                raise ValueError
            x, y = (float(str(v).strip()) for v in row)
        except (TypeError, ValueError):
            raise UserError(f"{what}: keypoint {i + 1} ({row!r}) in {source!r} is not a pair of numbers "
                            f"(expected {_FORMAT})") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise UserError(f"{what}: keypoint {i + 1} ({x}, {y}) in {source!r} is not finite")
        points.append((x, y))
    if not points:
        raise UserError(f"{what}: no keypoints in {source!r} (expected {_FORMAT})")
    return torch.tensor(points, dtype=torch.float32)


def check_inside(kps: torch.Tensor, size_wh: tuple[int, int], what: str = "source keypoint") -> None:
    """Refuse keypoints (K, 2) outside [0, W - 1] x [0, H - 1] (pixel coordinates of a W x H image)."""
    width, height = size_wh
    outside = outside_mask(kps, size_wh)
    if bool(outside.any()):
        k = int(outside.nonzero()[0])
        raise UserError(f"{what} {k + 1} ({float(kps[k, 0]):g}, {float(kps[k, 1]):g}) is outside the "
                        f"{width}x{height} image ({int(outside.sum())} of {len(kps)} outside; x must be in "
                        f"[0, {width - 1}], y in [0, {height - 1}])")


def grid_keypoints(n: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    """An n x n grid of cell centres over box (x1, y1, x2, y2) in pixels -> float32 (n * n, 2), row-major."""
    if n < 1:
        raise UserError(f"--grid must be at least 1, got {n}")
    x1, y1, x2, y2 = box
    steps = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    ys, xs = torch.meshgrid(y1 + steps * (y2 - y1), x1 + steps * (x2 - x1), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
