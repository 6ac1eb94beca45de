"""End-to-end runs of `training/train.py` in subprocesses (tiny: ResNet-18, 32-px images, a few steps):
SIGKILL after the first checkpoint + `--resume auto` equals an uninterrupted run (every tensor); a 2-process
gloo DDP run; a MoCo-format checkpoint as initialisation; one-line CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ENV, REPO, assert_one_line_error, assert_same_tensors, tiny_overrides

from models.contrastive import ContrastiveCorrespondence
from models.cycle import CycleConfig
from models.moco import MoCoConfig
from models.weights import load_resnet
from training.metrics import read_metrics

TRAIN = [sys.executable, "training/train.py", "--config", "configs/demo.yaml", "--device", "cpu"]


@pytest.fixture(scope="module")
def moco_checkpoint(tmp_path_factory) -> Path:
    """A facebookresearch/moco-format file: `module.encoder_q.*` + queue, no key encoder, epoch/arch keys."""
    torch.manual_seed(123)
    model = ContrastiveCorrespondence(MoCoConfig(arch="resnet18", queue_size=16), CycleConfig(patch_size=16),
                                      generator=torch.Generator().manual_seed(9))
    sd = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("encoder_k.")}
    path = tmp_path_factory.mktemp("pretrained") / "moco.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {}}, path)
    return path


def run_train(out: Path, overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN, "--output-dir", str(out), *extra, *overrides], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, image_root, moco_checkpoint):
    overrides = tiny_overrides(image_root, moco_checkpoint)
    ref = run_train(tmp_path / "ref", overrides)
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([*TRAIN, "--output-dir", str(out), *overrides], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "step_0000002.pth"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert still_running and first.exists(), "the run must be killed after its first checkpoint, mid-run"
    assert not (out / "checkpoints" / "step_0000006.pth").exists()

    resumed = run_train(out, overrides, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr

    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.pth", weights_only=True)
    b = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert a["step"] == b["step"] == 6 and a["epoch"] == b["epoch"] == 2
    assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")  # weights, BN stats, queue, pointer
    assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert int(a["state_dict"]["module.queue_ptr"]) == (6 * 4) % 16
    # the init used the MoCo file (no key encoder in it: copied from encoder_q); the momentum encoder moved
    # by at most 1 - 0.999^6 of the way, so it still equals the file's query weights to ~1e-2
    init = torch.load(moco_checkpoint, weights_only=True)["state_dict"]["module.encoder_q.conv1.weight"]
    key = a["state_dict"]["module.encoder_k.conv1.weight"]
    assert (key - init).abs().max() < 0.1 * init.abs().max()
    report = json.loads((tmp_path / "ref" / "run.json").read_text())["init"]
    assert report["kind"] == "moco" and report["missing"] == [] and report["unexpected"] == []
    assert "encoder_k copied from encoder_q" in report["notes"]

    ref_log, res_log = read_metrics(tmp_path / "ref" / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in res_log] == [1, 2, 3, 4, 5, 6]  # lines past the checkpoint were dropped
    assert [r["loss"] for r in res_log] == pytest.approx([r["loss"] for r in ref_log], rel=1e-6)
    # evaluation reads the trained checkpoint
    net, arch, record = load_resnet("auto", str(out / "checkpoints" / "last.pth"))
    assert arch == "resnet18" and record["kind"] == "ours" and record["step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("branches", [[], ["moco.loss_weight=0"]], ids=["both", "cycle_only"])
def test_two_process_gloo_ddp_run(tmp_path, image_root, branches):
    # cycle_only: layer4 and fc get no gradient, which DDP tolerates only with find_unused_parameters
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "training/train.py", "--config", "configs/demo.yaml", "--device", "cpu", "--output-dir", str(out),
           *tiny_overrides(image_root, None, queue=24), *branches]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    # 16 images / 2 ranks / batch 4 = 2 steps per epoch, 2 epochs; the queue holds keys of both ranks
    assert ckpt["step"] == 4
    assert int(ckpt["state_dict"]["module.queue_ptr"]) == (0 if branches else (4 * 8) % 24)
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["global_batch"] == 8
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_cli_unknown_key_is_one_line_error(tmp_path):
    proc = run_train(tmp_path / "x", ["optim.learning_rate=0.1"])
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stderr, "optim.learning_rate")
