"""Combined model: loss terms, gradients (query encoder only), determinism, checkpoint key layout."""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import original_cycle_config

from configs.runtime import UserError
from models.contrastive import ContrastiveCorrespondence
from models.cycle import CycleConfig
from models.moco import MoCoConfig


def small_model(cycle: CycleConfig | None = None, seed: int = 0, **moco) -> ContrastiveCorrespondence:
    torch.manual_seed(seed)
    cfg = MoCoConfig(**{"arch": "resnet18", "dim": 16, "queue_size": 32, **moco})
    cycle = cycle or CycleConfig(patch_size=32)
    return ContrastiveCorrespondence(cfg, cycle, torch.Generator().manual_seed(1))


def batch(seed: int = 0, b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"im_q": torch.randn(b, 3, 32, 32, generator=g), "im_k": torch.randn(b, 3, 32, 32, generator=g),
            "src": torch.randn(b, 3, 64, 64, generator=g), "trg": torch.randn(b, 3, 64, 64, generator=g)}


def run(model, data, seed: int = 5, **kw):
    gen = torch.Generator().manual_seed(seed)
    return model(data["im_q"], data["im_k"], data["src"], data["trg"], gen, **kw)


@pytest.fixture(scope="module")
def model() -> ContrastiveCorrespondence:
    return small_model()


def test_outputs_total_and_gradients_reach_every_query_parameter(model) -> None:
    model.zero_grad(set_to_none=True)
    out = run(model, batch(), return_vis=True)
    for key in ("loss", "loss_moco", "loss_cycle", "moco_top1", "moco_top5", "cycle_valid_fraction",
                "cycle_max_prob_crop_trg", "cycle_max_prob_trg_src", "cycle_error_px"):
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    want = 1.0 * out["loss_moco"] + 5e-4 * out["loss_cycle"]
    assert torch.allclose(out["loss"], want)
    assert out["vis"]["cycle_pred"].shape == (2, 4, 2) and out["vis"]["crop"].shape == (2, 3, 32, 32)
    out["loss"].backward()
    no_grad = [n for n, p in model.encoder_q.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(not p.requires_grad and p.grad is None for p in model.encoder_k.parameters())


def test_cycle_branch_alone_reaches_stem_to_layer3_only(model) -> None:
    model.zero_grad(set_to_none=True)
    data = batch(1)
    out = model(None, None, data["src"], data["trg"], torch.Generator().manual_seed(0))
    assert "loss_moco" not in out and torch.equal(out["loss"], 5e-4 * out["loss_cycle"])
    out["loss"].backward()
    for name, p in model.encoder_q.named_parameters():
        reached = p.grad is not None
        assert reached == (not name.startswith(("layer4", "fc"))), name
    with pytest.raises(UserError):
        model(None, None, None, None, torch.Generator())


def test_same_generator_same_step_regardless_of_global_rng() -> None:
    data = batch(2, b=4)
    outs, states = [], []
    for global_seed in (0, 99):
        m = small_model(bn_splits=2, seed=3)
        torch.manual_seed(global_seed)  # must not matter: all in-model draws use the explicit generator
        outs.append(run(m, data, seed=11))
        states.append(m.state_dict())
    assert outs[0]["loss"].item() == outs[1]["loss"].item()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_original_preset_with_split_bn_runs() -> None:
    m = small_model(original_cycle_config(patch_size=32), bn_splits=2)
    data = batch(3)
    out = m(None, None, data["src"], data["trg"], torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["cycle_valid_fraction"].item() == 1.0


def test_state_dict_has_checkpoint_layout_and_loads_in_evaluation(model, tmp_path) -> None:
    sd = model.state_dict()
    assert sd["queue"].shape == (16, 32) and sd["queue_ptr"].shape == (1,)
    assert sd["encoder_q.fc.weight"].shape == (16, 512) and "encoder_k.layer4.1.bn2.running_var" in sd
    assert {k.split(".")[0] for k in sd} == {"encoder_q", "encoder_k", "queue", "queue_ptr"}
    ckpt = {"format": "contrastive-correspondence/v1", "arch": "resnet18", "step": 3,
            "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    torch.save(ckpt, tmp_path / "last.pth")
    loaded = torch.load(tmp_path / "last.pth", weights_only=True)
    fresh = small_model(seed=9)
    fresh.load_state_dict({k[len("module."):]: v for k, v in loaded["state_dict"].items()})
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values()))
    weights = pytest.importorskip("models.weights")
    enc, arch, kind = weights.encoder_state_dict(loaded, "last.pth")
    assert (arch, kind) == ("resnet18", "ours")
    net = torchvision.models.resnet18(num_classes=16)
    net.load_state_dict(enc, strict=True)
