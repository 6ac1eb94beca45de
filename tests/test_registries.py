"""Each list of names has one home, so adding an architecture or a benchmark is a one-line change."""

from __future__ import annotations

import torch

from data import DATASETS, build_dataset
from data.demo import DemoPairs, ensure_demo_data
from models import weights
from models.backbone import HyperpixelBackbone
from models.moco import MoCoConfig, build_encoder
from validation_and_test.config import eval_parent_parser


def test_adding_an_architecture_is_one_table_line(monkeypatch):
    monkeypatch.setitem(weights.ARCH_BLOCKS, "resnet152", ((3, 8, 36, 3), True))
    args = eval_parent_parser().parse_args(["--backbone", "resnet152"])
    assert args.backbone == "resnet152" and "resnet152" in weights.ARCH_BLOCKS
    MoCoConfig(arch="resnet152")  # the training config accepts it
    model, arch, _ = weights.load_resnet("resnet152", "random", seed=0)
    assert arch == "resnet152" and weights.infer_arch(model.state_dict()) == "resnet152"
    assert HyperpixelBackbone(model, arch).n_ids == 1 + 3 + 8 + 36 + 3  # the stem + every block
    assert build_encoder("resnet152", dim=8).fc.out_features == 8


def test_adding_a_benchmark_is_one_registration(monkeypatch):
    class FifthBenchmark(DemoPairs):
        pass

    monkeypatch.setitem(DATASETS, "fifth", FifthBenchmark)
    assert eval_parent_parser().parse_args(["--dataset", "fifth"]).dataset == "fifth"
    ds = build_dataset("fifth", ensure_demo_data(), "test")
    assert isinstance(ds, FifthBenchmark) and len(ds) > 0
    assert torch.is_tensor(ds[0]["src_img"])
