"""Checkpoint loading: MoCo / ours / torchvision layouts, random seeds, ImageNet offline, one-line errors."""

from __future__ import annotations

import hashlib
import pickle
import time

import pytest
import torch
import torchvision
from torch import nn

from configs.runtime import UserError
from models import weights
from models.weights import encoder_state_dict, infer_arch, load_resnet, read_checkpoint


def _net(arch="resnet18", num_classes=128, seed=1):
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _moco_dict(net, prefix="module.encoder_q."):
    sd = {prefix + k: v for k, v in net.state_dict().items()}
    sd.update({"module.encoder_k." + k: v.clone() + 1 for k, v in net.state_dict().items()})
    sd["module.queue"] = torch.randn(128, 16)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return sd


def test_moco_checkpoint(tmp_path):
    net = _net()
    path = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": _moco_dict(net), "optimizer": {}}, path)
    model, arch, record = load_resnet("auto", str(path))
    assert arch == "resnet18" and record["kind"] == "moco" and len(record["sha256"]) == 64
    assert _same(model, net) and isinstance(model.fc, nn.Linear) and model.fc.out_features == 128
    assert not model.training


def test_our_checkpoint_with_mlp_head(tmp_path):
    net = _net()
    net.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    ckpt = {"format": "contrastive-correspondence/v1", "arch": "resnet18", "state_dict": _moco_dict(net),
            "epoch": 1, "step": 10, "optimizer": {}, "scaler": {}, "config": {"a": 1}, "git_sha": "abc"}
    path = tmp_path / "last.pth"
    torch.save(ckpt, path)
    sd, arch, kind = encoder_state_dict(read_checkpoint(path), str(path))
    assert kind == "ours" and arch == "resnet18" and "fc.0.weight" in sd
    assert not any(k.startswith("module.") for k in sd)
    model, _, record = load_resnet("auto", str(path))
    assert isinstance(model.fc, nn.Sequential) and _same(model, net) and record["step"] == 10


def test_torchvision_state_dict_arch_inferred(tmp_path):
    net = _net("resnet34", num_classes=1000)
    path = tmp_path / "tv.pth"
    torch.save(net.state_dict(), path)
    model, arch, record = load_resnet("auto", str(path))
    assert arch == "resnet34" and record["kind"] == "torchvision" and model.fc.out_features == 1000
    assert _same(model, net)
    assert infer_arch(_net("resnet50").state_dict()) == "resnet50"
    assert infer_arch(_net("resnet101").state_dict()) == "resnet101"
    with pytest.raises(UserError, match="holds a resnet34 but --backbone resnet18"):
        load_resnet("resnet18", str(path))


def test_random_weights_follow_the_seed():
    a, arch, record = load_resnet("resnet18", "random", seed=3)
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None, num_classes=128)
    assert _same(a, ref) and record == {"weights": "random", "seed": 3, "arch": "resnet18"}
    b, _, _ = load_resnet("resnet18", "random", seed=4)
    assert not _same(a, b)
    assert load_resnet("auto", "random")[1] == "resnet50"


@pytest.mark.parametrize("content", ["garbage", "unknown_keys", "not_a_dict", "pickled_object", "bad_shapes",
                                     "missing", "plain_pickle"])
def test_bad_checkpoints_give_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif content == "unknown_keys":
        torch.save({"model": {"w": torch.zeros(1)}}, path)
    elif content == "not_a_dict":
        torch.save([torch.zeros(1)], path)
    elif content == "pickled_object":
        torch.save({"state_dict": nn.Linear(2, 2)}, path)  # needs weights_only=False: refused
    elif content == "bad_shapes":
        sd = _net().state_dict()
        sd["conv1.weight"] = torch.zeros(3, 3)
        torch.save(sd, path)
    elif content == "plain_pickle":  # a legacy file written by pickle, not torch.save
        path.write_bytes(pickle.dumps({"state_dict": {"w": 1}}, protocol=4))
    with pytest.raises(UserError) as err:
        load_resnet("auto", str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    if content == "plain_pickle":  # whole, not cut off mid-sentence
        assert message.endswith("not a torch.save checkpoint that can be read without running untrusted code")
    if content == "unknown_keys":
        assert "module.encoder_q." in message and "conv1.weight" in message


def test_imagenet_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CC_NO_DOWNLOAD", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("no download may be attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    start = time.perf_counter()
    with pytest.raises(UserError, match="IMAGENET1K_V1") as err:
        load_resnet("resnet18", "imagenet")
    assert time.perf_counter() - start < 5 and "\n" not in str(err.value)
    assert "resnet18-f37072fd.pth" in str(err.value)  # V1 file, not DEFAULT/V2


def test_imagenet_download_failure_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("CC_NO_DOWNLOAD", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    monkeypatch.setattr(weights, "_host_resolves", lambda url, timeout_s: True)  # no real DNS in tests
    with pytest.raises(UserError, match="cannot be downloaded"):
        load_resnet("resnet50", "imagenet")


def test_imagenet_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    net = _net(num_classes=1000)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(net.state_dict(), cache / "resnet18-f37072fd.pth")
    model, arch, record = load_resnet("resnet18", "imagenet")
    assert _same(model, net) and record["name"] == "resnet18.IMAGENET1K_V1"
    assert record["url"].endswith("resnet18-f37072fd.pth")
    # results.json records the weights' URL and full sha256 (docs/protocol.md, Weights)
    assert record["sha256"] == hashlib.sha256((cache / "resnet18-f37072fd.pth").read_bytes()).hexdigest()
