"""Training-loop pieces: LR schedules, samplers, checkpoints (weights_only, keep-last, init mapping), logging,
non-finite loss. Tiny ResNet-18 models and stand-in datasets; no subprocesses."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
import torchvision

from configs.runtime import DistInfo, UserError
from models.contrastive import ContrastiveCorrespondence
from models.cycle import CycleConfig
from models.moco import MoCoConfig
from models.weights import load_resnet
from training.checkpoint import (
    build_checkpoint,
    init_from_checkpoint,
    restore_training_state,
    resume_file,
    save_checkpoint,
    step_checkpoints,
)
from training.config import load_train_config
from training.metrics import METRIC_FIELDS, read_metrics
from training.run_dir import newest_valid_checkpoint
from training.samplers import ImageStreamSampler, MixedBatchSampler, PairStreamSampler
from training.schedule import cosine_schedule, step_schedule

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny_model(seed: int = 0, queue: int = 32) -> ContrastiveCorrespondence:
    torch.manual_seed(seed)
    return ContrastiveCorrespondence(MoCoConfig(arch="resnet18", queue_size=queue),
                                     CycleConfig(patch_size=32),
                                     generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------- schedules
def test_step_schedule_matches_paper_milestones():
    lrs = step_schedule(0.003, epochs=20, iters_per_epoch=3, milestones=(5, 10, 15), gamma=0.1)
    assert len(lrs) == 60
    for step, lr in enumerate(lrs):
        epoch = step // 3
        expected = 0.003 * (1.0 if epoch < 5 else 0.1 if epoch < 10 else 0.01 if epoch < 15 else 0.001)
        assert lr == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_endpoints_and_warmup():
    lrs = cosine_schedule(1.0, epochs=4, iters_per_epoch=5, final_lr=0.1, warmup_epochs=1)
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # monotone decay after warm-up
    assert lrs[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 14 / 15)))


# ------------------------------------------------------------------------------------------ samplers
def test_image_sampler_rank_disjoint_and_epoch_seeded():
    world = 3
    per_rank = [list(ImageStreamSampler(50, r, world, seed=7)) for r in range(world)]
    assert all(len(p) == 50 // world for p in per_rank)
    flat = [i for p in per_rank for i in p]
    assert len(set(flat)) == len(flat)  # disjoint across ranks, no repeats
    s = ImageStreamSampler(50, 0, world, seed=7)
    s.set_epoch(1)
    assert list(s) != per_rank[0]  # a new permutation per epoch
    again = ImageStreamSampler(50, 0, world, seed=7)
    again.set_epoch(1)
    assert list(again) == list(s)  # a pure function of (seed, epoch, rank)


def test_pair_stream_covers_pairs_evenly_and_shards():
    world, length, n = 2, 23, 7
    streams = [list(PairStreamSampler(n, length, r, world, seed=3)) for r in range(world)]
    glob = PairStreamSampler(n, length, 0, world, seed=3).global_stream().tolist()
    assert [glob[r::world] for r in range(world)] == streams
    counts = [glob.count(i) for i in range(n)]
    assert max(counts) - min(counts) <= 1  # concatenated permutations: every pair about equally often
    assert sorted(glob[:n]) == list(range(n))


def test_samplers_resume_by_skipping_consumed_batches():
    def batches(start: int) -> list:
        s = MixedBatchSampler(ImageStreamSampler(40, 1, 2, seed=5), PairStreamSampler(9, 15, 1, 2, seed=5),
                              batch_size=4, pair_batch_size=3, steps=5)
        s.set_epoch(2)
        s.set_start(start)
        return list(s)

    full = batches(0)
    assert len(full) == 5 and all(len(b) == 7 for b in full)
    assert [k for k, _ in full[0]] == ["img"] * 4 + ["pair"] * 3
    assert batches(3) == full[3:]


# --------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_weights_only_keep_last_and_resume_auto(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    out = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), None, None, torch.Generator())
    out["loss"].backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cfg = {"seed": 0, "nested": {"a": [1, 2.5, "x", True, None]}}
    for step in (2, 4, 6, 8):
        save_checkpoint(build_checkpoint(model, "resnet18", opt, scaler, step // 4, step, cfg), tmp_path, 2)
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step_0000006.pth", "step_0000008.pth"]
    for path in [*step_checkpoints(tmp_path), tmp_path / "last.pth"]:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickled Python objects
        assert ckpt["format"] == "contrastive-correspondence/v1" and ckpt["arch"] == "resnet18"
        assert ckpt["config"] == cfg
        parts = {k.split(".")[1] for k in ckpt["state_dict"]}
        assert parts == {"encoder_q", "encoder_k", "queue", "queue_ptr"}
    assert newest_valid_checkpoint(tmp_path.parent / "nothing", None).found is None
    run = tmp_path.parent
    (run / "checkpoints").mkdir(exist_ok=True)
    for f in tmp_path.iterdir():
        (run / "checkpoints" / f.name).write_bytes(f.read_bytes())
    ckpt_dir = run / "checkpoints"
    assert newest_valid_checkpoint(ckpt_dir, None).found == (ckpt_dir / "step_0000008.pth", 8)
    with pytest.raises(UserError, match="no such checkpoint"):
        resume_file(str(run / "missing.pth"))

    fresh = tiny_model(seed=1)
    opt2 = torch.optim.SGD([p for p in fresh.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    last = torch.load(tmp_path / "last.pth", weights_only=True)
    epoch, step = restore_training_state(last, fresh, opt2, scaler)
    assert (epoch, step) == (2, 8)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])
               for p, q in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"]))
    # the evaluation side reads the same file
    net, arch, record = load_resnet("auto", str(tmp_path / "last.pth"))
    assert arch == "resnet18" and record["kind"] == "ours"
    assert torch.equal(net.conv1.weight, model.encoder_q.conv1.weight)


def _moco_file(tmp_path, model: ContrastiveCorrespondence, with_key: bool = True, extra: bool = True):
    """A facebookresearch/moco-format training checkpoint (`module.` keys, epoch, arch, optimizer)."""
    sd = {f"module.{k}": v for k, v in model.state_dict().items()
          if with_key or not k.startswith("encoder_k.")}
    if extra:
        sd["module.some_head.weight"] = torch.zeros(3)
    path = tmp_path / "moco_v1.pth.tar"
    buf = io.BytesIO()
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {}}, buf)
    path.write_bytes(buf.getvalue())
    return path


def test_init_from_moco_checkpoint_loads_everything_and_reports(tmp_path):
    src = tiny_model(seed=3)
    src.queue.mul_(-1.0)
    src.queue_ptr.fill_(5)
    path = _moco_file(tmp_path, src, with_key=False)
    dst = tiny_model(seed=4)
    report = init_from_checkpoint(dst, path, load_queue=True)
    assert report.kind == "moco"
    assert report.missing == [] and report.unexpected == ["some_head.weight"]
    assert "encoder_k copied from encoder_q" in report.notes
    for k, v in src.encoder_q.state_dict().items():
        assert torch.equal(dst.encoder_q.state_dict()[k], v), k
        assert torch.equal(dst.encoder_k.state_dict()[k], v), k
    assert torch.equal(dst.queue, src.queue) and int(dst.queue_ptr) == 5
    # the same MoCo file loads for evaluation (query encoder, 128-d head)
    net, arch, record = load_resnet("auto", str(path))
    assert arch == "resnet18" and record["kind"] == "moco" and net.fc.out_features == 128
    assert torch.equal(net.layer3[1].conv2.weight, src.encoder_q.layer3[1].conv2.weight)


def test_init_from_torchvision_reinitialises_head_and_queue(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)  # 1000-class fc
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    dst = tiny_model(seed=5)
    queue_before = dst.queue.clone()
    fc_before = dst.encoder_q.fc.weight.clone()
    report = init_from_checkpoint(dst, path)
    assert report.kind == "torchvision"
    assert set(report.missing) == {"encoder_q.fc.weight", "encoder_q.fc.bias", "queue", "queue_ptr"}
    assert torch.equal(dst.encoder_q.fc.weight, fc_before) and torch.equal(dst.queue, queue_before)
    assert torch.equal(dst.encoder_q.conv1.weight, tv.conv1.weight)
    assert torch.equal(dst.encoder_k.conv1.weight, tv.conv1.weight)


def test_init_rejects_wrong_arch_and_unknown_layout(tmp_path):
    tv = torchvision.models.resnet34(weights=None)
    path = tmp_path / "r34.pth"
    torch.save(tv.state_dict(), path)
    with pytest.raises(UserError, match="holds a resnet34 but moco.arch=resnet18"):
        init_from_checkpoint(tiny_model(), path)
    del tv.layer4[1]  # no longer a known arch: the key check still catches it
    torch.save(tv.state_dict(), path)
    with pytest.raises(UserError, match="no place in moco.arch=resnet18"):
        init_from_checkpoint(tiny_model(), path)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, bad)
    with pytest.raises(UserError, match="bad.pth"):
        init_from_checkpoint(tiny_model(), bad)


# ----------------------------------------------------------------------- config, logging, NaN stop
def test_unknown_config_key_is_a_user_error():
    with pytest.raises(UserError, match="unknown config key 'optim.learning_rate'"):
        load_train_config("configs/demo.yaml", ["optim.learning_rate=1"])
    cfg = load_train_config("configs/train/pfwillow_r50.yaml")
    assert (cfg.pixel_data.dataset, cfg.pixel_data.split, cfg.cycle.loss_weight) == ("pfpascal", "trn", 5e-5)
    assert load_train_config("configs/train/original.yaml").run_name("x").endswith("_transductive")


class _Views(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        self.n, self.size, self.epoch = n, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        x = torch.randn(3, self.size, self.size, generator=g)
        return {"im_q": x, "im_k": x + 0.1 * torch.randn(x.shape, generator=g), "index": i}


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int, nan_index: int | None = None) -> None:
        self.n, self.size, self.nan_index = n, size, nan_index

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        x = torch.randn(3, self.size, self.size, generator=torch.Generator().manual_seed(i))
        if i == self.nan_index:
            x[:, 0, 0] = float("nan")
        return {"src": x, "trg": x.flip(-1), "index": i}


def _run_in_process(tmp_path, monkeypatch, pairs: _Pairs, overrides: list[str]):
    import training.loader as tdata
    import training.trainer as trainer

    real = tdata.build_training_data
    monkeypatch.setattr(trainer, "build_training_data", lambda cfg, info: real(
        cfg, info, _Views(8, 32), tdata.PairSelection(pairs, len(pairs), {})))
    cfg = load_train_config(None, ["moco.arch=resnet18", "moco.queue_size=16", "batch_size=4",
                                   "pair_batch_size=2", "cycle.patch_size=16", "epochs=2", "init.kind=random",
                                   "num_workers=0",
                                   "log.progress=false", "log.tensorboard=false", *overrides])
    return trainer.train(cfg, tmp_path / "run", info=CPU)


def test_metrics_jsonl_has_documented_fields(tmp_path, monkeypatch):
    summary = _run_in_process(tmp_path, monkeypatch, _Pairs(3, 32), ["log.interval=2"])
    assert summary["step"] == 4
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert set(METRIC_FIELDS) <= set(r)
        assert r["data_time"] >= 0 and r["compute_time"] > 0 and r["images_per_s"] > 0
        assert 0 <= r["moco_top1"] <= r["moco_top5"] <= 100
        assert r["loss"] == pytest.approx(r["loss_moco"] + 5e-4 * r["loss_cycle"], rel=1e-5)
        # training health: per-term gradient norms, MoCo's chance level, the cycle's crop-centre baseline
        assert r["grad_norm_moco"] > 0 and r["grad_norm_pixel"] >= 0  # T 0.0007: saturated walks here
        assert r["moco_chance_loss"] == pytest.approx(math.log(17))
        assert r["cycle_centre_baseline"] >= 0  # one cell per 16-px crop here: spread 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["transductive"] is False and run["steps_per_epoch"] == 2
    assert run["precision"] == "float32"  # set_faithful_numerics was applied (TF32 off on CUDA)


@pytest.mark.parametrize("weights", [(1.0, 5e-4), (0.0, 5e-4), (1.0, 0.0)], ids=["both", "cycle", "moco"])
def test_ddp_find_unused_parameters_whenever_a_parameter_gets_no_gradient(weights):
    from training.trainer import ddp_find_unused_parameters

    mw, cw = weights
    cfg = load_train_config(None, ["moco.arch=resnet18", f"moco.loss_weight={mw}", f"cycle.loss_weight={cw}"])
    torch.manual_seed(0)
    model = ContrastiveCorrespondence(MoCoConfig(arch="resnet18", queue_size=8, loss_weight=mw),
                                      CycleConfig(patch_size=32, loss_weight=cw), torch.Generator())
    g = torch.Generator().manual_seed(0)
    im = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    pair = [torch.randn(2, 3, 64, 64, generator=g) for _ in range(2)]
    model(*im, *pair, torch.Generator().manual_seed(1))["loss"].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert bool(unused) == (mw == 0)  # the cycle branch alone leaves layer4 and fc without gradient
    assert ddp_find_unused_parameters(cfg) or not unused  # DDP would fail on the second step otherwise


def test_non_finite_loss_stops_with_step_and_terms(tmp_path, monkeypatch):
    # pair stream of epoch 0: the NaN pair is drawn at some step; the error must name it and the terms
    with pytest.raises(UserError) as err:
        _run_in_process(tmp_path, monkeypatch, _Pairs(2, 32, nan_index=1), [])
    msg = str(err.value)
    assert "non-finite loss at step 0" in msg
    assert "loss_cycle=nan" in msg and "loss_moco=" in msg and "\n" not in msg


def test_cycle_figure_png_from_model_outputs(tmp_path):
    from PIL import Image

    from training.visualize import cycle_figure, write_png

    model = tiny_model()
    x = torch.randn(2, 3, 64, 64)
    out = model(None, None, x, x.flip(-1), torch.Generator().manual_seed(0), return_vis=True)
    image = cycle_figure(out["vis"], max_samples=2)
    assert image.dtype.name == "uint8" and image.shape[2] == 3 and image.shape[0] > 300
    assert image.std() > 10  # not a blank canvas
    path = write_png(cycle_figure(out["vis"], max_samples=1), tmp_path / "vis" / "step_0000001.png")
    with Image.open(path) as png:
        assert png.size[0] == image.shape[1] and png.size[1] < image.shape[0]  # one row instead of two


def test_setup_warnings_name_the_keys_and_run_logs_them(tmp_path, monkeypatch, caplog):
    # one process, bn_splits 1, queue 16 >= 8 images: both warnings, each one line naming its key
    with caplog.at_level("WARNING"):
        _run_in_process(tmp_path, monkeypatch, _Pairs(3, 32), ["epochs=1"])
    msgs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("moco.bn_splits=1" in m for m in msgs) and any("moco.queue_size=16" in m for m in msgs)
    assert all("\n" not in m for m in msgs)


def test_pixel_level_figure_goes_to_tensorboard(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run_in_process(tmp_path, monkeypatch, _Pairs(3, 32),
                    ["log.interval=2", "log.vis_interval=2", "log.tensorboard=true", "max_steps=2"])
    assert sorted(p.name for p in (tmp_path / "run" / "vis").glob("*.png")) == ["step_0000002.png"]
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "train/pixel_level" in events.Tags()["images"]
    (image,) = events.Images("train/pixel_level")
    assert image.step == 2 and image.width > 100 and image.height > 100
