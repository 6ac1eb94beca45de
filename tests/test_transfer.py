"""Receptive-field boxes and keypoint transfer on hand-made grids."""

from __future__ import annotations

import math

import torch

from models.transfer import keypoint_neighbours, receptive_field_boxes, transfer_keypoints


def test_boxes_hand_worked():
    boxes, centers = receptive_field_boxes(2, 3, jump=4, rf=11)  # half size 5
    assert boxes.dtype == torch.float32 and boxes.shape == (6, 4) and centers.shape == (6, 2)
    expected_centers = torch.tensor([[0, 0], [4, 0], [8, 0], [0, 4], [4, 4], [8, 4]], dtype=torch.float32)
    assert torch.equal(centers, expected_centers)  # row-major p = y * w + x, top-left anchored
    assert torch.equal(boxes[4], torch.tensor([-1.0, -1.0, 9.0, 9.0]))
    assert torch.equal(boxes[2], torch.tensor([3.0, -5.0, 13.0, 5.0]))
    assert torch.equal((boxes[:, :2] + boxes[:, 2:]) / 2, centers)
    boxes27, _ = receptive_field_boxes(57, 75, 4, 27)  # 300x225 image, id 2
    assert boxes27.shape == (4275, 4) and torch.equal(boxes27[-1], torch.tensor([283.0, 211.0, 309.0, 237.0]))


def test_neighbours_inclusive():
    boxes, _ = receptive_field_boxes(1, 3, jump=4, rf=9)  # x ranges [-4,4], [0,8], [4,12]
    kps = torch.tensor([[4.0, 0.0], [4.0, 4.0], [4.01, 4.0], [13.0, 0.0], [2.0, 4.5]])
    inside = keypoint_neighbours(boxes, kps)
    expected = torch.tensor([[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(inside, expected)


def test_transfer_constant_translation():
    """Every source cell matches the cell one step right and two steps down: the prediction is the
    keypoint moved by exactly (+4, +8) px wherever it lies."""
    h, w, j = 6, 7, 4
    src_boxes, _ = receptive_field_boxes(h, w, j, 11)
    trg_boxes, _ = receptive_field_boxes(h + 2, w + 1, j, 11)
    ns, nt = h * w, (h + 2) * (w + 1)
    ys, xs = torch.div(torch.arange(ns), w, rounding_mode="floor"), torch.arange(ns) % w
    target = (ys + 2) * (w + 1) + (xs + 1)
    conf = torch.rand(ns, nt, generator=torch.Generator().manual_seed(0)) * 0.5
    conf[torch.arange(ns), target] = 1.0
    kps = torch.tensor([[0.0, 0.0], [5.5, 7.25], [13.0, 9.0], [24.0, 20.0]])
    pred, n_nbr = transfer_keypoints(conf, src_boxes, trg_boxes, kps)
    assert pred.shape == (4, 2) and n_nbr.dtype == torch.int64
    assert torch.allclose(pred, kps + torch.tensor([4.0, 8.0]), atol=1e-5)
    assert (n_nbr > 0).all()


def test_transfer_hand_worked_average_and_nan():
    """3 source cells in a row (jump 4, rf 9: x ranges [-4,4], [0,8], [4,12]), 3 target cells.
    Keypoint at x=3: neighbours cells 0 and 1. Cell 0 -> target cell 2 (displacement +8), cell 1 ->
    target cell 1 (0): prediction 3 + mean(8, 0) = 7. Keypoint at x=20 is in no box: NaN."""
    boxes, _ = receptive_field_boxes(1, 3, jump=4, rf=9)
    conf = torch.tensor([[0.1, 0.2, 0.9], [0.0, 0.7, 0.3], [0.5, 0.4, 0.6]])
    kps = torch.tensor([[3.0, 1.0], [20.0, 0.0]])
    pred, n_nbr = transfer_keypoints(conf, boxes, boxes, kps)
    assert n_nbr.tolist() == [2, 0]
    assert torch.allclose(pred[0], torch.tensor([7.0, 1.0]))
    assert math.isnan(pred[1, 0].item()) and math.isnan(pred[1, 1].item())


def test_transfer_matches_explicit_loop():
    gen = torch.Generator().manual_seed(3)
    src_boxes, src_c = receptive_field_boxes(5, 6, 4, 27)
    trg_boxes, trg_c = receptive_field_boxes(4, 7, 4, 27)
    conf = torch.rand(len(src_c), len(trg_c), generator=gen)
    kps = torch.rand(6, 2, generator=gen) * torch.tensor([24.0, 20.0])
    pred, n_nbr = transfer_keypoints(conf, src_boxes, trg_boxes, kps)
    best = conf.argmax(1)
    for k, (kx, ky) in enumerate(kps.tolist()):
        shifts = [trg_c[best[i]] - src_c[i] for i in range(len(src_c))
                  if src_boxes[i, 0] <= kx <= src_boxes[i, 2] and src_boxes[i, 1] <= ky <= src_boxes[i, 3]]
        assert n_nbr[k].item() == len(shifts)
        expected = torch.tensor([kx, ky]) + torch.stack(shifts).mean(0)
        assert torch.allclose(pred[k], expected, atol=1e-4)
