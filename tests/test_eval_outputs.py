"""Evaluation outputs on generated self-pairs (PF-PASCAL layout, CSV keypoints): results.json is strict JSON,
written last and marked complete; a complete folder is not overwritten without --overwrite; files follow the
umask; a full disk is a one-line error leaving no results.json; non-finite weights are named."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import ENV, REPO, assert_one_line_error, run_eval_cli

from configs import runtime
from validation_and_test import run as run_module

FAST = ["--weights", "random", "--backbone", "resnet18", "--hyperpixel", "2,3", "--device", "cpu"]


@pytest.fixture(scope="module")
def self_pairs(tmp_path_factory) -> Path:
    """Two PF-PASCAL images, each matched with itself (CSV keypoints): PCK must be 100 at every alpha."""
    from PIL import Image
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("data")
    images = root / "PF-PASCAL" / "JPEGImages"
    images.mkdir(parents=True)
    rows = ["source_image,target_image,class,XA,YA,XB,YB"]
    for name, pixels in (("cat.jpg", skdata.chelsea()[::4, ::4]), ("coffee.jpg", skdata.coffee()[::4, ::4])):
        Image.fromarray(pixels).save(images / name)
        xs, ys = "20;45;70;90", "15;30;45;60"
        rows.append(f"PF-dataset-PASCAL/JPEGImages/{name},PF-dataset-PASCAL/JPEGImages/{name},8,{xs},{ys},{xs},{ys}")
    (root / "PF-PASCAL" / "test_pairs.csv").write_text("\n".join(rows) + "\n")
    return root


def run(argv: list[str], capsys) -> tuple[int, str]:
    code, _, err = run_eval_cli(argv, capsys)
    return code, err


def base(root: Path, out: Path) -> list[str]:
    return ["--datapath", str(root), "--dataset", "pfpascal", "--pfpascal-kps", "csv", *FAST,
            "--output-dir", str(out)]


def strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which strict JSON forbids")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_complete_strict_results_written_last_and_umask(self_pairs, tmp_path, capsys):
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        code, err = run(base(self_pairs, out), capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    results = strict_json(out / "results.json")
    assert results["complete"] is True and results["pck"]["0.1"] == pytest.approx(100.0)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.yaml", "pck_curve.png", "per_class.png", "per_pair.csv",
                     "results.json"]  # no lock, no temp files left
    assert {(out / n).stat().st_mode & 0o777 for n in names} == {0o640}
    assert (out / "results.json").stat().st_mtime_ns >= (out / "config.yaml").stat().st_mtime_ns

    code, err = run(base(self_pairs, out), capsys)  # a second evaluation into the same folder
    assert code == 2
    assert_one_line_error(code, err, "already holds a complete results.json")
    code, err = run([*base(self_pairs, out), "--overwrite"], capsys)
    assert code == 0, err


def test_disk_full_is_one_line_and_leaves_no_results(self_pairs, tmp_path, capsys, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_module, "atomic_write_text", full)
    code, err = run(base(self_pairs, tmp_path / "out"), capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: cannot write or read {tmp_path / 'out' / 'per_pair.csv'}: No space left on device")
    assert not (tmp_path / "out" / "results.json").exists()


def test_default_output_folders_are_unique():
    assert run_module.default_output_dir("demo") != run_module.default_output_dir("demo")


def test_non_finite_weights_are_named(self_pairs, tmp_path, capsys):
    sd = torchvision.models.resnet18(num_classes=128).state_dict()
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pth"
    torch.save(sd, path)
    args = [a if a != "random" else str(path) for a in base(self_pairs, tmp_path / "out")]
    code, err = run(args, capsys)
    assert code == 2
    assert_one_line_error(code, err, "diverged.pth: tensor layer1.0.conv1.weight holds NaN")


def test_strict_json_writer_turns_non_finite_numbers_into_null(tmp_path):
    runtime.atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5],
                                                    "c": {"d": -float("inf")}})
    assert strict_json(tmp_path / "r.json") == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_failed_evaluation_leaves_no_empty_folder_it_created(tmp_path):
    code = ("import sys; from configs.runtime import claim_output_dir; claim_output_dir(sys.argv[1]); "
            "sys.exit(2)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "new")], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "new").exists()
