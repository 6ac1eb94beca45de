"""`scripts/ablation.py` over `experiments.ablation`: the summary statistics against a hand computation, the
pair-count checks (fast) and every row at tiny size on the demo data (slow)."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys

import pytest
import torch
from helpers import ENV, REPO

from experiments import ablation


def _load_cli(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablation_cli = _load_cli("ablation")


def test_summary_mean_sample_std_and_table():
    per_seed = {0: {"both": {"0.05": 50.0, "0.1": 70.0, "0.15": 80.0}},
                1: {"both": {"0.05": 54.0, "0.1": 70.0, "0.15": 90.0}},
                2: {"both": {"0.05": 58.0, "0.1": 70.0, "0.15": 85.0}}}
    s = ablation.summarise(per_seed, ["both"])
    assert s["both"]["0.05"]["mean"] == pytest.approx(54.0) and s["both"]["0.05"]["std"] == pytest.approx(4.0)
    assert s["both"]["0.1"]["std"] == 0.0 and s["both"]["0.15"]["min"] == 80.0
    assert s["both"]["0.15"]["std"] == pytest.approx(statistics.stdev([80.0, 90.0, 85.0]))
    table = ablation.format_table(s, "t").splitlines()
    assert table[2] == "| both (the recipe) | 54.0 ± 4.0 | 70.0 ± 0.0 | 85.0 ± 5.0 |"


def test_pfwillow_setting_needs_its_folder(tmp_path):
    from configs.runtime import UserError

    with pytest.raises(UserError, match="download_datasets.sh"):
        ablation.build_setting("pfwillow", "test", str(tmp_path), None)
    (tmp_path / "PF-WILLOW").mkdir()
    setting = ablation.build_setting("pfwillow", "test", str(tmp_path), 300)
    assert "pixel_data.split=test" in setting.train_overrides and setting.eval_settings["max_pairs"] == 300


@pytest.mark.parametrize("script,flag,value", [("ablation", "--max-pairs", "0"), ("demo", "--bn-pairs", "0"),
                                               ("ablation", "--bn-pairs", "-2"),
                                               ("demo", "--max-pairs", "-1")])
def test_pair_counts_below_one_are_one_line_errors(script, flag, value):
    """0 never silently means "every pair": a one-line error naming the flag, before any work."""
    proc = subprocess.run([sys.executable, f"scripts/{script}.py", flag, value, "--output-dir", "/none/x"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {flag} must be at least 1 (got {value}); leave it out to use every pair")


@pytest.mark.slow
def test_ablation_smoke_every_row_two_seeds(tmp_path, capsys):
    out = tmp_path / "abl"
    rc = ablation_cli.main(["--init", "random", "--output-dir", str(out), "--device", "cpu", "--seeds", "0",
                            "1", "--max-pairs", "1", "--bn-pairs", "2", "--figure", str(tmp_path / "fig.png"),
                            "epochs=1", "max_steps=1", "batch_size=4", "pair_batch_size=4",
                            "moco.queue_size=16",
                            "moco.bn_splits=2", "image_data.image_size=64", "pixel_data.image_size=64",
                            "cycle.patch_size=32", "log.tensorboard=false"])
    assert rc == 0
    res = json.loads((out / "ablation_test.json").read_text())
    assert list(res["rows"]) == list(ablation.ROWS) and res["seeds"] == [0, 1]
    for seed in ("0", "1"):
        for row in ablation.ROWS:
            assert all(0.0 <= v <= 100.0 for v in res["per_seed"][seed][row].values())
    for row, stats in res["summary"].items():
        vals = [res["per_seed"][s][row]["0.1"] for s in ("0", "1")]
        assert stats["0.1"]["mean"] == pytest.approx(sum(vals) / 2) and stats["0.1"]["n"] == 2
    assert "both + BN re-estimated" in capsys.readouterr().out
    for png in (out / "ablation_test.png", tmp_path / "fig.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the seeds start from different weights; the BN rows differ from their base only in BN statistics
    w0 = torch.load(out / "seed0" / "init_weights.pth", weights_only=True)  # --init random: one per seed
    w1 = torch.load(out / "seed1" / "init_weights.pth", weights_only=True)
    assert not torch.equal(w0["conv1.weight"], w1["conv1.weight"])
    bn = torch.load(out / "seed0" / "init_bn_weights.pth", weights_only=True)
    changed = {k for k in w0 if not torch.equal(w0[k], bn[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                           for k in changed)
    # the branch rows really switched a branch off
    img, pix = ([json.loads(x) for x in (out / "seed0" / f"train_{row}" / "metrics.jsonl").read_text()
                 .splitlines()] for row in ("image_only", "pixel_only"))
    assert "loss_cycle" not in img[-1] and "loss_moco" in img[-1]
    assert "loss_moco" not in pix[-1] and "loss_cycle" in pix[-1]


@pytest.mark.slow  # two training steps on 2 CPU threads: about 15 s
def test_stage1_trains_from_its_seeded_init_and_exports_fp16(tmp_path):
    """Stage 1 (`experiments.stage1`) at tiny size: its init is the seeded random ResNet-18, its export is the
    trained query encoder in fp16 (integer buffers kept), and a second call resumes instead of retraining."""
    from experiments.stage1 import pretrain_offline
    from models.weights import load_resnet

    summary = pretrain_offline(tmp_path, seed=0, device="cpu", overrides=["max_steps=2"])
    assert summary["step"] == 2
    random = load_resnet("resnet18", "random", 0)[0].state_dict()
    init = torch.load(tmp_path / "random_init.pth", weights_only=True)
    assert all(torch.equal(init[k], v) for k, v in random.items())
    exported = torch.load(summary["export"], weights_only=True)
    trained = load_resnet("auto", str(tmp_path / "train" / "checkpoints" / "last.pth"))[0].state_dict()
    assert set(exported) == set(trained)
    for k, v in trained.items():
        assert exported[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype), k
        assert torch.equal(exported[k], v.half() if v.is_floating_point() else v), k
    assert any(not torch.equal(trained[k], random[k]) for k in random if random[k].is_floating_point())
    again = pretrain_offline(tmp_path, seed=0, device="cpu", overrides=["max_steps=2"])
    assert again["step"] == 2 and again["checkpoint"] is None  # resumed at its end: no step, no new save
    assert torch.equal(torch.load(again["export"], weights_only=True)["fc.weight"], exported["fc.weight"])
