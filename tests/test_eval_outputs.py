"""Evaluation outputs on generated self-pairs (PF-PASCAL layout, CSV keypoints): results.json is strict JSON,
written last and marked complete; a complete folder is not overwritten without --overwrite; files follow the
umask; a full disk is a one-line error leaving no results.json; non-finite weights are named."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import torchvision

from configs import runtime
from configs.runtime import run_cli
from validation_and_test import run as run_module
from validation_and_test import test as eval_cli

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
    logging.getLogger("eval").handlers.clear()
    with pytest.raises(SystemExit) as done:
        run_cli(eval_cli.main, argv)
    return int(done.value.code), capsys.readouterr().err


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
    assert code == 2 and "already holds a complete results.json" in err and len(err.strip().splitlines()) == 1
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
    assert code == 2 and "diverged.pth: tensor layer1.0.conv1.weight holds NaN" in err
    assert len(err.strip().splitlines()) == 1


def test_strict_json_writer_turns_non_finite_numbers_into_null(tmp_path):
    runtime.atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5],
                                                    "c": {"d": -float("inf")}})
    assert strict_json(tmp_path / "r.json") == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_failed_evaluation_leaves_no_empty_folder_it_created(tmp_path):
    out = tmp_path / "new"
    runtime.claim_output_dir(out)
    assert (out / ".lock").is_file()
    runtime._release(out / ".lock", created=True)
    assert not out.exists()
