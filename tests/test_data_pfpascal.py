"""PF-PASCAL: .mat keypoints with NaN rows (mutually visible rule), CSV keypoint mode, flips, split overlap
(verified counts on the official lists) and error messages."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import write_pascal
from PIL import Image

import data
from configs.runtime import UserError
from data.pfpascal import read_pair_list


@pytest.fixture
def pascal_root(tmp_path):
    return write_pascal(tmp_path)


def test_mat_keypoints_keep_rows_visible_in_both(pascal_root):
    ds = data.build_dataset("pfpascal", root=pascal_root, split="test")
    assert ds.default_thres == "img" and ds.check_thres("auto") == "img" and ds.check_thres("bbox") == "bbox"
    assert ds.describe() == {"dataset": "pfpascal", "split": "test", "root": str(pascal_root), "pairs": 1,
                             "default_thres": "img", "comparable": True, "keypoint_source": "mat",
                             "drop_pairs_in": None, "pairs_dropped": 0}
    s = ds[0]
    assert np.array_equal(s["src_kps"].numpy(), [[10, 11], [40, 41]])
    assert np.array_equal(s["trg_kps"].numpy(), [[12, 13], [42, 43]])
    assert np.array_equal(s["src_bbox"].numpy(), [5, 6, 50, 45]) and np.array_equal(s["trg_bbox"].numpy(),
                                                                                      [7, 8, 55, 48])
    assert s["class_name"] == "car" and s["class_id"] == 6 and s["src_name"] == "JPEGImages/2008_000001.jpg"
    assert tuple(s["trg_img"].shape) == (3, 48, 64)


def test_csv_keypoint_mode(pascal_root):
    ds = data.build_dataset("pfpascal", root=pascal_root, split="test", keypoint_source="csv")
    s = ds[0]
    assert ds.keypoint_source == "csv"
    assert np.array_equal(s["src_kps"].numpy(), [[10, 11], [40, 41]]) and torch.isnan(s["trg_bbox"]).all()
    assert ds.check_thres("auto") == "img"
    assert ds.describe()["keypoint_source"] == "csv" and ds.describe()["comparable"] is False
    with pytest.raises(UserError, match="--thres bbox is not available"):
        ds.check_thres("bbox")
    with pytest.raises(UserError, match="split trn has no keypoint columns"):
        data.build_dataset("pfpascal", root=pascal_root, split="trn", keypoint_source="csv")


def test_trn_no_mutual_keypoint_and_count_mismatch(pascal_root):
    ds = data.build_dataset("pfpascal", root=pascal_root, split="trn")
    assert [ds.pair_meta(i)["flip"] for i in range(3)] == [0, 1, 1]
    with pytest.raises(UserError, match=r"trn_pairs.csv:4: no keypoint is visible in both"):
        ds[2]
    folder = pascal_root / "PF-PASCAL"
    lines = (folder / "trn_pairs.csv").read_text().splitlines()
    mismatched = lines[1].replace("2008_000002", "2008_000004")
    (folder / "trn_pairs.csv").write_text(lines[0] + "\n" + mismatched + "\n")
    ds = data.build_dataset("pfpascal", root=pascal_root, split="trn")
    with pytest.raises(UserError, match=r"count mismatch: .*2008_000001.mat has 4 rows, .*2008_000004"):
        ds[0]


def test_unlabelled_pairs_honour_flip_on_trn_only(pascal_root):
    folder = pascal_root / "PF-PASCAL" / "JPEGImages"
    rng = np.random.default_rng(0)
    for stem in ("2008_000001", "2008_000002"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{stem}.png")
        Image.open(folder / f"{stem}.png").save(folder / f"{stem}.jpg", quality=100)
    trn = data.UnlabelledPairs(data.build_dataset("pfpascal", root=pascal_root, split="trn"), image_size=32)
    a, b = trn[0], trn[1]
    assert a["src"].shape == (3, 32, 32) and a["index"] == 0
    assert torch.allclose(b["src"], a["src"].flip(-1), atol=1e-5)
    assert torch.allclose(b["trg"], a["trg"].flip(-1), atol=1e-5)
    resized = Image.open(folder / "2008_000001.jpg").convert("RGB").resize((32, 32), Image.BICUBIC)
    expected = data.transforms.normalize(torch.from_numpy(np.array(resized)).permute(2, 0, 1))
    assert torch.allclose(a["src"], expected, atol=1e-6)
    no_flip = data.UnlabelledPairs(data.build_dataset("pfpascal", root=pascal_root, split="trn"), 32, False)
    assert torch.allclose(no_flip[1]["src"], a["src"])


def test_drop_pairs_in_and_errors(pascal_root, tmp_path):
    ds = data.build_dataset("pfpascal", root=pascal_root, split="trn", drop_pairs_in="test")
    assert len(ds) == 1 and ds.num_dropped == 2
    with pytest.raises(UserError, match="JPEGImages is missing; download with: "
                                        "bash scripts/download_datasets.sh --only pfpascal"):
        (pascal_root / "PF-PASCAL" / "JPEGImages").rename(tmp_path / "moved")
        data.build_dataset("pfpascal", root=pascal_root)


@pytest.mark.parametrize("row, message", [
    (["a/2008_000001.jpg", "a/2008_000002.jpg", "7", "1;2", "1", "1;2", "1;2"], "keypoint count mismatch"),
    (["a/2008_000001.jpg", "a/2008_000002.jpg", "21", "1", "1", "1", "1"], "class 21 outside 1..20"),
    (["a/2008_000001.jpg", "a/2008_000002.jpg", "7", "1"], "expected 7 columns"),
    (["a/2008_000001.jpg", "a/2008_000002.jpg", "car", "1", "1", "1", "1"], "column class is not an integer"),
])
def test_malformed_test_rows(pascal_root, row, message):
    path = pascal_root / "PF-PASCAL" / "test_pairs.csv"
    with path.open("a", newline="") as fh:
        csv.writer(fh).writerow(row)
    with pytest.raises(UserError, match=f"test_pairs.csv:3: .*{message}"):
        data.build_dataset("pfpascal", root=pascal_root, keypoint_source="csv")


def test_real_split_lists(realdata_pfpascal_csvs):
    test = read_pair_list(realdata_pfpascal_csvs / "test_pairs.csv", "test")
    assert len(test) == 299
    n_kps = [len(e["src_kps"]) for e in test]
    assert sum(n_kps) == 2414 and min(n_kps) == 4 and max(n_kps) == 17
    per_class = Counter(e["class_id"] for e in test)
    assert [per_class[c] for c in range(20)] == [15, 30, 10, 6, 8, 32, 19, 27, 13, 3, 8, 24, 9, 27, 12, 7, 1,
                                                 13, 20, 15]
    val = read_pair_list(realdata_pfpascal_csvs / "val_pairs.csv", "val")
    trn = read_pair_list(realdata_pfpascal_csvs / "trn_pairs.csv", "trn")
    assert len(val) == 308 and len(trn) == 2940 and {e["flip"] for e in val} == {0}
    assert Counter(e["flip"] for e in trn) == {0: 1470, 1: 1470}
    assert len({(e["src"], e["trg"]) for e in trn}) == 1226


def test_real_split_overlap_documented_in_docs(realdata_pfpascal_csvs):
    """The overlap counts docs/datasets.md states, recomputed from the official lists."""
    ordered = {s: [(e["src"], e["trg"]) for e in read_pair_list(realdata_pfpascal_csvs / f"{s}_pairs.csv", s)]
               for s in ("test", "val", "trn")}
    unordered = {s: {frozenset(p) for p in pairs} for s, pairs in ordered.items()}
    images = {s: {x for p in pairs for x in p} for s, pairs in ordered.items()}
    assert len(ordered["test"]) == 299 and len(unordered["test"]) == 277
    assert len(unordered["test"] & unordered["trn"]) == 95
    assert len(set(ordered["test"]) & set(ordered["trn"])) == 95
    assert len(images["test"]) == 506 and len(images["test"] & images["trn"]) == 302
    assert len({(b, a) for a, b in ordered["test"]} & set(ordered["val"])) == 35
    assert len(unordered["val"] & unordered["trn"]) == 99
