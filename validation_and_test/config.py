"""Evaluation settings (`EvalConfig`) and the per-dataset presets in `configs/eval/`.

Precedence: dataclass defaults <- `configs/eval/<dataset>.yaml` (or `--config`) <- command-line flags.
A preset's `preset_backbone` names the architecture its hyperpixel ids were chosen for; using another
backbone without explicit ids is an error (`evaluation.md` §12).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from configs import CONFIG_DIR

EVAL_PRESET_DIR = CONFIG_DIR / "eval"


@dataclass
class EvalConfig:
    """Everything that changes an evaluation's numbers or outputs; written to results.json."""

    dataset: str = "pfpascal"
    datapath: Optional[str] = None  # None: $DATASETS else ./Datasets_SCOT (demo: its cache folder)
    split: Literal["trn", "val", "test"] = "test"
    pfpascal_kps: Literal["mat", "csv"] = "mat"  # csv: test_pairs.csv columns (thres img; not comparable)
    backbone: Literal["auto", "resnet18", "resnet34", "resnet50", "resnet101"] = "auto"
    weights: str = "imagenet"  # imagenet | random | checkpoint path
    preset_backbone: str = "resnet50"  # architecture the preset's hyperpixel ids refer to
    hyperpixel: list[int] = field(default_factory=lambda: [2, 12, 13, 15])
    alpha: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.15])
    thres: Literal["auto", "img", "bbox"] = "auto"
    sim: Literal["OTGeo", "OT", "cosGeo", "cos"] = "OTGeo"
    exp1: float = 1.0
    exp2: float = 0.5
    eps: float = 0.05
    sinkhorn_iters: int = 1
    sinkhorn_solver: Literal["auto", "scot", "log"] = "auto"  # auto: scot for 1 iteration, else log
    classmap: int = 1
    hpf: bool = False  # HPF mode: downscale-only resize, margin pruning, RHM on max(0, cos)^3 votes
    long_side: int = 300
    max_pairs: Optional[int] = None
    device: str = "auto"
    seed: int = 0
    fast: bool = False  # allow TF32 on CUDA (recorded in results.json)
    cache_mb: float = 2048.0  # feature-cache budget per process
    num_workers: int = 2  # image-loading workers
    output_dir: Optional[str] = None
    vis_dir: Optional[str] = None
    vis_max: int = 50  # at most this many PNGs

    def __post_init__(self) -> None:
        if self.classmap not in (0, 1):
            raise ValueError(f"classmap must be 0 or 1, got {self.classmap}")
        if self.sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters must be >= 1, got {self.sinkhorn_iters}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not self.alpha or any(a <= 0 for a in self.alpha):
            raise ValueError(f"alpha must be a non-empty list of positive numbers, got {self.alpha}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {self.max_pairs}")

    @property
    def solver(self) -> str:
        if self.sinkhorn_solver != "auto":
            return self.sinkhorn_solver
        return "scot" if self.sinkhorn_iters == 1 else "log"


def preset_path(dataset: str) -> Path:
    return EVAL_PRESET_DIR / f"{dataset}.yaml"
