"""Write the bundled Middlebury stereo pair (scikit-image's `stereo_motorcycle`) as two PNGs, offline.

    python scripts/sample_photos.py runs/photos   # -> runs/photos/motorcycle_left.png, motorcycle_right.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.runtime import check_writable_dir, run_cli  # noqa: E402


def write_stereo_pair(out_dir: str | Path) -> tuple[Path, Path]:
    """motorcycle_left.png and motorcycle_right.png (RGB, 741 x 500) in `out_dir`."""
    import skimage.data
    from PIL import Image

    out = check_writable_dir(out_dir, "output folder")
    left, right, _ = skimage.data.stereo_motorcycle()
    paths = (out / "motorcycle_left.png", out / "motorcycle_right.png")
    for image, path in zip((left, right), paths):
        Image.fromarray(image).save(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", nargs="?", default="runs/photos")
    for path in write_stereo_pair(p.parse_args(argv).out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
