"""Run-folder rules (training/run_dir.py): a finished run is never overwritten or mixed with another,
`--resume auto` takes the newest valid checkpoint of this run and never discards a run it cannot resume,
`last.pth` is reconciled after a kill during the final write, leftovers are removed, `keep_last` holds,
non-finite weights are never saved, and a folder another process trains into is refused (its lock)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from helpers import ENV, REPO, assert_same_tensors, tiny_overrides

from configs.runtime import UserError, release_output_dir
from training.checkpoint import build_checkpoint, save_checkpoint, step_checkpoints
from training.run_dir import (
    RUN_ID_FILE,
    check_run_folder,
    newest_valid_checkpoint,
    prepare_run_folder,
)
from training.train import main as train_main

LOG = logging.getLogger("test_run_folder")
TRAIN_ARGS = ["--config", "configs/demo.yaml", "--device", "cpu"]


def tiny_checkpoint(step: int, run_id: str | None, poison: bool = False) -> dict:
    """A real checkpoint dict of a tiny model (weights NaN when `poison`)."""
    from models.contrastive import ContrastiveCorrespondence
    from models.cycle import CycleConfig
    from models.moco import MoCoConfig

    torch.manual_seed(step)
    model = ContrastiveCorrespondence(MoCoConfig(arch="resnet18", queue_size=8), CycleConfig(patch_size=16),
                                      generator=torch.Generator().manual_seed(0))
    if poison:
        with torch.no_grad():
            model.encoder_q.conv1.weight.fill_(float("nan"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = build_checkpoint(model, "resnet18", opt, None, 0, step, {"seed": 0})
    return {**ckpt, "run_id": run_id} if run_id else ckpt


def test_fresh_run_refuses_a_folder_holding_a_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match="already holds a run.*--resume auto.*--overwrite"):
        check_run_folder(tmp_path, None, overwrite=False)
    check_run_folder(tmp_path, "auto", overwrite=False)  # continuing is allowed
    check_run_folder(tmp_path / "new", None, overwrite=False)  # absent is fine
    with pytest.raises(UserError, match="exclude each other"):
        check_run_folder(tmp_path, "auto", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_run_folder(tmp_path / "file", None, overwrite=False)


def test_overwrite_moves_the_old_run_aside(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_0000003.pth").write_bytes(b"old")
    folder = prepare_run_folder(run, None, True, 2, LOG)
    assert folder.resume_path is None and sorted(p.name for p in run.iterdir()) == [".lock", RUN_ID_FILE]
    release_output_dir(run)
    assert list(run.iterdir()) == [run / RUN_ID_FILE]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["checkpoints"]  # no lock left
    assert (aside[0] / "checkpoints" / "step_0000003.pth").read_bytes() == b"old"


def test_resume_auto_takes_newest_valid_checkpoint_of_this_run(tmp_path, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (tmp_path / RUN_ID_FILE).write_text("mine\n")
    for step in (2, 4):
        save_checkpoint(tiny_checkpoint(step, "mine"), ckpt_dir, keep_last=5)
    torch.save(tiny_checkpoint(9, "other"), ckpt_dir / "step_0000009.pth")  # a stale branch of another run
    (ckpt_dir / "step_0000010.pth").write_bytes(b"truncated")  # unreadable
    torch.save(tiny_checkpoint(12, "mine", poison=True), ckpt_dir / "step_0000012.pth")  # diverged
    torch.save(tiny_checkpoint(2, "mine"), ckpt_dir / "last.pth")  # stale last.pth
    (ckpt_dir / ".last.pth.abc123.tmp").write_bytes(b"half")  # a killed write
    assert newest_valid_checkpoint(ckpt_dir, "mine").found == (ckpt_dir / "step_0000004.pth", 4)

    folder = prepare_run_folder(tmp_path, "auto", False, keep_last=2, log=LOG)
    release_output_dir(tmp_path)
    assert folder.resume_path == ckpt_dir / "step_0000004.pth" and folder.run_id == "mine"
    assert (ckpt_dir / "last.pth").read_bytes() == (ckpt_dir / "step_0000004.pth").read_bytes()
    assert not list(ckpt_dir.glob("*.tmp"))
    assert [p.name for p in step_checkpoints(ckpt_dir)] == ["step_0000002.pth", "step_0000004.pth"]
    assert sorted(p.name for p in ckpt_dir.glob("*.invalid")) == [
        "step_0000009.pth.invalid", "step_0000010.pth.invalid", "step_0000012.pth.invalid"]


def test_corrupt_step_file_beside_a_good_last_is_set_aside(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    (tmp_path / RUN_ID_FILE).write_text("mine\n")
    for step in (2, 4):
        save_checkpoint(tiny_checkpoint(step, "mine"), ckpt_dir, keep_last=5)
    (ckpt_dir / "step_0000004.pth").write_bytes(b"corrupt")  # last.pth (step 4) is still good
    folder = prepare_run_folder(tmp_path, "auto", False, keep_last=1, log=LOG)
    release_output_dir(tmp_path)
    assert folder.resume_path == ckpt_dir / "last.pth"
    assert (ckpt_dir / "step_0000004.pth.invalid").read_bytes() == b"corrupt"
    assert [p.name for p in step_checkpoints(ckpt_dir)] == ["step_0000002.pth"]  # kept: keep_last=1 counts it


@pytest.mark.parametrize("damage, needle", [
    ("empty", "last.pth: the file is empty"),
    ("truncated", "last.pth with weights_only=True"),
    ("other_run", "belongs to another run (theirs)"),
])
def test_resume_auto_never_discards_a_run_it_cannot_resume(tmp_path, damage, needle):
    ckpt_dir = tmp_path / "checkpoints"
    (tmp_path / RUN_ID_FILE).write_text("mine\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    save_checkpoint(tiny_checkpoint(2, "theirs" if damage == "other_run" else "mine"), ckpt_dir, keep_last=1)
    last = ckpt_dir / "last.pth"
    if damage != "other_run":
        (ckpt_dir / "step_0000002.pth").unlink()
        last.write_bytes(b"" if damage == "empty" else last.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as err:
        prepare_run_folder(tmp_path, "auto", False, keep_last=1, log=LOG)
    release_output_dir(tmp_path)
    message = str(err.value)
    assert needle in message and "nothing was changed" in message and "--overwrite" in message
    assert "\n" not in message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_binary_run_id_is_a_one_line_error(tmp_path):
    (tmp_path / RUN_ID_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="run_id is not a run id.*--overwrite"):
        prepare_run_folder(tmp_path, "auto", False, keep_last=1, log=LOG)
    release_output_dir(tmp_path)


# a process that holds a folder's lock as a run does, until it is killed
HOLD_LOCK = """
import sys, time
from configs.runtime import lock_folder, run_cli
def main(argv):
    lock_folder(argv[0], "run folder")
    print("locked", flush=True)
    time.sleep(120)
run_cli(main, sys.argv[1:])
"""


@contextmanager
def live_run(folder):
    """A second process holding `folder`'s lock (as a run training into it); yields the process."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_a_folder_in_use_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    with live_run(run) as holder:
        for resume, overwrite in (("auto", False), (None, True)):
            with pytest.raises(UserError, match=f"{run} is in use by another run \\(pid {holder.pid} on"):
                prepare_run_folder(run, resume, overwrite, keep_last=1, log=LOG)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]  # not moved aside
        holder.kill()  # kill -9: no exit handler runs
        holder.wait()
    assert (run / ".lock").read_text().split()[0] == str(holder.pid)  # the file is left, but stale
    prepare_run_folder(run, "auto", False, keep_last=1, log=LOG)  # taken over
    assert (run / ".lock").read_text().split()[0] == str(os.getpid())
    release_output_dir(run)
    assert not (run / ".lock").exists()


def test_sigterm_removes_the_lock(tmp_path):
    """torchrun stops the other processes of a failed run with SIGTERM: their exit handlers still run."""
    with live_run(tmp_path) as holder:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=60) == 128 + signal.SIGTERM
    assert not (tmp_path / ".lock").exists()  # the handlers ran before the process exited


def test_resume_auto_with_nothing_says_it_starts_fresh(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=LOG.name):
        folder = prepare_run_folder(tmp_path / "run", "auto", False, 2, LOG)
    release_output_dir(tmp_path / "run")
    assert folder.resume_path is None and "starting a fresh run" in caplog.text
    assert (tmp_path / "run" / RUN_ID_FILE).read_text().strip() == folder.run_id


def test_non_finite_weights_are_never_saved(tmp_path):
    with pytest.raises(UserError, match="refusing to save.*NaN"):
        save_checkpoint(tiny_checkpoint(1, "x", poison=True), tmp_path, keep_last=2)
    assert not list(tmp_path.iterdir())


# a run killed by SIGKILL in the middle of its final last.pth write (after step_0000006.pth is complete)
KILL_AT_FINAL_WRITE = """
import os, signal, sys
from pathlib import Path
import training.checkpoint as ck
original = ck.atomic_torch_save
def dying_save(obj, path):
    if Path(path).name == "last.pth" and obj["step"] == 6:
        (Path(path).parent / ".last.pth.killed.tmp").write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    original(obj, path)
ck.atomic_torch_save = dying_save
from configs.runtime import run_cli
from training.train import main
run_cli(main, sys.argv[1:])
"""


def test_kill_during_final_last_write_then_resume_auto(tmp_path, image_root):
    out = tmp_path / "run"
    overrides = tiny_overrides(image_root, None)
    argv = [*TRAIN_ARGS, "--output-dir", str(out), *overrides]
    proc = subprocess.run([sys.executable, "-c", KILL_AT_FINAL_WRITE, *argv], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt_dir = out / "checkpoints"
    final = (ckpt_dir / "step_0000006.pth").read_bytes()
    assert torch.load(ckpt_dir / "last.pth", weights_only=True)["step"] == 4  # stale: the kill's damage
    assert (ckpt_dir / ".last.pth.killed.tmp").exists()

    assert train_main([*argv, "--resume", "auto"]) == 0
    assert (ckpt_dir / "last.pth").read_bytes() == final  # bit-identical to the uninterrupted final write
    a = torch.load(ckpt_dir / "last.pth", weights_only=True)
    b = torch.load(ckpt_dir / "step_0000006.pth", weights_only=True)
    assert a["step"] == 6 and a["run_id"] == (out / RUN_ID_FILE).read_text().strip()
    assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    assert not list(ckpt_dir.glob("*.tmp"))
    assert [p.name for p in step_checkpoints(ckpt_dir)] == ["step_0000004.pth", "step_0000006.pth"]

    # the finished run is protected: a fresh start into it is refused, --overwrite moves it aside
    with pytest.raises(UserError, match="already holds a run"):
        train_main(argv)
    assert (ckpt_dir / "last.pth").read_bytes() == final


def test_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tiny_checkpoint(1, "x"), tmp_path, keep_last=1)
    finally:
        os.umask(old)
    assert (tmp_path / "last.pth").stat().st_mode & 0o777 == 0o644
