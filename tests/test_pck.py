"""PCK: reference lengths per dataset, float32 thresholds, `<=` and NaN, the accumulator's three
averagings on a hand-worked 3-pair example, merging shards."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from data.registry import extent_box
from validation_and_test.pck import (
    PCKAccumulator,
    alpha_key,
    correct_keypoints,
    pck_length,
    pck_threshold,
)

ALPHAS = (0.05, 0.1, 0.15)


def _scot_ratio(h: int, w: int) -> np.float32:
    """Faithful float32 resize ratio of docs/protocol.md, Resize: (1 / max(H, W)) * 300."""
    return np.float32(np.float32(1.0) / np.float32(max(h, w))) * np.float32(300)


def test_lengths_per_dataset():
    # PF-PASCAL (img): max side of the original target image, (H, W)
    assert pck_length("img", (375, 500)) == 500.0
    assert pck_length("img", (500, 333)) == 500.0
    # SPair / PF-PASCAL bbox: max side of the target box
    assert pck_length("bbox", (375, 500), torch.tensor([10.0, 20.0, 110.0, 260.0])) == 240.0
    # PF-WILLOW: the extent box of the 10 *target* keypoints, padding masked out, never sentinels
    kps = torch.tensor([[30.0, 40.0], [130.0, 60.0], [80.0, 190.0], [-1.0, -1.0]])
    mask = torch.tensor([True, True, True, False])
    box = torch.from_numpy(extent_box(kps[mask].numpy()))
    assert box.tolist() == [30.0, 40.0, 130.0, 190.0]
    assert pck_length("bbox", (300, 300), box) == 150.0
    padded = torch.from_numpy(extent_box(kps.numpy()))
    assert pck_length("bbox", (300, 300), padded) == 191.0  # what padding bugs produce
    with pytest.raises(ValueError):
        pck_length("box", (1, 1))


def test_threshold_float32_details():
    for h, w in [(375, 500), (333, 500), (62, 40), (71, 71), (300, 225)]:
        s = _scot_ratio(h, w)
        length = float(max(h, w))
        t = pck_threshold(length, float(s), ALPHAS)
        assert t.dtype == torch.float32 and t.shape == (3,)
        expected = [np.float32(np.float32(length) * s) * np.float32(a) for a in ALPHAS]
        assert t.tolist() == [float(e) for e in expected]
        # about alpha * 300, not alpha * (resized size), also where floor(62 * s) = 299
        assert np.allclose(t.numpy(), np.array(ALPHAS) * 300, rtol=1e-6)
    assert pck_threshold(240.0, 0.6, 0.1).shape == ()


def test_correct_keypoints_inclusive_and_nan():
    gt = torch.tensor([[10.0, 10.0], [50.0, 50.0], [0.0, 0.0], [7.0, 7.0]])
    pred = torch.tensor([[13.0, 14.0], [50.0, 55.01], [float("nan"), float("nan")], [7.0, 7.0]])
    correct = correct_keypoints(pred, gt, torch.tensor([5.0, 4.99]))  # d = 5, 5.01, NaN, 0
    assert correct.dtype == torch.bool
    assert correct.tolist() == [[True, False, False, True], [False, False, False, True]]


def test_direction_threshold_comes_from_target():
    """A small source and a large target: a 20-px error is correct at alpha 0.1 only because the
    threshold uses the target's box (swapping src/trg would make it wrong)."""
    trg_box = torch.tensor([0.0, 0.0, 250.0, 100.0])
    src_box = torch.tensor([0.0, 0.0, 50.0, 40.0])
    t_trg = pck_threshold(pck_length("bbox", (300, 300), trg_box), 1.0, 0.1)
    t_src = pck_threshold(pck_length("bbox", (300, 300), src_box), 1.0, 0.1)
    pred, gt = torch.tensor([[120.0, 50.0]]), torch.tensor([[100.0, 50.0]])
    assert correct_keypoints(pred, gt, t_trg.view(1)).item()
    assert not correct_keypoints(pred, gt, t_src.view(1)).item()


def _meta(index, cls, **extra):
    return {"index": index, "src_name": f"s{index}.jpg", "trg_name": f"t{index}.jpg", "class_name": cls,
            **extra}


def _three_pairs():
    """pair 0 (cat): 2 kps, 1/2/2 correct; pair 1 (cat): 4 kps, 4/4/4; pair 2 (dog): 10 kps, 3/5/10."""
    def corr(k, counts):
        return torch.stack([torch.arange(k) < c for c in counts])

    def flags(v, s, t, o):
        return {"viewpoint_variation": v, "scale_variation": s, "truncation": t, "occlusion": o}
    return [
        (_meta(0, "cat", **flags(0, 1, 0, 2)), corr(2, [1, 2, 2])),
        (_meta(1, "cat", **flags(2, 1, 0, 0)), corr(4, [4, 4, 4])),
        (_meta(2, "dog", **flags(0, 0, 1, 0)), corr(10, [3, 5, 10])),
    ]


def test_accumulator_hand_worked():
    acc = PCKAccumulator(ALPHAS, "spair")
    for meta, corr in _three_pairs():
        acc.add(meta, corr)
    s = acc.summary()
    assert s["n_pairs"] == 3 and s["n_keypoints"] == 16
    # per pair: (50, 100, 30), (100, 100, 50), (100, 100, 100) -> means 60, 83.33, 100
    assert s["pck"]["0.05"] == pytest.approx(60.0)
    assert s["pck"]["0.1"] == pytest.approx(250 / 3)
    assert s["pck"]["0.15"] == pytest.approx(100.0)
    # per keypoint (pooled): 8/16, 11/16, 16/16
    assert s["pck_per_keypoint"] == pytest.approx({"0.05": 50.0, "0.1": 68.75, "0.15": 100.0})
    # per class: cat (50 + 100) / 2 = 75, dog 30; the headline is NOT their mean (52.5)
    assert s["per_class"]["cat"]["0.05"] == pytest.approx(75.0)
    assert s["per_class"]["dog"]["0.05"] == pytest.approx(30.0)
    assert s["pck"]["0.05"] != pytest.approx(52.5)
    vp = s["per_difficulty"]["viewpoint_variation"]
    assert set(vp) == {"0", "2"} and vp["0"]["0.05"] == pytest.approx(40.0) and vp["2"]["0.05"] == 100.0
    rows = acc.rows()
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert list(rows[0]) == ["index", "src", "trg", "class", "n_kps", "pck_0.05", "pck_0.1", "pck_0.15"]
    assert rows[2]["pck_0.05"] == pytest.approx(30.0) and rows[2]["n_kps"] == 10


def test_merge_of_shards_equals_single():
    pairs = _three_pairs()
    gen = random.Random(0)
    extra = []
    for i in range(3, 40):  # more pairs with random correctness
        k = gen.randint(1, 12)
        corr = torch.tensor([[gen.random() < p for _ in range(k)] for p in (0.3, 0.6, 0.9)])
        extra.append((_meta(i, gen.choice(["a", "b", "c"]), viewpoint_variation=gen.randint(0, 2),
                            scale_variation=0, truncation=0, occlusion=gen.randint(0, 2)), corr))
    pairs = pairs + extra
    single = PCKAccumulator(ALPHAS, "spair")
    for meta, corr in pairs:
        single.add(meta, corr)
    shards = [PCKAccumulator(ALPHAS, "spair") for _ in range(3)]
    order = list(range(len(pairs)))
    gen.shuffle(order)
    for n, i in enumerate(order):
        shards[n % 3].add(*pairs[i])
    shards[1].add(*pairs[order[0]])  # distributed-sampler padding repeats a pair
    merged = PCKAccumulator(ALPHAS, "spair").merge(shards)
    assert merged.summary() == single.summary()
    assert merged.rows() == single.rows()
    conflicting = PCKAccumulator(ALPHAS, "spair")
    conflicting.add(pairs[0][0], ~pairs[0][1])
    with pytest.raises(ValueError):
        merged.merge([conflicting])


def test_accumulator_rejects_bad_shapes_and_alpha_keys():
    acc = PCKAccumulator(ALPHAS, "pfwillow")
    with pytest.raises(ValueError):
        acc.add(_meta(0, "car"), torch.ones(2, 10, dtype=torch.bool))
    assert [alpha_key(a) for a in ALPHAS] == ["0.05", "0.1", "0.15"]
    acc.add(_meta(0, "car"), torch.zeros(3, 10, dtype=torch.bool))
    s = acc.summary()
    assert "per_difficulty" not in s and s["pck"]["0.1"] == 0.0
    assert math.isclose(s["pck_per_keypoint"]["0.15"], 0.0)
