"""Any backbone under the same matcher: timm ViTs and CNNs through test.py, the layer search and match.py;
timm ResNet-50 = torchvision ResNet-50 given the same weights; `--matcher nn` against a brute force; the
ViT patch-token geometry; the on-disk feature cache; the one-line errors. Offline: random weights, tiny
models (vit_tiny_patch16_224, resnet18), small images (long side 96-128), demo pairs."""

from __future__ import annotations

import contextlib
import io
import json
import shlex

import numpy as np
import pytest
import torch
import torchvision
from helpers import run_cli_captured

pytest.importorskip("timm")

VIT = "timm:vit_tiny_patch16_224"
LONG_SIDE = 112


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> str:
    from configs import CONFIG_DIR

    path = tmp_path_factory.mktemp("cfg") / "demo_tiny.yaml"
    path.write_text(f"_base_: {CONFIG_DIR / 'eval' / 'demo.yaml'}\nlong_side: {LONG_SIDE}\nnum_workers: 0\n")
    return str(path)


@pytest.fixture(scope="module")
def demo_test():
    from data import build_dataset

    return build_dataset("demo", None, "test")


@pytest.fixture(scope="module")
def vit():
    from models.backbone_loader import load_backbone

    return load_backbone(VIT, "random", 0)


def _cli(main, argv, capsys) -> tuple[int, str]:
    code, _, err = run_cli_captured(main, argv, capsys)
    return code, err


# ------------------------------------------------------------------------------------------ CLIs
@pytest.mark.parametrize("backbone, ids, marginals", [
    (VIT, "9,11", "uniform: the backbone has no classifier head for CAM"),
    ("timm:resnet18", "2,3", "CAM (classmap 1)"),
])
def test_test_py_runs_timm_backbones(backbone, ids, marginals, tiny_config, tmp_path):
    from validation_and_test.test import main

    out = tmp_path / "run"
    assert main(["--config", tiny_config, "--backbone", backbone, "--weights", "random", "--hyperpixel", ids,
                 "--max-pairs", "2", "--device", "cpu", "--no-plots", "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["backbone"] == backbone and res["hyperpixel"] == [int(i) for i in ids.split(",")]
    assert res["matching"]["marginals"] == marginals and res["matching"]["matcher"] == "scot"
    assert res["weights"] == {"weights": "random", "seed": 0, "arch": backbone}
    assert ("patch 16" in res["input_rule"]) == backbone.startswith("timm:vit")
    assert res["n_pairs"] == 2 and 0.0 <= res["pck"]["0.1"] <= 100.0


def test_layer_search_over_vit_blocks_rescores_in_test_py(tiny_config, tmp_path):
    from validation_and_test.beamsearch import main
    from validation_and_test.test import main as run_test_py

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--dataset", "demo", "--config", tiny_config, "--weights", "random", "--backbone", VIT,
                     "--max-pairs", "2", "--beam", "2", "--depth", "2", "--bases", "9-11", "--candidates",
                     "9-11", "--matcher", "nn", "--output-dir", str(tmp_path / "s")]) == 0
    doc = json.loads((tmp_path / "s" / "search.json").read_text())
    assert doc["n_ids"] == 12 and doc["backbone"] == VIT and doc["matching"]["matcher"] == "nn"
    assert [c["ids"] for c in doc["scored"][:3]] == [[9], [10], [11]]
    assert doc["cache"]["misses"] == 4  # 2 pairs = 4 images, each through the ViT once for every block
    argv = shlex.split(doc["test_command"])[2:]
    assert "--backbone" in argv and VIT in argv
    assert run_test_py([*argv, "--no-plots", "--output-dir", str(tmp_path / "t")]) == 0
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert res["pck"]["0.1"] == doc["best"]["score"]


def test_match_py_with_a_vit(tiny_config, tmp_path, capsys):
    import skimage.data
    from PIL import Image

    from validation_and_test.match import main

    src, trg = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(skimage.data.chelsea()).resize((160, 120)).save(src)
    Image.fromarray(skimage.data.chelsea()[:, ::-1]).resize((150, 110)).save(trg)
    code, err = _cli(main, [str(src), str(trg), "--config", tiny_config, "--backbone", VIT, "--weights",
                            "random", "--hyperpixel", "11", "--grid", "3", "--matcher", "nn-mutual",
                            "--output-dir", str(tmp_path / "m")], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "m" / "matches.json").read_text())
    assert rec["backbone"] == VIT and rec["n_keypoints"] == 9 and rec["matching"]["matcher"] == "nn-mutual"
    assert (tmp_path / "m" / "matches.png").is_file()
    for m in rec["matches"]:
        assert m["trg"] is None or (0 <= m["confidence"] <= 1 and -1 <= m["trg"][0] <= 150)


# ------------------------------------------------------------------------------------------ parity
def test_timm_resnet50_predicts_exactly_as_torchvision_resnet50(tmp_path, demo_test):
    """Same weights (torchvision's state dict under timm's names) -> the same ids, the same CAM, the same
    predictions: the two paths run the same operations in the same order, so they agree bit for bit."""
    from models.backbone_loader import load_backbone
    from validation_and_test.matcher import Matcher, MatchSettings

    torch.manual_seed(3)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(sd, tmp_path / "weights.pth")
    a, _ = load_backbone("resnet50", str(tmp_path / "weights.pth"))
    b, rec = load_backbone("timm:resnet50.a1_in1k", str(tmp_path / "weights.pth"))
    # timm's resnet50 uses torchvision's names (conv1, bn1, layer1.0.conv1, downsample.0, fc): the map is 1:1
    timm_sd = b.net.state_dict()
    assert set(sd) == set(timm_sd) and all(sd[k].shape == v.shape for k, v in timm_sd.items())
    assert type(b.net).__module__.startswith("timm.") and b.id_family == "resnet50"
    assert (b.n_ids, b.jumps, b.receptive_fields) == (a.n_ids, a.jumps, a.receptive_fields)
    assert rec["kind"] == "timm" and rec["arch"] == "timm:resnet50.a1_in1k"
    settings = MatchSettings(long_side=96)
    ma, mb = Matcher(a, settings), Matcher(b, settings)
    for i in range(2):
        pa, pb = (m.predict_pair(demo_test[i], (2, 12, 13, 15)) for m in (ma, mb))
        torch.testing.assert_close(pa.pred, pb.pred, rtol=0, atol=0, equal_nan=True)
    fa = ma.image_features(demo_test[0]["src_img"], (2, 12, 13, 15))
    fb = mb.image_features(demo_test[0]["src_img"], (2, 12, 13, 15))
    assert torch.equal(fa.feats, fb.feats) and torch.equal(fa.weights, fb.weights)


# ------------------------------------------------------------------------------------------ nn matcher
def _brute_force_nn(f_src, f_trg, src_boxes, trg_boxes, kps, mutual):
    """Loops over keypoints and their boxes; cosines in float64 NumPy."""
    a = f_src / np.linalg.norm(f_src, axis=1, keepdims=True)
    b = f_trg / np.linalg.norm(f_trg, axis=1, keepdims=True)
    cos = a @ b.T
    out = []
    for x, y in kps:
        terms = []
        for i, (x1, y1, x2, y2) in enumerate(src_boxes):
            if not (x1 <= x <= x2 and y1 <= y <= y2):
                continue
            j = int(np.argmax(cos[i]))
            if mutual and int(np.argmax(cos[:, j])) != i:
                continue
            terms.append((trg_boxes[j][0] + x - x1, trg_boxes[j][1] + y - y1))
        out.append(np.mean(terms, axis=0) if terms else (np.nan, np.nan))
    return np.array(out)


@pytest.mark.parametrize("mode", ["nn", "nn-mutual"])
def test_nn_matcher_equals_a_brute_force(mode, vit):
    from models.transfer import receptive_field_boxes
    from validation_and_test.matcher import ImageFeatures, Matcher, MatchSettings

    rng = np.random.default_rng(0)  # the same numbers on every machine
    dim = 48
    feats = [torch.from_numpy(rng.standard_normal((12 * 15, dim), dtype=np.float32)),
             torch.from_numpy(rng.standard_normal((10 * 14, dim), dtype=np.float32))]
    sides = [(12, 15), (10, 14)]
    images = []
    for f, (h, w) in zip(feats, sides):
        boxes, centers = receptive_field_boxes(h, w, 8, 19)
        images.append(ImageFeatures(factors=None, dense=f, boxes=boxes, centers=centers, weights=None,
                                    size=(w * 8, h * 8), scale=1.0, grid=(h, w)))
    cos = torch.nn.functional.normalize(feats[0].double(), dim=1) @ torch.nn.functional.normalize(
        feats[1].double(), dim=1).t()
    # the premise: no near-ties, so the float32 and float64 arg-maxes agree. A float32 cosine of unit-norm
    # vectors errs by at most ~dim * eps (the dot) plus ~dim * eps (the norms); two of them are compared
    margin = 4 * dim * float(np.finfo(np.float32).eps)
    for c in (cos, cos.t()):
        top2 = c.topk(2, dim=1).values
        assert float((top2[:, 0] - top2[:, 1]).min()) > margin
    kps = torch.from_numpy(rng.uniform(0, 1, (30, 2)).astype(np.float32)) * torch.tensor([15 * 8 - 1,
                                                                                          12 * 8 - 1])
    matcher = Matcher(vit[0], MatchSettings(matcher=mode))
    conf = matcher.confidence(images[0], images[1])
    pred, n_neighbours, _, _ = matcher.transfer(conf, images[0], images[1], kps)
    ref = _brute_force_nn(feats[0].double().numpy(), feats[1].double().numpy(), images[0].boxes.tolist(),
                          images[1].boxes.tolist(), kps.tolist(), mode == "nn-mutual")
    np.testing.assert_allclose(pred.numpy(), ref, rtol=0, atol=1e-4)
    assert (mode == "nn-mutual") == bool(torch.isnan(pred).any())  # mutual leaves some keypoints unmatched


# ------------------------------------------------------------------------------------------ ViT geometry
def test_vit_token_geometry_maps_a_patch_centre_back_to_itself(vit, demo_test):
    """Keypoints at the centres of known patches (placed with the resize formula, independently of the
    code) are transferred onto themselves between an image and itself, and lie in their patch's box only."""
    from validation_and_test.matcher import Matcher, MatchSettings
    from validation_and_test.preprocess import prepare_image

    backbone = vit[0]
    img = demo_test[0]["src_img"]
    x, s = prepare_image(img, "scot", LONG_SIDE)
    h, w = x.shape[-2:]
    gh, gw = round(h / 16), round(w / 16)  # tokens: the nearest multiple of the patch size per side
    patches = [(0, 0), (gh - 1, gw - 1), (2, 3), (gh // 2, 1)]
    # centre of patch (r, c) in the (16 gh, 16 gw) network input, mapped back to the (h, w) frame
    kps = torch.tensor([[(16 * c + 8) * w / (16 * gw) - 0.5, (16 * r + 8) * h / (16 * gh) - 0.5]
                        for r, c in patches], dtype=torch.float64)
    matcher = Matcher(backbone, MatchSettings(matcher="nn", long_side=LONG_SIDE))
    feats = matcher.image_features(img, (5, 11))
    assert feats.grid == (gh, gw)
    centres = feats.centers.view(gh, gw, 2)
    for (r, c), kp in zip(patches, kps):
        torch.testing.assert_close(centres[r, c].double(), kp, rtol=0, atol=1e-4)
    inside = (kps[:, None, 0] >= feats.boxes[None, :, 0]) & (kps[:, None, 0] <= feats.boxes[None, :, 2]) & (
        kps[:, None, 1] >= feats.boxes[None, :, 1]) & (kps[:, None, 1] <= feats.boxes[None, :, 3])
    assert inside.sum(dim=1).tolist() == [1] * len(patches)
    assert [int(i) for i in inside.float().argmax(dim=1)] == [r * gw + c for r, c in patches]
    sample = {"src_img": img, "trg_img": img, "src_kps": (kps / s).float()}
    pred = matcher.predict_pair(sample, (5, 11)).pred
    torch.testing.assert_close(pred.double(), kps, rtol=0, atol=1e-3)


# ------------------------------------------------------------------------------------------ disk cache
def test_disk_cache_hits_misses_on_every_key_and_survives_a_kill(vit, demo_test, tmp_path, monkeypatch):
    import os

    from models.backbone_loader import load_backbone
    from validation_and_test.feature_store import DiskFeatureCache
    from validation_and_test.matcher import Matcher, MatchSettings

    backbone, record = vit
    img = demo_test[0]["src_img"]
    folder = tmp_path / "fc"

    def run(bb=backbone, rec=record, image=img, ids=(5, 11), long_side=LONG_SIDE):
        disk = DiskFeatureCache(folder, rec)
        m = Matcher(bb, MatchSettings(long_side=long_side), disk_cache=disk, cache_mb=0)
        return m.image_features(image, ids), disk

    def n_files() -> int:
        return len(list(folder.glob("*/*.pt")))

    first, disk = run()
    assert (disk.hits, disk.misses, n_files()) == (0, 1, 1)
    again, disk = run()
    assert (disk.hits, disk.misses) == (1, 0)
    assert torch.equal(first.feats, again.feats) and torch.equal(first.boxes, again.boxes)
    changed = img.clone()
    changed[0, 0, 0] ^= 1
    other_seed, other_record = load_backbone(VIT, "random", 1)
    other_arch, arch_record = load_backbone("timm:vit_tiny_patch16_224.augreg_in21k", "random", 0)
    for kwargs in ({"image": changed}, {"bb": other_seed, "rec": other_record}, {"ids": (5,)},
                   {"long_side": LONG_SIDE + 16}, {"bb": other_arch, "rec": arch_record}):
        before = n_files()
        _, disk = run(**kwargs)
        assert (disk.hits, disk.misses, n_files()) == (0, 1, before + 1), kwargs
    # a kill while a file is written: the file never appears and no temporary file is left behind
    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    before = n_files()
    with pytest.raises(KeyboardInterrupt):
        run(long_side=LONG_SIDE + 32)
    monkeypatch.undo()
    assert n_files() == before and not [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".pt"]
    _, disk = run(long_side=LONG_SIDE + 32)  # recomputed and written
    assert (disk.hits, disk.misses, n_files()) == (0, 1, before + 1)
    # a truncated file (another writer killed) is a miss and is rewritten
    path = max(folder.glob("*/*.pt"), key=lambda p: p.stat().st_mtime_ns)
    path.write_bytes(path.read_bytes()[:100])
    _, disk = run(long_side=LONG_SIDE + 32)
    assert (disk.hits, disk.misses) == (0, 1)
    _, disk = run(long_side=LONG_SIDE + 32)
    assert (disk.hits, disk.misses) == (1, 0)


def test_test_py_feature_cache_flag(tiny_config, tmp_path):
    from validation_and_test.test import main

    common = ["--config", tiny_config, "--backbone", VIT, "--weights", "random", "--hyperpixel", "11",
              "--max-pairs", "2", "--device", "cpu", "--no-plots", "--feature-cache", str(tmp_path / "fc")]
    assert main([*common, "--output-dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    assert a["feature_cache_disk"]["misses"] == 4 and b["feature_cache_disk"] == {
        "folder": str(tmp_path / "fc"), "hits": 4, "misses": 0}
    assert a["pck"] == b["pck"]


# ------------------------------------------------------------------------------------------ weights
def test_pretrained_weights_come_from_timms_cache_offline(tmp_path):
    """`--weights imagenet` is timm's own loading: with the file in the Hugging Face cache layout and no
    network, exactly those tensors are loaded (and their digest recorded)."""
    import subprocess
    import sys

    import timm
    from helpers import ENV, REPO
    from safetensors.torch import save_file

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    repo = net.pretrained_cfg["hf_hub_id"]
    torch.manual_seed(5)
    state = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "c0ffee"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("c0ffee")
    save_file(state, str(snapshot / "model.safetensors"))
    torch.save(state, tmp_path / "expected.pt")
    code = ("import torch; from models.backbone_loader import load_backbone; "
            f"b, rec = load_backbone('{VIT}', 'imagenet'); e = torch.load(r'{tmp_path / 'expected.pt'}'); "
            "assert all(torch.equal(v, e[k]) for k, v in b.net.state_dict().items()); "
            "print(rec['weights'], rec['hf_hub_id'], rec['tensors_sha256'])")
    env = {**ENV, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("CC_NO_DOWNLOAD", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, hub_id, digest = proc.stdout.split()
    assert (kind, hub_id) == ("timm-pretrained", repo) and len(digest) == 64


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2.lvd142m",
                                  "vit_base_patch16_224.dino", "vit_base_patch16_clip_224.openai",
                                  "vit_base_patch16_224.mae", "resnet50.a1_in1k"])
def test_every_named_example_matches_offline_with_random_weights(name, demo_test):
    from models.backbone_loader import load_backbone
    from validation_and_test.matcher import Matcher, MatchSettings

    backbone, record = load_backbone(f"timm:{name}", "random", 0)
    vit = name.startswith("vit")
    assert record["weights"] == "random" and backbone.n_ids == (12 if vit else 17)
    if "reg4" in name:
        assert backbone.net.num_prefix_tokens == 5  # CLS + 4 registers, all dropped
    ids = (9, 11) if vit else (2, 12, 13, 15)
    matcher = Matcher(backbone, MatchSettings(long_side=96))
    pred = matcher.predict_pair(demo_test[0], ids).pred
    assert pred.shape == demo_test[0]["src_kps"].shape and bool(torch.isfinite(pred).all())
    patch = 14 if "patch14" in name else 16
    feats = matcher.image_features(demo_test[0]["src_img"], ids)
    assert matcher.cam_on == (not vit)
    if vit:
        width, height = feats.size
        assert feats.grid == (round(height / patch), round(width / patch))


# ------------------------------------------------------------------------------------------ errors
def test_one_line_errors(tiny_config, tmp_path, capsys, monkeypatch):
    from validation_and_test.beamsearch import main as search
    from validation_and_test.test import main

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    base = ["--config", tiny_config, "--weights", "random", "--max-pairs", "1", "--device", "cpu",
            "--output-dir", str(tmp_path / "o")]
    monkeypatch.setenv("CC_NO_DOWNLOAD", "1")
    cases = [
        (main, ["--backbone", "timm:not_a_model_xyz", "--hyperpixel", "1"], "unknown timm model"),
        (main, ["--backbone", VIT, "--hyperpixel", "12"], "ids 0..11"),
        (main, ["--backbone", VIT], "--hyperpixel"),  # the preset's ids belong to resnet18
        (main, ["--backbone", VIT, "--hyperpixel", "3", "--weights", "imagenet"], "vit_tiny_patch16_224:"),
        (main, ["--backbone", VIT, "--hyperpixel", "3", "--weights", str(tmp_path / "r18.pth")],
         "does not match"),
        (main, ["--backbone", "timm:mobilenetv3_small_050", "--hyperpixel", "1"], "ResNets and Vision"),
        (main, ["--backbone", "vgg16", "--hyperpixel", "1"], "timm:NAME"),
        (search, ["--dataset", "demo", "--backbone", VIT, "--score", "cycle", "--bases", "3", "--depth", "1"],
         "--score pck"),
    ]
    for cli, extra, needle in cases:
        code, err = _cli(cli, base + extra, capsys)
        lines = err.strip().splitlines()
        if lines[0].startswith("usage:"):  # a flag argparse refuses: its usage, then one line
            lines = lines[-1:]
            assert "Traceback" not in err
        assert code == 2 and len(lines) == 1 and "error: " in lines[0] and needle in lines[0], (extra, err)
    code, err = _cli(main, base + ["--backbone", VIT, "--hyperpixel", "3", "--weights", "imagenet"], capsys)
    assert "cannot be fetched" in err and "--weights random" in err



# ------------------------------------------------------------------------------------------ training
TRAIN_TINY = ["moco.arch=timm:vit_tiny_patch16_224", "init.kind=random", "pixel_data.dataset=demo",
              "pixel_data.image_size=64", "cycle.patch_size=32", "cycle.feature_block=5", "pair_batch_size=2",
              "epochs=1", "steps_per_epoch=2", "num_workers=0", "checkpoint.every_steps=1", "log.interval=1",
              "log.vis_interval=0", "log.tensorboard=false", "log.progress=false"]


@pytest.mark.slow
@pytest.mark.parametrize("arch, extra, key, ids", [
    (VIT, [], "blocks.5.mlp.fc1.weight", "5"),
    ("timm:resnet18", ["moco.arch=timm:resnet18", "cycle.feature_stage=layer2", "cycle.feature_block=-1"],
     "layer2.1.conv2.weight", "3"),
])
def test_pixel_level_fine_tuning_runs_and_its_checkpoint_evaluates(arch, extra, key, ids, tmp_path,
                                                                   tiny_config):
    """The DINOv2 config's path at tiny size (vit_tiny; and a timm ResNet-18 at a ResNet stage): demo trn
    pairs, no image stream, two steps; the checkpoint then evaluates through test.py with exactly its
    trained query encoder."""
    from models.backbone_loader import load_backbone
    from training.metrics import read_metrics
    from training.train import main as train
    from validation_and_test.test import main as test

    out = tmp_path / "run"
    assert train(["--config", "configs/train/spair_dinov2_s14.yaml", "--device", "cpu", "--output-dir",
                  str(out), *TRAIN_TINY, *extra]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss_cycle"]) for r in rows)
    assert all("loss_moco" not in r for r in rows)
    ckpts = [torch.load(out / "checkpoints" / f"step_000000{k}.pth", weights_only=True) for k in (1, 2)]
    assert ckpts[1]["arch"] == arch and ckpts[1]["step"] == 2
    q = "module.encoder_q."
    trained = {k[len(q):]: v for k, v in ckpts[1]["state_dict"].items() if k.startswith(q)}
    assert not torch.equal(ckpts[0]["state_dict"][q + key], trained[key])  # the second step trained it
    last = str(out / "checkpoints" / "last.pth")
    loaded, record = load_backbone(arch, last)
    assert record["step"] == 2
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert test(["--config", tiny_config, "--backbone", arch, "--weights", last, "--hyperpixel", ids,
                 "--max-pairs", "1", "--device", "cpu", "--no-plots", "--output-dir",
                 str(tmp_path / "eval")]) == 0


def test_training_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from training.train import main as train

    base = ["--config", "configs/train/spair_dinov2_s14.yaml", "--device", "cpu", *TRAIN_TINY]
    monkeypatch.setenv("CC_NO_DOWNLOAD", "1")
    cases = [
        (["moco.loss_weight=1.0", "image_data.source=demo"], "moco.loss_weight=0"),  # MoCo is for ResNets
        (["moco.loss_weight=1.0"], "image_data.source=none"),
        (["cycle.feature_stage=layer3"], "cycle.feature_stage=block"),
        (["cycle.feature_block=12"], "blocks 0..11"),
        (["cycle.patch_size=24"], "multiple of the patch size 16"),
        (["init.kind=timm"], "vit_tiny_patch16_224:"),
        (["moco.arch=resnet18"], "cycle.feature_stage=block is for ViTs"),
    ]
    for k, (extra, needle) in enumerate(cases):
        code, err = _cli(train, [*base, *extra, "--output-dir", str(tmp_path / str(k))], capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error: ") and needle in last and "Traceback" not in err, (
            extra, err)
