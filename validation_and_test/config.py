"""Evaluation settings (`EvalConfig`), the per-dataset presets in `configs/eval/`, and the command-line
flags shared by `test.py` and `beamsearch.py` (`eval_parent_parser`, DINO-style parent parser).

Precedence: dataclass defaults <- `configs/eval/<dataset>.yaml` (or `--config`) <- command-line flags.
A preset's `preset_backbone` names the architecture its hyperpixel ids were chosen for; using another
backbone without explicit ids is an error (ids mean different blocks in another ResNet); a timm ResNet with
the same blocks (`timm:resnet50.a1_in1k`) shares the ids of its torchvision twin.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Optional

from configs import CONFIG_DIR
from configs.runtime import UserError
from configs.schema import build_config, load_yaml
from configs.validate import check_values
from data import DATASETS
from models.backbone_loader import check_backbone_name
from models.weights import ARCH_BLOCKS

EVAL_PRESET_DIR = CONFIG_DIR / "eval"


@dataclass
class EvalConfig:
    """Everything that changes an evaluation's numbers or outputs; written to results.json."""

    dataset: str = "pfpascal"
    datapath: Optional[str] = None  # None: $DATASETS else ./Datasets_SCOT (demo: its cache folder)
    split: Literal["trn", "val", "test"] = "test"
    pfpascal_kps: Literal["mat", "csv"] = "mat"  # csv: test_pairs.csv columns (thres img; not comparable)
    backbone: str = "auto"  # auto (the checkpoint's architecture), a key of ARCH_BLOCKS, or timm:NAME
    weights: str = "imagenet"  # imagenet (timm: the model's published weights) | random | checkpoint path
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
    similarity: Literal["factorised", "dense"] = "factorised"  # dense: (N, D) hyperpixel product (reference)
    matcher: Literal["scot", "nn", "nn-mutual"] = "scot"  # nn: nearest neighbour on the cosine
    feature_cache: Optional[str] = None  # folder of the on-disk per-image feature cache (None: off)
    hpf: bool = False  # HPF mode: downscale-only resize, margin pruning, RHM on max(0, cos)^3 votes
    long_side: int = 300
    max_pairs: Optional[int] = None
    device: str = "auto"
    seed: int = 0
    fast: bool = False  # TF32 on CUDA, bf16 backbone + CAM where bf16 is native (changes numbers; recorded)
    layout: Literal["auto", "channels_last", "contiguous"] = "auto"  # network passes' memory layout
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
        check_backbone_name(self.backbone)

    @property
    def solver(self) -> str:
        if self.sinkhorn_solver != "auto":
            return self.sinkhorn_solver
        return "scot" if self.sinkhorn_iters == 1 else "log"


def preset_path(dataset: str) -> Path:
    return EVAL_PRESET_DIR / f"{dataset}.yaml"


# ------------------------------------------------------------------------------------------- flags
CONFIG_KEYS = tuple(f.name for f in fields(EvalConfig))


def parse_ids(text: str) -> list[int]:
    """Hyperpixel ids from the command line, in the order given: '2,12,13,15' (also '(2, 12, 13, 15)' or
    '2 12 13 15') and ranges '0-3', '2,5,7-9'. Range checks and duplicates: `backbone.validate_ids`."""
    out: list[int] = []
    try:
        for part in text.strip().strip("()[]").replace(",", " ").split():
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if last < first:
                raise ValueError
            out.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ids like 2,12,13,15 or ranges like 0-3, got {text!r}"
                                         ) from None
    return out


def eval_parent_parser(data_flags: bool = True) -> argparse.ArgumentParser:
    """Flags shared by test.py, beamsearch.py and match.py (`parents=[...]`; match.py: `data_flags=False`).
    Defaults are suppressed: only flags given on the command line override the preset (`resolve_config`)."""
    p = argparse.ArgumentParser(add_help=False)
    d = argparse.SUPPRESS
    if data_flags:
        data = p.add_argument_group("data")
        data.add_argument("--dataset", choices=sorted(DATASETS), default=d,
                          help="benchmark (default pfpascal)")
        data.add_argument("--datapath", default=d, help="folder holding PF-PASCAL/, PF-WILLOW/, SPair-71k/ "
                                                        "(default $DATASETS else ./Datasets_SCOT)")
        data.add_argument("--max-pairs", dest="max_pairs", type=int, default=d,
                          help="first N pairs in split order")
    model = p.add_argument_group("model")
    model.add_argument("--backbone", type=_backbone_flag, default=d,
                       metavar="{auto," + ",".join(ARCH_BLOCKS) + ",timm:NAME}",
                       help="auto: the checkpoint's architecture, else resnet50; timm:NAME: any timm ResNet "
                            "or ViT, e.g. timm:vit_small_patch14_dinov2.lvd142m")
    model.add_argument("--weights", default=d,
                       help="imagenet (torchvision IMAGENET1K_V1; timm: the model's published weights), "
                            "random, or a checkpoint path (MoCo / torchvision / ours / a timm state dict)")
    model.add_argument("--seed", type=int, default=d, help="seed of --weights random")
    match = p.add_argument_group("matching (defaults: the dataset's preset)")
    match.add_argument("--thres", choices=("auto", "img", "bbox"), default=d, help="PCK reference length")
    match.add_argument("--matcher", choices=("scot", "nn", "nn-mutual"), default=d,
                       help="scot: OT + RHM (the settings below); nn: nearest neighbour on the cosine, "
                            "nn-mutual: only mutual nearest neighbours transfer keypoints")
    match.add_argument("--sim", choices=("OTGeo", "OT", "cosGeo", "cos"), default=d,
                       help="matching confidence")
    match.add_argument("--exp1", type=float, default=d, help="cosine power (cos, cosGeo)")
    match.add_argument("--exp2", type=float, default=d, help="OT plan power (0.5 PF, 1.0 SPair)")
    match.add_argument("--eps", type=float, default=d, help="entropic regularisation")
    match.add_argument("--sinkhorn-iters", dest="sinkhorn_iters", type=int, default=d,
                       help="1 = faithful single update; more = converged log-domain solver")
    match.add_argument("--classmap", type=int, choices=(0, 1), default=d, help="1: CAM marginals, 0: uniform")
    match.add_argument("--similarity", choices=("factorised", "dense"), default=d,
                       help="hyperpixel cosine: per-stride Gram matrices (default) or the dense (N, D) "
                            "product (reference)")
    match.add_argument("--hpf", action="store_true", default=d,
                       help="HPF mode: downscale-only resize, margin pruning, RHM on max(0, cos)^3")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d)
    run.add_argument("--fast", action="store_true", default=d,
                     help="TF32 on CUDA; backbone and CAM in bf16 where the device has native bf16 kernels "
                          "(CUDA, AMX, AVX512-BF16) (changes numbers; recorded)")
    run.add_argument("--layout", choices=("auto", "channels_last", "contiguous"), default=d,
                     help="memory layout of the backbone and CAM passes (auto: channels_last on the CPU, "
                          "contiguous elsewhere; recorded)")
    run.add_argument("--feature-cache", dest="feature_cache", default=d,
                     help="folder of an on-disk per-image feature cache (keyed by image, backbone, weights, "
                          "resolution, ids)")
    run.add_argument("--config", default=None, help="YAML preset replacing configs/eval/<dataset>.yaml")
    return p


def _backbone_flag(text: str) -> str:
    try:
        return check_backbone_name(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def resolve_config(args: argparse.Namespace) -> tuple[EvalConfig, str, bool]:
    """(config, preset file, ids given on the command line) from parsed flags named like `EvalConfig`
    keys (absent = not given) and `args.config`."""
    flags = {k: getattr(args, k) for k in CONFIG_KEYS if hasattr(args, k)}
    check_values(flags, "command line")
    config = getattr(args, "config", None)
    if config is not None:
        path = Path(config)
        data = load_yaml(path)
    else:
        path = preset_path(flags.get("dataset", EvalConfig.dataset))
        data = load_yaml(path) if path.is_file() else {}
    check_values(data, str(path))
    data.update(flags)
    return build_config(EvalConfig, data, source=str(path)), str(path), "hyperpixel" in flags


def check_backbone(cfg: EvalConfig, preset: str, ids_given: bool, arch: Optional[str] = None) -> None:
    """A preset's ids belong to `cfg.preset_backbone`: another backbone (flag or the loaded backbone's
    `id_family`) needs explicit ids (ids mean different blocks). timm names are checked once loaded."""
    if ids_given:
        return
    if cfg.backbone not in ("auto", cfg.preset_backbone) and not cfg.backbone.startswith("timm:"):
        raise UserError(f"{preset} holds hyperpixel ids for {cfg.preset_backbone}, not {cfg.backbone}: give "
                        f"--hyperpixel explicitly (ids mean different blocks) or use a {cfg.backbone} preset")
    if arch is not None and arch != cfg.preset_backbone:
        raise UserError(f"{preset} holds hyperpixel ids for {cfg.preset_backbone} but the weights are a "
                        f"{arch}: give --hyperpixel explicitly (e.g. block ids 8-11 of a ViT) or --backbone "
                        f"{cfg.preset_backbone}")
