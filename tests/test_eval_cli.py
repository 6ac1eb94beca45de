"""`validation_and_test/test.py`: PF-WILLOW and SPair end to end, output files, one-line errors, torchrun.
Each check runs on generated official-layout fixtures (every clone) and again on a copy of the real data
(`real` ids; skip without `../shared/realdata`)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import REPO, assert_one_line_error, run_eval_cli, spair_pairs, write_small_willow, write_spair
from torch import nn

from configs.runtime import native_bf16

FAST = ["--weights", "random", "--backbone", "resnet18", "--hyperpixel", "2,3", "--device", "cpu"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _willow_copy(realdata_root: Path, tmp_path: Path, n_rows: int = 3) -> Path:
    """A small PF-WILLOW (one sub-class, first rows of the pair list) that tests may break."""
    src = realdata_root / "PF-WILLOW"
    dst = tmp_path / "root" / "PF-WILLOW"
    shutil.copytree(src / "car(G)", dst / "car(G)")
    lines = (src / "test_pairs.csv").read_text().splitlines()
    (dst / "test_pairs.csv").write_text("\n".join(lines[: n_rows + 1]) + "\n")
    return dst.parent


@pytest.fixture(params=["generated", "real"])
def willow_root(request, tmp_path) -> Path:
    """Three car(G) pairs that tests may break: generated, or the first rows of the real data."""
    if request.param == "real":
        return _willow_copy(request.getfixturevalue("realdata_root"), tmp_path)
    return write_small_willow(tmp_path / "root")


def test_pfwillow_end_to_end(willow_root, tmp_path, capsys):
    out_dir = tmp_path / "run"
    vis_dir = tmp_path / "vis"
    argv = ["--datapath", str(willow_root), "--dataset", "pfwillow", "--max-pairs", "3", *FAST,
            "--output-dir", str(out_dir), "--vis-dir", str(vis_dir)]
    code, stdout, _ = run_eval_cli(argv, capsys)
    assert code == 0
    results = json.loads((out_dir / "results.json").read_text())
    for key in ("dataset", "split", "n_pairs", "thres", "pck", "pck_per_keypoint", "per_class", "config",
                "weights", "device", "precision", "fast", "hyperpixel", "backbone"):
        assert key in results, key
    assert results["dataset"] == "pfwillow" and results["split"] == "test" and results["n_pairs"] == 3
    assert results["thres"] == "bbox" and results["hyperpixel"] == [2, 3]
    assert results["backbone"] == "resnet18"
    assert results["weights"]["weights"] == "random" and results["precision"] == "float32"
    assert results["layout"] == "channels_last"  # the CPU's default for the network passes
    assert set(results["pck"]) == {"0.05", "0.1", "0.15"}
    rows = _read_csv(out_dir / "per_pair.csv")
    assert list(rows[0]) == ["index", "src", "trg", "class", "n_kps", "pck_0.05", "pck_0.1", "pck_0.15"]
    assert [r["index"] for r in rows] == ["0", "1", "2"] and all(r["n_kps"] == "10" for r in rows)
    assert rows[0]["src"].startswith("car(G)/") and rows[0]["class"] == "car(G)"
    for alpha in ("0.05", "0.1", "0.15"):  # headline = mean of per-pair PCK
        mean = sum(float(r[f"pck_{alpha}"]) for r in rows) / 3
        assert results["pck"][alpha] == pytest.approx(mean, abs=1e-3)
        assert 0.0 <= results["pck"][alpha] <= 100.0
    assert len(list(vis_dir.glob("*.png"))) == 3
    assert "PCK@0.1" in stdout and "car(G)" in stdout


def _first_image(root: Path) -> Path:
    row = (root / "PF-WILLOW" / "test_pairs.csv").read_text().splitlines()[1].split(",")
    return root / "PF-WILLOW" / "/".join(row[0].split("/")[1:])


@pytest.mark.parametrize("breakage", ["no_root", "no_folder", "missing_image", "corrupt_image", "bad_number",
                                      "bad_columns"])
def test_data_errors_are_one_line(willow_root, tmp_path, capsys, breakage):
    root = willow_root
    csv_path = root / "PF-WILLOW" / "test_pairs.csv"
    lines = csv_path.read_text().splitlines()
    if breakage == "no_root":
        root = tmp_path / "nowhere"
    elif breakage == "no_folder":
        shutil.rmtree(root / "PF-WILLOW")
    elif breakage == "missing_image":
        _first_image(root).unlink()
    elif breakage == "corrupt_image":
        _first_image(root).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif breakage == "bad_number":
        cells = lines[1].split(",")
        cells[5] = "abc"
        csv_path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    elif breakage == "bad_columns":
        csv_path.write_text("\n".join([lines[0], ",".join(lines[1].split(",")[:-3])]) + "\n")
    code, _, err = run_eval_cli(["--datapath", str(root), "--dataset", "pfwillow", *FAST,
                         "--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2
    assert_one_line_error(code, err, alone=False)  # data read during the run: its progress lines come first


def test_setting_errors_are_one_line(willow_root, tmp_path, capsys):
    base = ["--datapath", str(willow_root), "--dataset", "pfwillow", "--device", "cpu", "--max-pairs", "1",
            "--output-dir", str(tmp_path / "out")]
    mlp = tmp_path / "mlp.pth"
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    torch.save({"arch": "resnet18", "state_dict": {f"module.encoder_q.{k}": v for k, v in
                                                   net.state_dict().items()}}, mlp)
    cases = [
        (["--weights", "random", "--backbone", "resnet18"], "--hyperpixel"),  # ResNet-50 preset, ResNet-18
        (["--weights", "random", "--backbone", "resnet18", "--hyperpixel", "2,2"], "duplicate"),
        (["--weights", "random", "--backbone", "resnet18", "--hyperpixel", "2,12"], "out of range"),
        (["--weights", str(mlp), "--hyperpixel", "2,3"], "--classmap 0"),
        (["--weights", str(tmp_path / "none.pth")], "not found"),
        (["--weights", "random", "--split", "val"], "split"),
        (["--weights", "random", "--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]
    for extra, needle in cases:
        code, _, err = run_eval_cli(base + extra, capsys)
        assert code == 2
        assert_one_line_error(code, err, needle)


def test_preset_for_another_backbone_is_fine_with_explicit_ids(willow_root, tmp_path, capsys):
    code, _, _ = run_eval_cli(["--datapath", str(willow_root), "--dataset", "pfwillow", "--max-pairs", "1",
                               *FAST, "--classmap", "0", "--sim", "cosGeo", "--fast", "--output-dir",
                               str(tmp_path / "o")], capsys)
    assert code == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["matching"]["sim"] == "cosGeo" and results["matching"]["classmap"] == 0
    native = native_bf16(torch.device("cpu"))  # TF32 only exists on CUDA; bf16 where the CPU has it
    assert results["fast"] is True and results["precision"] == (f"bf16 backbone ({native})" if native else
                                                                "float32")


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(realdata_root, tmp_path, capsys):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(f"_base_: {REPO / 'configs' / 'eval' / 'pfwillow.yaml'}\nlong_side: 160\nnum_workers: 0\n")
    common = ["--config", str(cfg), "--datapath", str(realdata_root), "--max-pairs", "5", *FAST]
    code, _, _ = run_eval_cli(common + ["--output-dir", str(tmp_path / "single")], capsys)
    assert code == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = ["validation_and_test/test.py", *common, "--output-dir", str(tmp_path / "multi")]
    proc = subprocess.run([*launcher, *script],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    multi = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert multi["world_size"] == 2 and multi["n_pairs"] == single["n_pairs"] == 5
    assert multi["pck"] == single["pck"] and multi["per_class"] == single["per_class"]
    csv_multi, csv_single = (tmp_path / d / "per_pair.csv" for d in ("multi", "single"))
    assert csv_multi.read_text() == csv_single.read_text()


@pytest.fixture(params=["generated", "real"])
def spair_root(request, tmp_path) -> Path:
    """An SPair-71k root, an aeroplane test pair first: generated, or the 12 real pairs of the dev data."""
    if request.param == "generated":
        return write_spair(tmp_path / "root", spair_pairs([("2008_000001", "2008_000002", "aeroplane")]))
    root = request.getfixturevalue("realdata_root")
    if not (root / "SPair-71k" / "PairAnnotation" / "test").is_dir():
        pytest.skip("SPair-71k real data not available")
    return root


def test_spair_breakdown(spair_root, tmp_path, capsys):
    """One pair end to end, with the difficulty table."""
    out_dir = tmp_path / "spair"
    code, stdout, _ = run_eval_cli(["--datapath", str(spair_root), "--dataset", "spair", "--max-pairs", "1",
                                    *FAST, "--classmap", "0", "--output-dir", str(out_dir)], capsys)
    assert code == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["thres"] == "bbox" and results["matching"]["exp2"] == 1.0  # SPair preset
    assert set(results["per_difficulty"]) == {"viewpoint_variation", "scale_variation", "truncation",
                                              "occlusion"}
    assert results["per_class"].keys() == {"aeroplane"}
    assert "viewpoint_variation" in stdout


def test_pfpascal_csv_keypoints_are_recorded_and_restricted(tmp_path, capsys):
    """--pfpascal-kps csv (docs/datasets.md, PF-PASCAL): reachable from the CLI, recorded as not comparable in
    results.json; `--thres bbox`, a split without keypoint columns or another dataset: one-line errors."""
    from PIL import Image
    from skimage import data as skdata

    root = tmp_path / "data"
    (root / "PF-PASCAL" / "JPEGImages").mkdir(parents=True)
    Image.fromarray(skdata.chelsea()[::3, ::3]).save(root / "PF-PASCAL" / "JPEGImages" / "a.jpg")
    (root / "PF-PASCAL" / "test_pairs.csv").write_text(
        "source_image,target_image,class,XA,YA,XB,YB\n"
        "PF-dataset-PASCAL/JPEGImages/a.jpg,PF-dataset-PASCAL/JPEGImages/a.jpg,8,40;60;90,30;50;70,40;60;90,"
        "30;50;70\n")
    base = ["--datapath", str(root), "--dataset", "pfpascal", *FAST, "--pfpascal-kps", "csv"]
    code, _, err = run_eval_cli(base + ["--output-dir", str(tmp_path / "out")], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["keypoint_source"] == "csv" and results["data"]["comparable"] is False
    assert results["thres"] == "img" and results["n_pairs"] == 1 and results["per_class"].keys() == {"cat"}
    for extra, needle in ((["--thres", "bbox"], "--thres bbox"), (["--split", "val"], "split val"),
                          (["--dataset", "pfwillow"], "pfpascal only")):
        code, _, err = run_eval_cli(base + extra + ["--output-dir", str(tmp_path / "o2")], capsys)
        assert code == 2
        assert_one_line_error(code, err, needle)
