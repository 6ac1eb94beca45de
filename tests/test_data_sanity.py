"""Annotation and image sanity: malformed SPair fields are named (never reshaped first), degenerate PCK
references refused, keypoints far outside the image warned about with the pair named, PF-WILLOW paths
leaving the dataset folder refused, decompression bombs, 2000x1 images and images over 16:1 refused with the
file named."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import pair_json, willow_row, write_spair, write_willow
from PIL import Image

import data
from configs.runtime import UserError
from data.io import open_rgb

LINE, SRC, TRG, CAT = "000001-2008_000001-2008_000002:cow", "2008_000001", "2008_000002", "cow"


def spair_with(tmp_path: Path, **override) -> data.PairDataset:
    write_spair(tmp_path, [(LINE, SRC, TRG, pair_json(LINE, SRC, TRG, CAT, **override))])
    return data.build_dataset("spair", root=tmp_path)


@pytest.mark.parametrize("override, needle", [
    ({"src_kps": None}, "src_kps has shape"),
    ({"trg_kps": [[1, 2, 3], [4, 5, 6]]}, "trg_kps has shape \\(2, 3\\)"),
    ({"src_kps": [[1, 2, 3]] * 4}, "src_kps has shape \\(4, 3\\)"),  # 12 numbers would reshape to (6, 2)
    ({"trg_bndbox": [40, 4, 3, 35]}, "inverted"),
    ({"trg_bndbox": [3, 4, 3, 4]}, "single point"),
    ({"src_bndbox": [float("nan"), 2, 50, 30]}, "four finite numbers"),
    ({"trg_bndbox": [1, 2, 3]}, "trg_bndbox has shape"),
])
def test_spair_malformed_annotation_is_named(tmp_path, override, needle):
    ds = spair_with(tmp_path, **override)
    with pytest.raises(UserError, match=needle) as err:
        ds[0]
    assert f"{LINE}.json" in str(err.value)


@pytest.mark.parametrize("flag", [1.5, "1", True, None, [1]])
def test_spair_difficulty_flag_must_be_an_integer(tmp_path, flag):
    ds = spair_with(tmp_path, occlusion=flag)
    with pytest.raises(UserError, match="field occlusion is not an integer"):
        ds.pair_meta(0)


def test_spair_integral_float_flag_is_accepted(tmp_path):
    assert spair_with(tmp_path, occlusion=1.0).pair_meta(0)["occlusion"] == 1


def test_keypoints_far_outside_the_image_are_warned_with_the_pair(tmp_path):
    ds = spair_with(tmp_path, trg_kps=[[10, 7], [11, 9], [500, 9]])  # the target image is 50 x 40
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)
    logging.getLogger("data").addHandler(handler)
    try:
        ds[0]
    finally:
        logging.getLogger("data").removeHandler(handler)
    assert LINE in seen.getvalue() and "1 trg keypoint(s)" in seen.getvalue()


@pytest.mark.parametrize("cell", ["PF-dataset/../car(G)/a.png", "/etc/car(G)/a.png",
                                  "PF-dataset/./car(G)/a.png", "C:/PF-dataset/car(G)/a.png",
                                  "PF-dataset\\..\\car(G)\\a.png"])
def test_pfwillow_paths_leaving_the_dataset_folder_are_refused(tmp_path, cell):
    row = willow_row("car(G)/a.png", "car(G)/b.png", 0)
    row[0] = cell
    root = write_willow(tmp_path, [row], {"car(G)/a.png": (100, 80), "car(G)/b.png": (90, 100)})
    with pytest.raises(UserError, match="leaves the dataset folder"):
        data.build_dataset("pfwillow", root=root)


def test_pfwillow_target_keypoints_at_one_point_are_refused(tmp_path):
    row = willow_row("car(G)/a.png", "car(G)/b.png", 0)
    row[22:42] = ["50"] * 20  # XB1..XB10, YB1..YB10 all equal
    root = write_willow(tmp_path, [row], {"car(G)/a.png": (100, 80), "car(G)/b.png": (90, 100)})
    with pytest.raises(UserError, match="test_pairs.csv:2: target keypoint extent .* single point"):
        data.build_dataset("pfwillow", root=root)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (no pixel data): enough for Pillow's size checks."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_a_one_line_error_naming_the_file(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(UserError, match="bomb.png is too large"):
        open_rgb(bomb)


def test_thin_image_is_refused(tmp_path):
    Image.fromarray(np.zeros((1, 2000, 3), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(UserError, match="thin.png is 2000x1 pixels"):
        open_rgb(tmp_path / "thin.png")


@pytest.mark.parametrize("width, height, refused", [(10000, 10, True), (10, 170, True), (160, 10, False),
                                                    (8, 128, False)])
def test_elongated_images_beyond_sixteen_to_one_are_refused(tmp_path, width, height, refused):
    """10000x10 passes the 8-px rule but would resize to 300x0 px; up to 16:1 the short side keeps >= 2 px at
    every allowed long side (>= 32), and the resize rule then gives at least 1 px."""
    from validation_and_test.preprocess import resize_ratio, resized_size

    path = tmp_path / "long.png"
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    if refused:
        with pytest.raises(UserError, match=f"long.png is {width}x{height} pixels, more than 16 times"):
            open_rgb(path)
    else:
        assert open_rgb(path).size == (width, height)
        for long_side in (32, 300, 600):
            for rule in ("scot", "hpf"):
                assert min(resized_size(height, width, resize_ratio(height, width, rule, long_side))) >= 1
