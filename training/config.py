"""`TrainConfig`: everything a training run needs, loaded from YAML presets plus dotted overrides.

    cfg = load_train_config("configs/train/pfpascal_r50.yaml", ["optim.lr=0.006"])

Sections: `moco` (`models.moco.MoCoConfig`: arch, K, m, T, v2 head, split-BN k, loss weight lambda_moco),
`cycle` (`models.cycle.CycleConfig`: pixel branch, fixes, loss weight lambda_cyc), `image_data` (ImageNet
ImageFolder or the demo folder), `pixel_data` (benchmark, split, root: named explicitly; split "test" is
the paper's transductive use and is labelled as such in the run name and config), `optim`, `checkpoint`,
`log`, `init`, and the run-level keys below. Batch sizes are per process (rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from configs.runtime import UserError
from configs.schema import load_config
from configs.validate import at_least, check_non_negative, check_positive
from models.cycle import CycleConfig
from models.moco import MoCoConfig


@dataclass
class ImageDataConfig:
    """Image-level branch data: an ImageFolder (labels ignored) seen as two augmented views."""

    source: Literal["imagefolder", "demo", "none"] = "imagefolder"  # demo = data.demo.demo_imagefolder();
    #                                    none: no image stream (pixel branch only, moco.loss_weight 0; an
    #                                    epoch is then one pass over the pairs)
    root: str = "../ImageNet2012/train"  # ImageFolder root when source == imagefolder
    aug: Literal["v1", "v2"] = "v1"      # MoCo v1 augmentation (paper) or v2 ("aug_plus")
    image_size: int = 224


@dataclass
class PixelDataConfig:
    """Pixel-level branch data: unlabelled pairs of one benchmark split, resized to S x S."""

    dataset: str = "pfpascal"            # a key of data.DATASETS: pfpascal, pfwillow, spair, demo
    split: Literal["trn", "val", "test"] = "trn"  # "test" = transductive (the released scripts' default)
    root: Optional[str] = None           # folder holding PF-PASCAL/ ...; None = $DATASETS or ./Datasets_SCOT
    image_size: int = 224                # S; the cycle loss is expressed at cycle.loss_reference_size
    honour_flip: bool = True             # PF-PASCAL trn `flip` column
    drop_test_overlap: bool = False      # drop trn pairs that share an image with the test split

    @property
    def transductive(self) -> bool:
        return self.split == "test"


@dataclass
class OptimConfig:
    """SGD with a per-iteration LR array (step schedule of the paper, or cosine)."""

    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["step", "cosine"] = "step"
    milestones: list[int] = field(default_factory=lambda: [5, 10, 15])  # epochs, step schedule
    gamma: float = 0.1
    warmup_epochs: float = 0.0           # cosine only
    final_lr: float = 0.0                # cosine only
    clip_grad_norm: Optional[float] = None  # total-norm clipping of the summed gradient (not in the paper)
    clip_grad_norm_per_term: Optional[float] = None  # clip each loss term's gradient to this norm, then sum


@dataclass
class CheckpointConfig:
    every_steps: int = 5000              # also at every epoch end and at the end of the run
    keep_last: int = 3                   # step_XXXXXXX.pth files kept (last.pth always)


@dataclass
class LogConfig:
    interval: int = 20                   # steps between metrics.jsonl lines
    vis_interval: int = 5000             # steps between pixel-branch PNGs (0 = never)
    tensorboard: bool = True
    progress: bool = True                # tqdm bar on rank 0


@dataclass
class InitConfig:
    """Initial weights of both encoders (and the queue when the checkpoint has one)."""

    kind: Literal["checkpoint", "random", "timm"] = "checkpoint"  # timm: moco.arch's published weights
    checkpoint: str = "pretrained_models/moco.pth.tar"  # MoCo, torchvision or our checkpoint file
    load_queue: bool = True              # MoCo checkpoints carry a queue; False = seeded re-initialisation


@dataclass
class TrainConfig:
    name: str = ""                       # run name; "" = the preset's file name (+ "_transductive")
    seed: int = 0
    epochs: int = 20
    steps_per_epoch: Optional[int] = None  # cap (tests, demo); None = images per rank // batch_size
    max_steps: Optional[int] = None      # stop after this many steps in total (schedule unchanged)
    batch_size: int = 32                 # ImageNet pairs of views per rank
    pair_batch_size: int = 32            # benchmark pairs per rank
    num_workers: int = 2                 # loader workers per rank
    amp: Literal["off", "bf16", "fp16"] = "off"   # autocast on CUDA (bf16 also on CPU)
    channels_last: bool = False          # CUDA memory format
    fast: bool = False                   # allow TF32 on CUDA (default: full float32, recorded in run.json)
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    cycle: CycleConfig = field(default_factory=CycleConfig)
    image_data: ImageDataConfig = field(default_factory=ImageDataConfig)
    pixel_data: PixelDataConfig = field(default_factory=PixelDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "pair_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_size % self.moco.bn_splits or self.pair_batch_size % self.moco.bn_splits:
            raise ValueError(f"batch_size {self.batch_size} and pair_batch_size {self.pair_batch_size} "
                             f"must be multiples of moco.bn_splits={self.moco.bn_splits}")
        if self.checkpoint.keep_last < 1 or self.checkpoint.every_steps < 1 or self.log.interval < 1:
            raise ValueError("checkpoint.keep_last, checkpoint.every_steps and log.interval must be >= 1")

    def run_name(self, preset: str | Path | None = None) -> str:
        """`name`, else the preset's stem (or "train"); "_transductive" appended for split == test."""
        base = self.name or (Path(preset).stem if preset else "train")
        if self.pixel_data.transductive and "transductive" not in base:
            base += "_transductive"
        return base


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML preset (with `_base_` inheritance) + dotted overrides -> TrainConfig (UserError on bad keys and
    on values that cannot be right: `check_train_settings`)."""
    cfg = load_config(TrainConfig, path, list(overrides))
    check_train_settings(cfg, overrides, str(path) if path else "")
    return cfg


def check_train_settings(cfg: TrainConfig, overrides: list[str] | tuple[str, ...] = (),
                         preset: str = "") -> None:
    """Refuse numbers that cannot be right before any work: NaN/inf or negative rates, no steps, ..."""
    given = {item.partition("=")[0] for item in overrides}
    rules = {"optim.lr": check_non_negative, "optim.final_lr": check_non_negative,
             "optim.momentum": check_non_negative, "optim.weight_decay": check_non_negative,
             "optim.gamma": check_positive, "optim.warmup_epochs": check_non_negative,
             "optim.clip_grad_norm": check_positive, "optim.clip_grad_norm_per_term": check_positive,
             "moco.loss_weight": check_non_negative, "cycle.loss_weight": check_non_negative,
             "max_steps": at_least(1), "num_workers": at_least(0),
             "steps_per_epoch": at_least(1), "image_data.image_size": at_least(16),
             "pixel_data.image_size": at_least(16), "moco.temperature": check_positive}
    for key, rule in rules.items():
        value = _dotted(cfg, key)
        if value is not None:
            rule(key, value, "command line" if key in given else preset or "config")
    if cfg.image_data.source == "none" and cfg.moco.loss_weight != 0:
        raise UserError("image_data.source=none leaves the MoCo branch without images: set "
                        "moco.loss_weight=0")


def _dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part, None)
    return cfg

