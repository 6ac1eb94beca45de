"""Batching with masks (no sentinels), DataLoader with workers, normalisation, registry errors."""

from __future__ import annotations

import pytest
import torch
from helpers import write_small_willow

import data
from configs.runtime import UserError
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize


def _sample(k: int, offset: float) -> dict:
    kps = torch.arange(k * 2, dtype=torch.float32).view(k, 2) + offset
    return {"index": k, "pair_name": f"p{k}", "src_img": torch.zeros(3, 4, 5, dtype=torch.uint8),
            "trg_img": torch.zeros(3, 6, 2, dtype=torch.uint8), "src_kps": kps, "trg_kps": kps + 1,
            "src_bbox": torch.tensor([0.0, 1, 2, 3]), "trg_bbox": torch.tensor([1.0, 2, 3, 4]), "class_id": 2}


def test_collate_masks_variable_keypoint_counts():
    batch = data.collate_pairs([_sample(3, 100.0), _sample(1, 200.0)])
    assert batch["src_kps"].shape == (2, 3, 2)
    assert batch["kps_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert batch["n_kps"].tolist() == [3, 1] and batch["index"].tolist() == [3, 1]
    assert isinstance(batch["src_img"], list) and batch["src_img"][1].shape == (3, 4, 5)
    assert batch["pair_name"] == ["p3", "p1"] and batch["trg_bbox"].shape == (2, 4)
    # masked extent equals the unpadded one (the PF-WILLOW padding bug would fail this)
    m = batch["kps_mask"][1]
    trg = batch["trg_kps"][1][m]
    assert torch.equal(trg.min(0).values, _sample(1, 200.0)["trg_kps"][0])
    assert torch.equal(batch["trg_kps"][0], _sample(3, 100.0)["trg_kps"])


def test_normalize_uint8_and_float_agree():
    img = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    a, b = normalize(img), normalize(img.float() / 255)
    assert a.dtype == torch.float32 and torch.allclose(a, b)
    expect = (img[1, 2, 3].item() / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert abs(a[1, 2, 3].item() - expect) < 1e-6


@pytest.mark.parametrize("source", ["generated", "real"])
def test_dataloader_with_workers(source, request, tmp_path):
    """Two worker processes batch PF-WILLOW pairs in order (generated fixture of 6 pairs, real data)."""
    if source == "real":
        root, picks = request.getfixturevalue("realdata_root"), [0, 95, 500, 899]
    else:
        root, picks = write_small_willow(tmp_path, n_rows=6), [0, 2, 3, 5]
    ds = data.build_dataset("pfwillow", root=root)
    subset = torch.utils.data.Subset(ds, picks)
    loader = torch.utils.data.DataLoader(subset, batch_size=2, num_workers=2, collate_fn=data.collate_pairs)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [picks[:2], picks[2:]]
    assert all(b["src_kps"].device.type == "cpu" and b["kps_mask"].all() for b in batches)
    assert torch.equal(batches[1]["trg_kps"][1], ds[picks[3]]["trg_kps"])
    assert torch.equal(batches[0]["src_img"][1], ds[picks[1]]["src_img"])


def test_registry_errors(tmp_path):
    assert set(data.DATASETS) == {"pfpascal", "pfwillow", "spair", "demo"}
    with pytest.raises(UserError, match="unknown dataset 'willow'"):
        data.build_dataset("willow")
    with pytest.raises(UserError, match="unexpected keyword"):
        data.build_dataset("pfwillow", root=tmp_path, colour="red")


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATASETS", str(tmp_path / "from_env"))
    with pytest.raises(UserError, match="from_env does not exist"):
        data.build_dataset("spair")
    monkeypatch.delenv("DATASETS")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"dataset root Datasets_SCOT does not exist"):
        data.build_dataset("pfpascal")
