"""Runtime plumbing: atomic writes, device resolution, one-line CLI errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from configs.runtime import (
    UserError,
    atomic_torch_save,
    atomic_write_json,
    init_distributed,
    resolve_device,
    write_run_metadata,
)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pth")
    assert torch.load(tmp_path / "c.pth", weights_only=True)["w"].sum() == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["c.pth", "r.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "keep.pth"
    atomic_torch_save({"v": 1}, target)
    with pytest.raises((AttributeError, TypeError, __import__("pickle").PicklingError)):
        atomic_torch_save({"bad": lambda: 0}, target)  # lambdas cannot be pickled
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pth"]


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            resolve_device("cuda")


def test_single_process_distributed_and_metadata(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    path = write_run_metadata(tmp_path, {"a": 1})
    text = path.read_text()
    assert "git_sha" in text and "torch" in text and "a: 1" in text


def test_run_cli_prints_one_line(tmp_path):
    code = ("from configs.runtime import run_cli, UserError\n"
            "def main(argv):\n    raise UserError('missing folder X (run: bash scripts/x.sh)')\n"
            "run_cli(main)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: missing folder X (run: bash scripts/x.sh)"
