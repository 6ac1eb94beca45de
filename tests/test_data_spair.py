"""SPair-71k: real pairs (official JSONs without trailing newline), official layout lists, generated
fixtures with the file-name rules, and error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import spair_pairs, write_spair

import data
from configs.runtime import UserError
from data.spair import SPAIR_CLASSES, parse_layout

TEST_PER_CATEGORY = [690, 650, 702, 702, 870, 644, 564, 600, 646, 640, 600, 600, 702, 650, 862, 664, 756, 692]


def test_fixture_no_trailing_newline_keeps_last_pair_and_ids_fixed(tmp_path):
    pairs = spair_pairs([("2008_000001", "2008_000002", "cow"), ("2009_000003", "2009_000004", "tvmonitor")])
    root = write_spair(tmp_path, pairs, trailing_newline=False)
    (root / "SPair-71k" / "JPEGImages" / "aaa_stray").mkdir()  # stray folder must not shift class ids
    ds = data.build_dataset("spair", root=root)
    assert len(ds) == 2
    s = ds[1]
    assert s["class_name"] == "tvmonitor" and s["class_id"] == 17 and ds.pair_meta(0)["class_id"] == 9
    assert s["pair_name"] == pairs[1][0] and s["src_name"] == "JPEGImages/tvmonitor/2009_000003.jpg"
    assert np.array_equal(s["src_kps"].numpy(), [[5, 6], [6, 7], [7, 8]])
    assert np.array_equal(s["trg_bbox"].numpy(), [3, 4, 40, 35])
    assert (s["viewpoint_variation"], s["scale_variation"], s["truncation"], s["occlusion"]) == (2, 1, 3, 0)
    assert tuple(s["src_img"].shape) == (3, 40, 60)


@pytest.mark.parametrize("override, message", [
    ({"trg_bndbox": None}, "field trg_bndbox"),
    ("drop:occlusion", "missing field\\(s\\) occlusion"),
    ({"trg_kps": [[1, 2]]}, "keypoint count mismatch"),
    ({"src_kps": [], "trg_kps": []}, "no keypoint"),
    ({"category": "dog"}, "category 'dog' differs"),
])
def test_json_errors_name_the_file(tmp_path, override, message):
    pairs = spair_pairs([("2008_000001", "2008_000002", "cow")])
    ann = pairs[0][3]
    if override == "drop:occlusion":
        del ann["occlusion"]
    else:
        ann.update(override)
    root = write_spair(tmp_path, pairs)
    ds = data.build_dataset("spair", root=root)
    with pytest.raises(UserError, match=message) as err:
        ds[0]
    assert pairs[0][0] + ".json" in str(err.value)


def test_layout_and_folder_errors(tmp_path):
    root = write_spair(tmp_path, spair_pairs([("2008_000001", "2008_000002", "cow")]))
    layout = root / "SPair-71k" / "Layout" / "large" / "test.txt"
    layout.write_text("000001-2008_000001-2008_000002:cow\n000002-2008-01-x:cow\n")
    with pytest.raises(UserError, match=r"test.txt:2: .* is not NNNNNN-<src>-<trg>:<category>"):
        data.build_dataset("spair", root=root)
    layout.write_text("000001-2008_000001-2008_000002:unicorn\n")
    with pytest.raises(UserError, match="test.txt:1"):
        data.build_dataset("spair", root=root)
    layout.write_text("\n")
    with pytest.raises(UserError, match="empty"):
        data.build_dataset("spair", root=root)
    with pytest.raises(UserError, match=r"Layout/large/trn.txt is missing|PairAnnotation/trn is missing"):
        data.build_dataset("spair", root=root, split="trn")
    with pytest.raises(UserError, match="download_datasets.sh --only spair"):
        data.build_dataset("spair", root=tmp_path / "empty_dir_that_is_missing")


def test_real_spair_pairs(realdata_root):
    ds = data.build_dataset("spair", root=realdata_root, split="test")
    assert len(ds) == 12 and not (ds.dir / "Segmentation").exists()
    for i in range(len(ds)):
        s = ds[i]
        ann = json.loads(ds.annotation_path(i).read_text())
        assert s["class_name"] == ann["category"] and s["class_id"] == SPAIR_CLASSES.index(ann["category"])
        assert len(s["src_kps"]) == len(ann["kps_ids"]) >= 1
        # independent source: the per-image annotations at kps_ids
        for side in ("src", "trg"):
            img_ann = json.loads((ds.dir / "ImageAnnotation" / ann["category"]
                                  / ann[f"{side}_imname"].replace(".jpg", ".json")).read_text())
            expect = np.array([img_ann["kps"][k] for k in ann["kps_ids"]], dtype=np.float32)
            assert np.array_equal(s[f"{side}_kps"].numpy(), expect)
            assert list(s[f"{side}_img"].shape[1:]) == ann[f"{side}_imsize"][1::-1]
            assert s[f"{side}_name"] == f"JPEGImages/{ann['category']}/{ann[f'{side}_imname']}"
        assert np.array_equal(s["trg_bbox"].numpy(), ann["trg_bndbox"])
        for key in ("viewpoint_variation", "scale_variation", "truncation", "occlusion"):
            assert s[key] == ann[key]
    assert not ds.annotation_path(0).read_text().endswith("\n")


def test_official_layout_lists(realdata_spair_layout):
    sizes = {(size, split): len(parse_layout(realdata_spair_layout / size / f"{split}.txt"))
             for size in ("large", "small") for split in ("trn", "val", "test")}
    assert sizes == {("large", "trn"): 53340, ("large", "val"): 5384, ("large", "test"): 12234,
                     ("small", "trn"): 10652, ("small", "val"): 1070, ("small", "test"): 2438}
    cats = [c for *_, c in parse_layout(realdata_spair_layout / "large" / "test.txt")]
    runs = [c for i, c in enumerate(cats) if i == 0 or cats[i - 1] != c]
    assert runs == SPAIR_CLASSES  # 18 contiguous runs, in class-id order
    assert [cats.count(c) for c in SPAIR_CLASSES] == TEST_PER_CATEGORY
