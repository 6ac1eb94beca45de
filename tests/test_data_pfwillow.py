"""PF-WILLOW: real test set (900 pairs, thresholds from the target keypoint extent), generated fixtures and
every error message."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from helpers import willow_row, write_willow
from scipy.io import loadmat

import data
from configs.runtime import UserError
from data.pfwillow import PFWILLOW_CLASSES


@pytest.fixture
def willow_root(tmp_path):
    images = {"car(G)/a.png": (100, 80), "car(G)/b.png": (90, 100), "duck(S)/c.png": (100, 100),
              "duck(S)/d.png": (60, 100)}
    rows = [willow_row("car(G)/a.png", "car(G)/b.png", 0), willow_row("duck(S)/c.png", "duck(S)/d.png", 1)]
    return write_willow(tmp_path, rows, images)


def test_fixture_pairs_parsed_by_position(willow_root):
    ds = data.build_dataset("pfwillow", root=willow_root)
    assert len(ds) == 2 and ds.default_thres == "bbox" and ds.classes == PFWILLOW_CLASSES
    rows = list(csv.reader((willow_root / "PF-WILLOW" / "test_pairs.csv").open()))[1:]
    for i, row in enumerate(rows):
        s = ds[i]
        vals = np.array(row[2:], dtype=np.float32)
        assert np.array_equal(s["src_kps"].numpy(), np.stack([vals[0:10], vals[10:20]], 1))
        assert np.array_equal(s["trg_kps"].numpy(), np.stack([vals[20:30], vals[30:40]], 1))
        x, y = vals[20:30], vals[30:40]
        assert np.allclose(s["trg_bbox"].numpy(), [x.min(), y.min(), x.max(), y.max()])
    s = ds[1]
    assert s["src_name"] == "duck(S)/c.png" and s["class_name"] == "duck(S)" and s["class_id"] == 3
    assert tuple(s["trg_img"].shape) == (3, 100, 60) and s["trg_img"].dtype == torch.uint8


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[:-1], "expected 42 columns"),
    (lambda r: r[:5] + ["abc"] + r[6:], "column XA4 is not a number"),
    (lambda r: ["PF-dataset/car/a.png"] + r[1:], "not <folder>/<sub-class>/<image>"),
    (lambda r: ["PF-dataset/car(G)/zz.png"] + r[1:], "zz.png listed in"),
])
def test_row_errors_name_file_and_row(tmp_path, mutate, message):
    images = {"car(G)/a.png": (50, 50), "car(G)/b.png": (50, 50)}
    rows = [willow_row("car(G)/a.png", "car(G)/b.png", 0),
            mutate(willow_row("car(G)/b.png", "car(G)/a.png", 1))]
    root = write_willow(tmp_path, rows, images)
    with pytest.raises(UserError, match=message) as err:
        data.build_dataset("pfwillow", root=root)
    assert "\n" not in str(err.value)
    if "columns" in message or "number" in message:
        assert f"{root / 'PF-WILLOW' / 'test_pairs.csv'}:3" in str(err.value)


def test_missing_root_folder_header_empty(tmp_path, willow_root):
    with pytest.raises(UserError, match=r"does not exist.*download_datasets.sh --only pfwillow"):
        data.build_dataset("pfwillow", root=tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"PF-WILLOW is missing; download with: bash scripts/download"):
        data.build_dataset("pfwillow", root=tmp_path / "PF-WILLOW" / "car(G)")
    csv_path = willow_root / "PF-WILLOW" / "test_pairs.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[1:]) + "\n")  # header dropped
    with pytest.raises(UserError, match="header line"):
        data.build_dataset("pfwillow", root=willow_root)
    csv_path.write_text(lines[0] + "\n")
    with pytest.raises(UserError, match="empty"):
        data.build_dataset("pfwillow", root=willow_root)
    with pytest.raises(UserError, match="no split 'trn'"):
        data.build_dataset("pfwillow", root=willow_root, split="trn")


def test_unreadable_image_names_file(willow_root):
    ds = data.build_dataset("pfwillow", root=willow_root)
    bad = willow_root / "PF-WILLOW" / "car(G)" / "b.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"car\(G\)/b.png is unreadable"):
        ds[0]


def test_real_pfwillow(realdata_root):
    ds = data.build_dataset("pfwillow", root=realdata_root)
    assert len(ds) == 900
    counts = {c: 0 for c in PFWILLOW_CLASSES}
    mats: dict[str, np.ndarray] = {}
    for i in range(len(ds)):
        meta, ann = ds.pair_meta(i), ds._annotation(i)
        counts[meta["class_name"]] += 1
        assert meta["src_name"].split("/")[0] == meta["trg_name"].split("/")[0] == meta["class_name"]
        assert ann["src_kps"].shape == ann["trg_kps"].shape == (10, 2)
        for side in ("src", "trg"):
            name = meta[f"{side}_name"]
            if name not in mats:  # independent source: the official per-image .mat files
                mats[name] = loadmat(str(ds.dir / name.replace(".png", ".mat")))["pts_coord"].T
            assert np.allclose(ann[f"{side}_kps"], mats[name], atol=1e-4)
        x, y = mats[meta["trg_name"]][:, 0], mats[meta["trg_name"]][:, 1]
        box = ann["trg_bbox"]
        assert np.isclose(max(box[2] - box[0], box[3] - box[1]), max(np.ptp(x), np.ptp(y)), atol=1e-3)
    assert set(counts.values()) == {90} and len(mats) == 100
    s = ds[0]
    assert max(s["src_img"].shape[1:]) == 300 and max(s["trg_img"].shape[1:]) == 300
