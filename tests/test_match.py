"""Own-image matching (`validation_and_test/match.py`, `Correspondence`) and the benchmark plots of test.py.

Small and fast: seeded random ResNet-18 (the demo preset's ids) at a reduced resolution (long side 128).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import assert_one_line_error
from PIL import Image

from configs import CONFIG_DIR
from configs.runtime import UserError, run_cli
from data.demo import ensure_demo_data
from validation_and_test.correspondence import Correspondence, to_uint8_image
from validation_and_test.keypoints_io import check_inside, grid_keypoints, parse_keypoints

LONG_SIDE = 128


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    """The demo preset (ResNet-18, random weights, ids 2,3,5) at long side 128."""
    data = yaml.safe_load((CONFIG_DIR / "eval" / "demo.yaml").read_text())
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(yaml.safe_dump({**data, "long_side": LONG_SIDE, "num_workers": 0}))
    return path


@pytest.fixture(scope="module")
def corr(small_config) -> Correspondence:
    return Correspondence.from_preset(config=str(small_config), device="cpu")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A textured photo (H, W, 3) uint8, 120 x 160."""
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((160, 120), Image.BILINEAR))


# -------------------------------------------------------------------------------------- keypoints
def test_keypoint_string_json_and_csv_agree(tmp_path):
    want = torch.tensor([[10.0, 20.0], [30.5, 40.0]])
    (tmp_path / "a.json").write_text(json.dumps({"keypoints": [[10, 20], [30.5, 40]]}))
    (tmp_path / "b.json").write_text(json.dumps([{"x": 10, "y": 20}, {"x": 30.5, "y": 40}]))
    (tmp_path / "c.csv").write_text("x,y\n10,20\n30.5,40\n")
    for text in ("10,20;30.5,40", " 10, 20 ; 30.5,40; ", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                 str(tmp_path / "c.csv")):
        assert torch.equal(parse_keypoints(text), want), text


@pytest.mark.parametrize("text, needle", [("10;20", "not a pair"), ("a,b", "not a pair"),
                                          ("", "no keypoints"), ("1,2,3", "not a pair"),
                                          ("inf,2", "not finite")])
def test_malformed_keypoint_strings_are_one_line_errors(text, needle):
    with pytest.raises(UserError, match=needle) as err:
        parse_keypoints(text)
    assert "\n" not in str(err.value)


def test_keypoints_outside_the_image_are_refused():
    check_inside(torch.tensor([[0.0, 0.0], [159.0, 119.0]]), (160, 120))
    with pytest.raises(UserError, match=r"keypoint 2 \(160, 5\) is outside the 160x120"):
        check_inside(torch.tensor([[1.0, 1.0], [160.0, 5.0]]), (160, 120))


def test_grid_covers_the_box_row_major():
    pts = grid_keypoints(2, (0.0, 0.0, 100.0, 40.0))
    assert pts.tolist() == [[25.0, 10.0], [75.0, 10.0], [25.0, 30.0], [75.0, 30.0]]


def test_images_from_pil_ndarray_and_tensor_are_the_same(photo):
    ref = to_uint8_image(Image.fromarray(photo))
    assert ref.shape == (3, 120, 160) and ref.dtype == torch.uint8
    assert torch.equal(to_uint8_image(photo), ref)
    assert torch.equal(to_uint8_image(torch.from_numpy(photo).permute(2, 0, 1)), ref)
    assert torch.equal(to_uint8_image(torch.from_numpy(photo).permute(2, 0, 1).float() / 255), ref)


# -------------------------------------------------------------------------------------- matching
def test_identical_pair_maps_every_keypoint_to_itself_within_one_stride(corr, photo):
    kps = grid_keypoints(5, (8.0, 8.0, 150.0, 110.0))
    result = corr(photo, photo, kps)
    stride = corr.matcher.backbone.jumps[corr.ids[0]] / result.dense.src_scale  # original pixels
    err = (result.keypoints - kps).abs().amax(dim=1)
    assert torch.isfinite(result.keypoints).all()
    assert float(err.max()) <= stride, (err, stride)
    assert ((result.confidence > 0) & (result.confidence <= 1)).all()
    h, w = result.dense.grid
    assert result.dense.src_points.shape == result.dense.trg_points.shape == (h * w, 2)
    # dense: most source hyperpixels find themselves on an identical pair
    same = (result.dense.trg_points - result.dense.src_points).abs().amax(dim=1) <= stride
    assert float(same.float().mean()) > 0.9


def test_grid_mode_and_outside_keypoints_through_the_api(corr, photo):
    result = corr(photo, photo, None, grid=3)
    assert result.src_keypoints.shape == (9, 2) and result.keypoints.shape == (9, 2)
    with pytest.raises(UserError, match="outside"):
        corr(photo, photo, [[-1.0, 5.0]])


def _capture_test_py(monkeypatch) -> dict[int, torch.Tensor]:
    """Make test.py's --vis-dir hook record each pair's prediction (original target pixels)."""
    import validation_and_test.visualize as vis

    seen: dict[int, torch.Tensor] = {}

    def capture(*args, **kwargs):
        def on_pair(sample, prediction, correct):
            seen[int(sample["index"])] = prediction.pred.cpu() / prediction.trg_scale
        return on_pair

    monkeypatch.setattr(vis, "pair_visualiser", capture)
    return seen


def test_benchmark_pair_equals_test_py_and_plots_are_written(corr, small_config, tmp_path, monkeypatch):
    from data import build_dataset
    from validation_and_test.test import main

    root = ensure_demo_data()
    seen = _capture_test_py(monkeypatch)
    out = tmp_path / "eval"
    assert main(["--config", str(small_config), "--datapath", str(root), "--max-pairs", "2",
                 "--device", "cpu", "--output-dir", str(out), "--vis-dir", str(tmp_path / "vis")]) == 0
    assert sorted(seen) == [0, 1]
    dataset = build_dataset("demo", str(root), "test")
    for index, expected in seen.items():
        sample = dataset[index]
        result = corr(sample["src_img"], sample["trg_img"], sample["src_kps"])
        torch.testing.assert_close(result.keypoints, expected, rtol=0, atol=0, equal_nan=True)
    results = json.loads((out / "results.json").read_text())
    curve = dict(zip(results["pck_curve"]["alphas"], results["pck_curve"]["pck"]))
    assert min(curve) == 0 and max(curve) == 0.2 and len(curve) == 41
    for alpha, value in results["pck"].items():  # the curve passes through the headline numbers
        assert curve[float(alpha)] == pytest.approx(value, abs=1e-9)
    assert all(a <= b for a, b in zip(results["pck_curve"]["pck"], results["pck_curve"]["pck"][1:]))
    for name in ("pck_curve.png", "per_class.png"):
        with Image.open(out / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100
            assert np.asarray(img.convert("L")).std() > 1  # not a blank canvas


# -------------------------------------------------------------------------------------------- CLI
def test_cli_writes_json_and_figures(small_config, photo, tmp_path, capsys):
    from validation_and_test.match import main

    src = tmp_path / "src.png"
    Image.fromarray(photo).save(src)
    trg = tmp_path / "trg.jpg"
    Image.fromarray(photo[:, ::-1].copy()).save(trg)  # mirrored: a different image
    out = tmp_path / "out"
    logging.getLogger("match").handlers.clear()
    with pytest.raises(SystemExit) as done:
        run_cli(main, [str(src), str(trg), "--config", str(small_config), "--src-kps", "10,20;80,60;150,100",
                       "--device", "cpu", "--output-dir", str(out)])
    assert done.value.code == 0, capsys.readouterr().err
    record = json.loads((out / "matches.json").read_text())
    assert record["complete"] is True and record["n_keypoints"] == 3
    assert [m["src"] for m in record["matches"]] == [[10.0, 20.0], [80.0, 60.0], [150.0, 100.0]]
    for m in record["matches"]:
        assert 0 <= m["trg"][0] <= 159 and 0 <= m["trg"][1] <= 119 and 0 < m["confidence"] <= 1
    for key in ("weights", "backbone", "matching", "config", "hyperpixel", "device", "precision", "preset"):
        assert key in record, key
    assert record["backbone"] == "resnet18" and record["weights"]["weights"] == "random"
    assert record["config"]["long_side"] == LONG_SIDE and record["hyperpixel"] == [2, 3, 5]
    for name in ("matches.png", "warp.png"):
        with Image.open(out / name) as img:
            assert np.asarray(img.convert("L")).std() > 1, name


def test_warp_of_identical_pair_reproduces_the_source(corr, photo):
    from validation_and_test.match_figures import dense_flow, warp_target

    result = corr(photo, photo, None, grid=2)
    img = to_uint8_image(photo)
    warped = warp_target(img, dense_flow(result.dense, (120, 160)))
    assert warped.shape == img.shape
    diff = (warped.float() - img.float()).abs().mean()
    assert float(diff) < 20  # a few pixels of shift at most; a wrong warp differs by far more


def test_compare_runs_overlays_and_tabulates(small_config, tmp_path, capsys):
    from validation_and_test.test import main

    compare = _compare_runs()
    root = str(ensure_demo_data())
    for name, ids in (("a", "2,3,5"), ("b", "2,3")):
        assert main(["--config", str(small_config), "--datapath", root, "--max-pairs", "1", "--device", "cpu",
                     "--hyperpixel", ids, "--output-dir", str(tmp_path / name), "--no-plots"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.yaml", "per_pair.csv",
                                                                    "results.json"]  # --no-plots: no PNGs
    capsys.readouterr()
    plot = tmp_path / "cmp.png"
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(plot)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | dataset") and "PCK@0.1" in table[0]
    assert table[2].startswith("| a | demo test | resnet18 |") and "| 2,3 |" in table[3]
    with Image.open(plot) as img:
        assert np.asarray(img.convert("L")).std() > 1
    with pytest.raises(UserError, match="no results.json"):
        compare.main([str(tmp_path / "a"), str(tmp_path / "none")])


def _compare_runs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_runs", Path(__file__).parents[1] / "scripts" /
                                                  "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOOD_RESULTS = {"complete": True, "dataset": "demo", "pck": {"0.05": 40.0, "0.1": 60.5}, "hyperpixel": [2, 3],
                "weights": {"weights": "random"}, "pck_curve": {"alphas": [0.0, 0.1], "pck": [0.0, 60.5]}}


@pytest.mark.parametrize("change, needle", [
    ({"pck": [40.0, 60.5]}, "'pck' must map alphas to PCK values, got list"),
    ({"pck": {"0.1": "60.5"}}, "'pck' value of alpha 0.1 is '60.5', not a number"),
    ({"pck": {"high": 60.5}}, "'pck' key 'high' is not an alpha"),
    ({"weights": "random"}, "'weights' must be a mapping, got str"),
    ({"hyperpixel": "2,3"}, "'hyperpixel' must be a list"),
    ({"pck_curve": {"alphas": [0.1], "pck": "x"}}, "'pck_curve' must hold two lists"),
    ({"output": "folder"}, "is a folder"),
    ({"output": "unwritable"}, "--output folder"),
])
def test_compare_runs_malformed_input_is_one_line(tmp_path, capsys, change, needle):
    compare = _compare_runs()
    run = tmp_path / "run"
    run.mkdir()
    output = tmp_path / "cmp.png"
    if change.get("output") == "folder":
        output = tmp_path
    elif change.get("output") == "unwritable":
        output = tmp_path / "file" / "cmp.png"
        (tmp_path / "file").write_text("a file where the folder should be")
    results = {**GOOD_RESULTS, **{k: v for k, v in change.items() if k != "output"}}
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit) as done:
        run_cli(compare.main, [str(run), "--output", str(output)])
    assert_one_line_error(done.value.code, capsys.readouterr().err, needle)
    assert not list(tmp_path.rglob("*.png"))  # nothing written, wherever --output pointed


def test_compare_runs_accepts_the_good_record(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(GOOD_RESULTS))
    assert _compare_runs().main([str(run), "--output", str(tmp_path / "cmp.png")]) == 0
    assert "| run | demo | ? | random | 2,3 | 40.00 | 60.50 |" in capsys.readouterr().out
