"""Builders shared by several test modules (import as `from helpers import ...`; tests/ is on sys.path):
the released cycle config, an in-memory dataset, official-layout dataset fixtures (PF-PASCAL, SPair-71k,
PF-WILLOW) written into a folder, the tiny training run's settings, and the CLI checks (one-line errors,
the evaluation CLI run in-process)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from data.pfpascal import PFPASCAL_CLASSES
from data.pfwillow import HEADER
from models.cycle import CycleConfig
from models.sinkhorn import cosine_similarity, ot_votes
from models.transfer import receptive_field_boxes
from training.config import load_train_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}  # for subprocesses run from REPO


def assert_one_line_error(code: int | None, err: str, needle: str = "", alone: bool = True) -> None:
    """A CLI failed as promised: non-zero status, no traceback, its last stderr line `error: ...` holding
    `needle` and the only error line; `alone`: nothing else on stderr either (else log lines may precede)."""
    lines = err.strip().splitlines()
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], err
    assert sum("error" in line.lower() for line in lines) == 1, err
    assert not alone or len(lines) == 1, err


CLI_LOGGERS = ("train", "eval", "data", "search", "match")


def run_cli_captured(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A CLI's `main` in-process through `run_cli`, as a user starts it: (exit status, stdout, stderr). The
    project's loggers are first rebound to this test's captured stderr (they keep the first stream)."""
    from configs.runtime import run_cli

    for name in CLI_LOGGERS:
        logging.getLogger(name).handlers.clear()
    with pytest.raises(SystemExit) as done:
        run_cli(main, argv)
    out = capsys.readouterr()
    return int(done.value.code), out.out, out.err


def run_eval_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`validation_and_test/test.py` in-process (`run_cli_captured`)."""
    from validation_and_test.test import main

    return run_cli_captured(main, argv, capsys)


def hold_lock(folder: Path) -> int:
    """Hold `folder/.lock` as another run would (an flock on a separate open file, which conflicts with the
    code's own even in this process); close the returned descriptor to let go."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getppid()} {socket.gethostname()}\n".encode())
    return fd


def original_cycle_config(**changes: Any) -> CycleConfig:
    """The released code's cycle switches, read from their only home (`configs/train/original.yaml`, loaded
    with its `_base_` chain as training loads it), then `changes`."""
    return dataclasses.replace(load_train_config(REPO / "configs/train/original.yaml").cycle, **changes)


class ListDataset(torch.utils.data.Dataset):
    """The data layer's sample contract (`data.registry.PairDataset`), built in memory from samples."""

    def __init__(self, samples: list[dict[str, Any]], name: str = "pfwillow", default_thres: str = "bbox",
                 split: str = "test"):
        self.samples, self.name, self.default_thres, self.split = samples, name, default_thres, split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]

    def check_thres(self, thres: str) -> str:
        return self.default_thres if thres == "auto" else thres



# ------------------------------------------------------------------------------------------ PF-PASCAL
NAN = np.nan
# image -> (class, kps K x 2 with NaN rows, bbox)
MATS = {
    "2008_000001": ("car", [[10, 11], [NAN, NAN], [30, 31], [40, 41]], [5, 6, 50, 45]),
    "2008_000002": ("car", [[12, 13], [22, 23], [NAN, NAN], [42, 43]], [7, 8, 55, 48]),
    "2008_000003": ("car", [[NAN, NAN], [NAN, NAN], [25, 26], [NAN, NAN]], [1, 1, 30, 30]),
    "2008_000004": ("car", [[1, 2], [3, 4], [5, 6]], [0, 0, 9, 9]),  # K = 3: mismatch with the others
}


def write_pascal(root: Path) -> Path:
    """An official-layout PF-PASCAL under `root` (grey images, `MATS` annotations, test/val/trn lists)."""
    folder = root / "PF-PASCAL"
    (folder / "JPEGImages").mkdir(parents=True)
    for stem, (cls, kps, bbox) in MATS.items():
        Image.fromarray(np.full((48, 64, 3), 100, np.uint8)).save(folder / "JPEGImages" / f"{stem}.jpg")
        (folder / "Annotations" / cls).mkdir(parents=True, exist_ok=True)
        savemat(folder / "Annotations" / cls / f"{stem}.mat",
                {"kps": np.array(kps, dtype=np.float64), "bbox": np.array([bbox], dtype=np.float64)})
    car = PFPASCAL_CLASSES.index("car") + 1
    path = "PF-dataset-PASCAL/JPEGImages/{}.jpg"
    tables = {
        "test": (["source_image", "target_image", "class", "XA", "YA", "XB", "YB"],
                 [[path.format("2008_000001"), path.format("2008_000002"), car, "10;40", "11;41", "12;42",
                   "13;43"]]),
        "val": (["source_image", "target_image", "class", "flip"],
                [[path.format("2008_000002"), path.format("2008_000001"), car, 0]]),
        "trn": (["source_image", "target_image", "class", "flip"],
                [[path.format("2008_000001"), path.format("2008_000002"), car, 0],
                 [path.format("2008_000001"), path.format("2008_000002"), car, 1],
                 [path.format("2008_000002"), path.format("2008_000003"), car, 1]]),
    }
    for split, (header, rows) in tables.items():
        with (folder / f"{split}_pairs.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    return root


# ------------------------------------------------------------------------------------------ SPair-71k
def pair_json(line: str, src: str, trg: str, cat: str, k: int = 3, **override) -> dict:
    """One SPair pair annotation (source 60x40, target 50x40, `k` keypoints), then `override`."""
    ann = {"pair_id": int(line[:6]), "filename": line, "src_imname": f"{src}.jpg", "trg_imname": f"{trg}.jpg",
           "src_imsize": [60, 40, 3], "trg_imsize": [50, 40, 3], "src_bndbox": [1, 2, 50, 30],
           "trg_bndbox": [3, 4, 40, 35], "category": cat, "src_pose": "Left", "trg_pose": "Right",
           "src_kps": [[5 + i, 6 + i] for i in range(k)], "trg_kps": [[10 + i, 7 + 2 * i] for i in range(k)],
           "kps_ids": [str(i) for i in range(k)], "mirror": 0, "viewpoint_variation": 2, "scale_variation": 1,
           "truncation": 3, "occlusion": 0}
    ann.update(override)
    return ann


def write_spair(root: Path, pairs: list[tuple[str, str, str, dict]], split: str = "test",
                trailing_newline: bool = True) -> Path:
    """An official-layout SPair-71k under `root` holding `pairs` (layout line, src, trg, annotation)."""
    folder = root / "SPair-71k"
    for line, src, trg, ann in pairs:
        cat = line.split(":")[1]
        for stem, (w, h) in ((src, (60, 40)), (trg, (50, 40))):
            path = folder / "JPEGImages" / cat / f"{stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
        ann_path = folder / "PairAnnotation" / split / f"{line}.json"
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        ann_path.write_text(json.dumps(ann))  # no trailing newline, as the official files
    layout = folder / "Layout" / "large" / f"{split}.txt"
    layout.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(p[0] for p in pairs)
    layout.write_text(text + ("\n" if trailing_newline else ""))
    return root


def spair_pairs(specs: list[tuple[str, str, str]]) -> list[tuple[str, str, str, dict]]:
    """(src, trg, category) triples -> `write_spair` entries with numbered layout lines."""
    out = []
    for n, (src, trg, cat) in enumerate(specs, start=1):
        line = f"{n:06d}-{src}-{trg}:{cat}"
        out.append((line, src, trg, pair_json(line, src, trg, cat)))
    return out


# ------------------------------------------------------------------------------------------ PF-WILLOW
def write_willow(root: Path, rows: list[list], images: dict[str, tuple[int, int]]) -> Path:
    """An official-layout PF-WILLOW under `root`: grey images of the given (w, h) and `test_pairs.csv`."""
    folder = root / "PF-WILLOW"
    for name, (w, h) in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / name)
    with (folder / "test_pairs.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return root


def willow_row(a: str, b: str, seed: int) -> list:
    """A `test_pairs.csv` row for images `a` -> `b` with seeded keypoints in [5, 95]."""
    rng = np.random.default_rng(seed)
    return [f"PF-dataset/{a}", f"PF-dataset/{b}"] + [f"{v:.3f}" for v in rng.uniform(5, 95, 40)]


# ------------------------------------------------------------------------------------------ training runs
def tiny_overrides(image_root: Path, init: Path | None, queue: int = 16) -> list[str]:
    """`training/train.py` overrides for a tiny run (32 px, 2 epochs of 3 steps, checkpoint every 2)."""
    return ["image_data.source=imagefolder", f"image_data.root={image_root}", "image_data.image_size=32",
            "pixel_data.image_size=32", "cycle.patch_size=16", "batch_size=4", "pair_batch_size=2",
            "epochs=2", "steps_per_epoch=3", f"moco.queue_size={queue}", "checkpoint.every_steps=2",
            "checkpoint.keep_last=2",
            "log.interval=1", "log.vis_interval=0", "log.tensorboard=false", "log.progress=false",
            *(["init.kind=checkpoint", f"init.checkpoint={init}"] if init else ["init.kind=random"])]


def assert_same_tensors(a, b, where: str = "") -> None:
    """Recursive exact equality of checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def write_small_willow(root: Path, n_rows: int = 3) -> Path:
    """A PF-WILLOW of `n_rows` car(G) pairs over four seeded-noise 120x100 images (keypoints inside them)."""
    names = [f"car(G)/{k}.png" for k in "abcd"]
    rows = [willow_row(names[i % 4], names[(i + 1) % 4], i) for i in range(n_rows)]
    write_willow(root, rows, {name: (120, 100) for name in names})
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(root / "PF-WILLOW" / name)
    return root


# ------------------------------------------------------------------ CUDA-path twins (test_cuda_*)
def real_like_votes(seed: int, src_grid=(19, 25), trg_grid=(25, 19), jump: int = 16, dim: int = 64):
    """OT votes (Ns, Nt) of random features on two hyperpixel grids, with their centres and sizes (W, H)."""
    g = torch.Generator().manual_seed(seed)
    (_, src_c), (_, trg_c) = (receptive_field_boxes(h, w, jump, 43) for h, w in (src_grid, trg_grid))
    src_f = torch.randn(len(src_c), dim, generator=g)
    trg_f = torch.randn(len(trg_c), dim, generator=g)
    sim = cosine_similarity(src_f, trg_f)
    mu = torch.full((len(src_c),), 1.0 / len(src_c))
    nu = torch.full((len(trg_c),), 1.0 / len(trg_c))
    votes = ot_votes(sim, mu, nu, eps=0.05, exp2=0.5)
    sizes = ((src_grid[1] * jump, src_grid[0] * jump), (trg_grid[1] * jump, trg_grid[0] * jump))
    return votes, src_c, trg_c, sizes


def small_model(moco_temperature: float = 0.07, **cycle):
    """ResNet-18 MoCo + cycle at random init. The bf16 comparisons use smooth temperatures (MoCo 1.0, cycle
    0.1) and random crop centres: at the paper's (0.07, 0.0007) the softmaxes act on random-init features as
    near-argmaxes, which any rounding flips, so only finiteness is asserted there."""
    from models.contrastive import ContrastiveCorrespondence
    from models.cycle import CycleConfig
    from models.moco import MoCoConfig

    torch.manual_seed(0)
    return ContrastiveCorrespondence(MoCoConfig(arch="resnet18", dim=16, queue_size=32,
                                                temperature=moco_temperature),
                                     CycleConfig(patch_size=32, **cycle), torch.Generator().manual_seed(1))


def bf16_step_data(device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """A well-conditioned training step for bf16 comparisons: 8 MoCo images of 32 px and 2 cycle pairs of
    64 px. (With 2 MoCo images layer4's batch norm normalises 2 values per channel, 1/std is huge and a
    2^-8 perturbation of the inputs alone turns the float32 gradient by ~90 degrees.)"""
    g = torch.Generator().manual_seed(0)
    shapes = {"im_q": (8, 3, 32, 32), "im_k": (8, 3, 32, 32), "src": (2, 3, 64, 64), "trg": (2, 3, 64, 64)}
    return {k: torch.randn(*shape, generator=g).to(device or "cpu") for k, shape in shapes.items()}


def loss_and_grad(model, data, amp: torch.dtype | None, channels_last: bool = False,
                   device: torch.device | None = None):
    """One forward + backward as the trainer runs it (autocast when `amp`); returns (outputs, flat grad)."""
    model.zero_grad(set_to_none=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        data = {k: v.contiguous(memory_format=torch.channels_last) for k, v in data.items()}
    device = device or torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(5)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        out = model(data["im_q"], data["im_k"], data["src"], data["trg"], gen)
    out["loss"].backward()
    grad = torch.cat([p.grad.flatten() for p in model.encoder_q.parameters() if p.grad is not None])
    return out, grad


BF16_UNIT_ROUNDOFF = 2.0 ** -8  # 8 significant bits: round-to-nearest moves a value by at most 2^-8 relative


class _RetainIntermediates(TorchFunctionMode):
    """Retains the gradient of every floating-point tensor an op returns (every value autocast may round)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if (isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point() and t.dim() > 0
                    and id(t) not in self.kept):
                with contextlib.suppress(RuntimeError):  # views of leaves, tensors modified in place
                    t.retain_grad()
                    self.kept[id(t)] = t
        return out


def bf16_loss_sigma(model, data, device: torch.device | None = None):
    """A float32 step (`loss_and_grad`) and the first-order standard deviation of its loss if bf16 rounded
    every input, parameter and intermediate tensor independently: a rounding error uniform in [-u, u]
    relative (u = 2^-8) has variance u^2 / 3, so sigma = u / sqrt(3) * sqrt(sum over values (t dL/dt)^2).
    It covers every value with a gradient: the query side, the pixel-level branch and the inputs. The MoCo
    key encoder (run without gradients) and the key queue (a buffer) are not in the sum, so sigma
    understates bf16's effect on the MoCo term; the 6-sigma bound of the tests absorbs that (the loss moved
    0.3 to 0.45 sigma in bf16 here), but the key side is not derived. Returns (outputs, flat grad, sigma)."""
    data = {k: v.clone().requires_grad_() for k, v in data.items()}
    mode = _RetainIntermediates()
    with mode:
        out, grad = loss_and_grad(model, data, None, device=device)
    values = [*mode.kept.values(), *data.values(), *model.parameters()]
    total = sum(float((t.detach() * t.grad).square().sum()) for t in values if t.grad is not None)
    return out, grad, BF16_UNIT_ROUNDOFF / math.sqrt(3) * math.sqrt(total)


def perturb_like_bf16(model, seed: int) -> list:
    """Float32 stand-in for bf16 rounding: every conv and linear weight, and every conv and linear input in
    forward, times (1 +- u), signs at random (each value moved by the most round-to-nearest can move it).
    Returns the hook handles."""
    g = torch.Generator().manual_seed(seed)

    def jitter(t: torch.Tensor) -> torch.Tensor:
        signs = torch.randint(0, 2, t.shape, generator=g).to(t.device, t.dtype) * 2 - 1
        return t * (1 + BF16_UNIT_ROUNDOFF * signs)

    handles = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            with torch.no_grad():
                m.weight.copy_(jitter(m.weight))
            handles.append(m.register_forward_pre_hook(lambda mod, args: (jitter(args[0]), *args[1:])))
    return handles
