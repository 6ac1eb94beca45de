"""The hard-argmax walk accuracy against hand-worked walks, and the shipped init's hash check."""

from __future__ import annotations

import pytest
import torch

from configs.runtime import UserError
from experiments.weights import initial_weights, shipped_init
from models.cycle import hard_walk_accuracy


def _one_hot(rows: list[int], n: int) -> torch.Tensor:
    """(1, len(rows), n) row-softmax stand-in whose row i peaks at rows[i] (0.6 there, 0.4 / (n - 1) else)."""
    p = torch.full((1, len(rows), n), 0.4 / (n - 1))
    for i, j in enumerate(rows):
        p[0, i, j] = 0.6
    return p


def test_hard_walk_accuracy_hand_worked():
    # 4 source cells on a 2x2 grid of stride 8: centres (4,4), (12,4), (4,12), (12,12)
    centres = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
    # 3 crop cells: ground truth at cells 0, 1, 3 (cell 1's ground truth 7 px right of its centre)
    gt = torch.tensor([[[4.0, 4.0], [19.0, 4.0], [12.0, 12.0]]])
    p02 = _one_hot([2, 0, 1], 4)          # crop -> target cells 2, 0, 1
    p21 = _one_hot([3, 1, 0, 2], 4)       # target -> source: 0->3, 1->1, 2->0, 3->2
    # walks: crop 0 -> t2 -> s0 (0 px: hit); crop 1 -> t0 -> s3 ((12,12) vs (19,4): 10.6 px > 8: miss);
    # crop 2 -> t1 -> s1 ((12,4) vs (12,12): 8 px = one stride: hit)
    valid = torch.tensor([[True, True, True]])
    acc = hard_walk_accuracy(p02, p21, centres, gt, valid, 8.0)
    assert acc.item() == pytest.approx(2 / 3)
    # an invalid cell does not count; no valid cell gives 0
    assert hard_walk_accuracy(p02, p21, centres, gt, torch.tensor([[True, False, False]]), 8.0).item() == 1.0
    assert hard_walk_accuracy(p02, p21, centres, gt, torch.zeros(1, 3, dtype=torch.bool), 8.0).item() == 0.0


def test_shipped_init_hash_is_checked(tmp_path):
    assert shipped_init().is_file()  # the committed file matches its recorded sha256
    fake = tmp_path / "stage1_resnet18.pth"
    fake.write_bytes(b"not the shipped weights")
    with pytest.raises(UserError, match="does not match the shipped") as err:
        shipped_init(fake)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not found"):
        shipped_init(tmp_path / "absent.pth")


def test_initial_weights_kinds(tmp_path):
    assert initial_weights("shipped", tmp_path / "unused.pth", 0) == shipped_init()
    random0 = initial_weights("random", tmp_path / "r0.pth", 0)
    assert random0 == tmp_path / "r0.pth" and random0.is_file()
    assert initial_weights(str(random0), tmp_path / "unused.pth", 5) == random0  # a file: the same each seed
    with pytest.raises(UserError, match="shipped, random or a checkpoint file"):
        initial_weights(str(tmp_path / "absent.pth"), tmp_path / "unused.pth", 0)
