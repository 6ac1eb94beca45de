"""`scripts/demo.py` over `experiments.demo`: BN re-estimation against a direct computation, the table
(fast) and `make demo`'s steps at reduced size (slow: a few training steps, two test pairs, two BN pairs)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from torch import nn

from experiments import demo
from models.batchnorm import recalibrate_batchnorm


def _load_cli():
    spec = importlib.util.spec_from_file_location("demo_script", REPO_ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo_cli = _load_cli()


def _tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2),
                        nn.BatchNorm2d(5))
    with torch.no_grad():  # non-trivial affine parameters and stale running statistics
        for bn in (net[1], net[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.fill_(3.0)
            bn.running_var.fill_(7.0)
    return net


def test_recalibrate_batchnorm_equals_direct_channel_statistics():
    net = _tiny_net().eval()
    gen = torch.Generator().manual_seed(1)
    shapes = ((1, 9, 12), (2, 11, 7), (1, 14, 14))
    batches = [torch.randn(b, 3, h, w, generator=gen) * 2 + 1 for b, h, w in shapes]
    conv1, bn1, conv2 = net[0], net[1], net[3]
    params_before = {k: v.clone() for k, v in net.state_dict().items()
                     if "running" not in k and "num" not in k}

    # independent computation: each layer's per-batch channel mean / unbiased variance, with the layer
    # normalised by its batch statistics (biased variance) on the way, averaged over the batches
    means1, vars1, means2, vars2 = [], [], [], []
    with torch.no_grad():
        for x in batches:
            y = conv1(x)
            flat = y.transpose(0, 1).flatten(1)
            means1.append(flat.mean(1))
            vars1.append(flat.var(1, unbiased=True))
            std = torch.sqrt(flat.var(1, unbiased=False) + bn1.eps)
            z = (y - flat.mean(1)[:, None, None]) / std[:, None, None]
            z = F.relu(z * bn1.weight[:, None, None] + bn1.bias[:, None, None])
            flat2 = conv2(z).transpose(0, 1).flatten(1)
            means2.append(flat2.mean(1))
            vars2.append(flat2.var(1, unbiased=True))

    n = recalibrate_batchnorm(net, iter(batches))
    assert n == 3
    torch.testing.assert_close(net[1].running_mean, torch.stack(means1).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, torch.stack(vars1).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[4].running_mean, torch.stack(means2).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[4].running_var, torch.stack(vars2).mean(0), rtol=1e-5, atol=1e-5)
    assert int(net[1].num_batches_tracked) == 3
    # weights untouched, mode and momentum restored
    for k, v in net.state_dict().items():
        if k in params_before:
            assert torch.equal(v, params_before[k]), k
    assert not net.training and all(m.momentum == 0.1 for m in (net[1], net[4]))


def test_recalibrate_batchnorm_restores_train_mode_and_rejects_no_batches():
    net = _tiny_net().train()
    recalibrate_batchnorm(net, [torch.randn(2, 3, 8, 8)])
    assert net.training
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(net, [])


def test_format_table_rows_and_values():
    res = {key: {"pck": {"0.05": 10.0 + i, "0.1": 20.0 + i, "0.15": 30.0 + i}}
           for i, key in enumerate(("random", "init_bn", "trained"))}
    lines = demo.format_table(res).splitlines()
    assert len(lines) == 4 and "a=0.1" in lines[0]
    assert lines[2].startswith("shipped init, BN re-est.")
    assert lines[2].split()[-3:] == ["11.00", "21.00", "31.00"]
    assert lines[3].startswith("trained") and lines[3].split()[-1] == "32.00"


@pytest.mark.slow
def test_demo_end_to_end_reduced(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = demo_cli.main(["--output-dir", str(out), "--device", "cpu", "--max-pairs", "2", "--bn-pairs", "2",
                    "epochs=1", "max_steps=2", "batch_size=4", "pair_batch_size=4", "moco.queue_size=16",
                    "image_data.image_size=64", "pixel_data.image_size=64", "cycle.patch_size=32",
                    "log.interval=1", "log.vis_interval=2", "log.progress=false", "log.tensorboard=false"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "demo test PCK (%)" in printed and "shipped init, BN re-est." in printed

    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == "demo" and res["split"] == "test" and res["n_pairs"] == 2
    assert res["train_steps"] == 2
    assert list(res["pck"]) == [key for key, _ in demo.ROWS]
    for pck in res["pck"].values():
        assert set(pck) == {"0.05", "0.1", "0.15"}
        assert all(0.0 <= v <= 100.0 for v in pck.values())
        assert pck["0.05"] <= pck["0.1"] <= pck["0.15"]
    assert set(res["wall_s"]) >= {"train_s", "eval_random_s", "eval_init_s", "eval_trained_s"}
    for name in ("training_curves.png", "pixel_level.png"):
        assert name in res["figures"]
    assert any(n.startswith("transfer_before_") for n in res["figures"])
    assert any(n.startswith("transfer_after_") for n in res["figures"])
    for name in res["figures"]:
        png = out / "figs" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    # the controls really differ from their weights only in BN running statistics
    init = torch.load(out / "random_init_weights.pth", weights_only=True)
    recal = torch.load(out / "random_bn_weights.pth", weights_only=True)
    changed = {k for k in init if not torch.equal(init[k], recal[k])}
    bn_keys = ("running_mean", "running_var", "num_batches_tracked")
    assert changed and all(k.endswith(bn_keys) for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
