"""The project's first assertion that training learns (slow, `make test-slow`).

From the shipped stage-1 init, the ablation's pixel-level-only row (configs/demo.yaml + moco.loss_weight=0:
60 steps at lr 1e-4 on demo trn, seed 0; `experiments.learning.pixel_level_check`) must:
1. end with its cycle loss below its crop-centre baseline (the walk lands inside the crop);
2. lower the cycle loss on 180 fixed demo trn crops (the same crops before and after, BN in training mode)
   by more than LOSS_DROP_MIN of the init's.

Measured for exactly this run (one thread, seeds 0, 1, 2):
- 1: end cycle loss / centre baseline (mean of the last 5 logged steps): 0.641, 0.613, 0.692 (mean 0.649,
  std 0.040). The bound is the baseline itself (1.0), 8.8 seed std above the mean. From the seeded random
  ResNet-18 (seed 0) the same run ends at 1.958: **the test fails from the random init**.
- 2: relative drop on the fixed crops: 0.139, 0.158, 0.178 (mean 0.159, std 0.020); LOSS_DROP_MIN is the mean
  minus 4 seed std (0.080, a false failure below 1e-4 under a normal model). From the random init: 0.110
  (the loss drops from random weights too; check 1 is the one that separates them).
- Not asserted: the issue's "demo val PCK@0.1 above the init's (91.65)". Its gain is +0.82, -0.75, +0.25
  (mean +0.11, std 0.79) from the shipped init and +1.22 from the random init: no bound derived from this
  spread can both pass reliably and fail from the random init. README, "Ablation", has the numbers.
"""

from __future__ import annotations

import pytest

from experiments.learning import pixel_level_check
from experiments.weights import shipped_init

LOSS_RATIO_MAX = 1.0   # the crop-centre baseline; measured 0.649 ± 0.040 (shipped), 1.958 (random)
LOSS_DROP_MIN = 0.080  # mean - 4 std of the measured drop 0.159 ± 0.020 (shipped); 0.110 from random


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    return pixel_level_check(shipped_init(), tmp_path_factory.mktemp("learning"), seed=0, device="cpu")


@pytest.mark.slow
def test_pixel_level_walk_lands_inside_the_crop_after_stage2(check):
    assert check["loss_ratio"] < LOSS_RATIO_MAX, check


@pytest.mark.slow
def test_pixel_level_training_lowers_the_cycle_loss_on_fixed_crops(check):
    drop = 1.0 - check["walk_trained"]["loss_cycle"] / check["walk_init"]["loss_cycle"]
    assert drop > LOSS_DROP_MIN, check
