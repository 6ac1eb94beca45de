"""`bash bench/gpu_check.sh OUT --device cpu --tiny` end to end (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import SHARED_REALDATA
from helpers import REPO


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "out"
    cmd = ["bash", "bench/gpu_check.sh", str(out), "--device", "cpu", "--tiny"]
    if (SHARED_REALDATA / "PF-WILLOW").is_dir():  # real pairs in the parity section when present
        cmd += ["--realdata", str(SHARED_REALDATA)]
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    result = json.loads((out / "gpu_check.json").read_text())
    assert proc.returncode == 0 and result["ok"], proc.stdout[-3000:] + proc.stderr[-3000:]
    sec = result["sections"]
    assert list(sec) == ["tests", "parity", "eval", "train", "tiny"]
    assert sec["tests"]["passed"] > 5 and sec["tests"]["failures"] == 0
    for name, s in sec["parity"]["sets"].items():
        assert s["pairs"] > 0 and s["pck_identical"] == s["pairs"] and s["max_keypoint_diff_px"] == 0.0, name
    assert len(sec["eval"]["runs"]) == 8 and all(r["ms_per_pair"] > 0 for r in sec["eval"]["runs"].values())
    assert sec["eval"]["runs"]["faithful/cache_on/sequential"]["cache_hit_rate"] > 0
    assert set(sec["train"]["runs"]) == {"fp32", "bf16", "bf16+channels_last"}
    assert all(r["images_per_s"] > 0 for r in sec["train"]["runs"].values())
    assert sec["tiny"]["steps_after_resume"] == 25 and sec["tiny"]["finite_loss"]
    table = (out / "gpu_check.txt").read_text()
    assert "PASS" in table and "parity" in table and table in proc.stdout
