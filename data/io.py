"""Image and annotation file reading with one-line `UserError`s naming the file."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from configs.runtime import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
MIN_IMAGE_SIDE = 8  # pixels; thinner images cannot be resized into a feature grid
MAX_ASPECT = 16  # long side / short side: at the smallest evaluation long side (32 px) still 2 px across


def open_rgb(path: str | Path, max_aspect: float | None = MAX_ASPECT) -> Image.Image:
    """Decode an image with Pillow as `Image.open(p).convert("RGB")` (the evaluation convention).
    `max_aspect`: refuse images whose long side exceeds it times the short side (None: no limit, for
    training's random crops)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file {path} is missing (re-download the dataset or fix the pair list)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over ~89 Mpixel: refuse as well
            with Image.open(path) as img:
                check_image_size(img.size, path, max_aspect)
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"image file {path} is too large to decode safely (decompression bomb limit of "
                        f"{Image.MAX_IMAGE_PIXELS} pixels); it is not a benchmark image") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"image file {path} is unreadable ({type(err).__name__}: {err}); "
                        f"re-download it") from None


def check_image_size(size: tuple[int, int], path: Path, max_aspect: float | None = MAX_ASPECT) -> None:
    """Refuse images too thin to match (e.g. 2000 x 1) or so elongated that resizing them to the evaluation
    long side rounds the short side to nothing (e.g. 10000 x 10 at 300 px: 0 px)."""
    if min(size) < MIN_IMAGE_SIDE:
        raise UserError(f"image file {path} is {size[0]}x{size[1]} pixels; each side must be at least "
                        f"{MIN_IMAGE_SIDE}")
    if max_aspect is not None and max(size) > max_aspect * min(size):
        raise UserError(f"image file {path} is {size[0]}x{size[1]} pixels, more than {max_aspect:g} times "
                        f"longer than wide; resized for matching it would be (almost) no pixels across; crop "
                        f"it")


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> torch.uint8 (3, H, W)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_rgb_uint8(path: str | Path) -> torch.Tensor:
    """Image file -> torch.uint8 (3, H, W) RGB at original resolution."""
    return pil_to_uint8_tensor(open_rgb(path))


def read_csv_rows(path: str | Path, expected_header: list[str] | None = None,
                  what: str = "pair list") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a CSV with a header line; returns (header, [(line number, cells), ...]) skipping blank lines.

    `expected_header`: the official column names, checked by position (cells stripped).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            lines = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{what} {path} is unreadable ({err})") from None
    numbered = [(n, [c.strip() for c in row]) for n, row in enumerate(lines, start=1)
                if any(c.strip() for c in row)]
    if not numbered:
        raise UserError(f"{what} {path} is empty")
    header_line, header = numbered[0]
    if expected_header is not None and header[: len(expected_header)] != expected_header:
        raise UserError(f"{path}:{header_line}: expected the header line {','.join(expected_header[:4])},... "
                        f"but got {','.join(header[:4])[:80]!r} (the file needs its official header line)")
    return header, numbered[1:]


def read_json(path: str | Path, what: str = "annotation") -> Any:
    """Parse a JSON file (trailing newline optional)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON ({err})") from None


def parse_float(cell: str, path: Path, line: int, column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise UserError(f"{path}:{line}: column {column} is not a number ({cell[:40]!r})") from None


def parse_int(cell: str, path: Path, line: int, column: str) -> int:
    try:
        value = float(cell)
    except ValueError:
        raise UserError(f"{path}:{line}: column {column} is not an integer ({cell[:40]!r})") from None
    if value != int(value):
        raise UserError(f"{path}:{line}: column {column} is not an integer ({cell[:40]!r})")
    return int(value)
