"""The project's first assertion that training learns (slow, `make test-slow`).

From the shipped stage-1 init, the ablation's pixel-level-only row (configs/demo.yaml + moco.loss_weight=0,
60 steps on demo trn, seed 0; `experiments.learning.pixel_level_check`) must end with its cycle loss below
its crop-centre baseline. The issue's second check, demo val PCK@0.1 above the init's, is not met and is not
asserted (a non-strict expected failure could never fail); its numbers are below and in the loss check's
message.

Measured for exactly this run (one thread, seeds 0, 1, 2; README "Ablation", learning test):
- end cycle loss / centre baseline (mean of the last 5 logged steps): 0.891, 0.826, 0.879 (mean 0.865, std
  0.035). From the seeded random ResNet-18 (seed 0) the same run ends at 1.304: it fails.
  The bound is the baseline itself (1.0): 3.9 seed std above the mean from the shipped init, 8.7 below the
  random init's value.
- demo val PCK@0.1 minus the init's 78.3: +0.8, -1.4, -8.3 (mean -3.0, std 4.7). The gain is not there: the
  second check is an expected failure (not strict: one seed in three passes by chance) until a stage-2 recipe
  chosen on demo val makes it hold. From the random init the same run gives PCK@0.1 75.1 -> 61.1.
"""

from __future__ import annotations

import pytest

from experiments.learning import pixel_level_check
from experiments.weights import shipped_init

LOSS_RATIO_MAX = 1.0  # the crop-centre baseline; measured 0.865 ± 0.035 (shipped), 1.304 (random)


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    return pixel_level_check(shipped_init(), tmp_path_factory.mktemp("learning"), seed=0, device="cpu")


@pytest.mark.slow
def test_pixel_level_walk_lands_inside_the_crop_after_stage2(check):
    assert check["loss_ratio"] < LOSS_RATIO_MAX, check

