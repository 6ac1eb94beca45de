"""Demo benchmark: exact keypoint mapping, determinism, held-out test photos, dataset contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

import data
from configs.runtime import UserError
from data import demo
from data.demo import (
    SPLIT_PHOTOS,
    _random_warp,
    demo_imagefolder,
    ensure_demo_data,
    make_stereo_pair,
    make_warped_pair,
    map_points,
    render_view,
)


@pytest.fixture(scope="module")
def demo_root():
    """The shared demo cache (generated once, about 15 s on 2 cores, reused by later runs)."""
    return ensure_demo_data()


def _blob_photo(centres: np.ndarray, size=(240, 200), sigma=2.5) -> Image.Image:
    yy, xx = np.mgrid[0: size[1], 0: size[0]].astype(np.float64)
    img = np.zeros(size[::-1])
    for x, y in centres:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).convert("RGB")


def _centroid(img: Image.Image, x: float, y: float, r: int = 7) -> np.ndarray:
    a = np.asarray(img.convert("L"), dtype=np.float64)
    x0, y0 = int(round(x)), int(round(y))
    win = a[y0 - r: y0 + r + 1, x0 - r: x0 + r + 1]
    win = np.clip(win - 0.1 * win.max(), 0, None)
    yy, xx = np.mgrid[y0 - r: y0 + r + 1, x0 - r: x0 + r + 1]
    return np.array([(win * xx).sum(), (win * yy).sum()]) / win.sum()


def test_warp_maps_keypoints_exactly():
    """Blob centres measured in the rendered views agree with map_points to a fraction of a pixel
    (a half-pixel convention error or a transposed matrix would fail)."""
    centres = np.array([[70.0, 60.0], [120.5, 100.25], [160.0, 130.0], [95.0, 140.0], [140.0, 75.0]])
    photo = _blob_photo(centres)
    rng = np.random.default_rng(3)
    src_h = np.array([[1.2, 0.0, -10.0], [0.0, 1.2, -8.0], [0.0, 0.0, 1.0]])
    src_size = (268, 224)
    g, trg_size = _random_warp(rng, src_size, strength=1.0)
    src = render_view(photo, src_h, src_size)
    trg = render_view(photo, g @ src_h, trg_size)
    src_pts = map_points(src_h, centres)
    trg_pts = map_points(g, src_pts)
    assert np.allclose(trg_pts, map_points(g @ src_h, centres))
    inside = (trg_pts > 10).all(1) & (trg_pts[:, 0] < trg_size[0] - 10) & (trg_pts[:, 1] < trg_size[1] - 10)
    assert inside.sum() >= 3
    for p in src_pts:
        assert np.abs(_centroid(src, *p) - p).max() < 0.3
    for p in trg_pts[inside]:
        assert np.abs(_centroid(trg, *p) - p).max() < 0.3


def test_warped_pair_deterministic_and_within_frame():
    photo = demo.load_photo("astronaut")
    a = make_warped_pair(photo, np.random.default_rng([0, 1, 2]))
    b = make_warped_pair(photo, np.random.default_rng([0, 1, 2]))
    c = make_warped_pair(photo, np.random.default_rng([0, 1, 3]))
    assert np.array_equal(np.asarray(a[1]), np.asarray(b[1])) and np.array_equal(a[3], b[3])
    assert not np.array_equal(a[3], c[3])
    src, trg, src_kps, trg_kps = a
    assert 10 <= len(src_kps) <= 20 and src_kps.shape == trg_kps.shape
    for img, kps in ((src, src_kps), (trg, trg_kps)):
        assert 200 <= max(img.size) <= 300
        assert (kps >= 0).all() and (kps[:, 0] <= img.width - 1).all() and (kps[:, 1] <= img.height - 1).all()


def test_warped_pair_keypoints_correspond_without_recolour():
    """Before recolouring, smoothed intensities at corresponding keypoints agree far better than at
    unrelated points."""
    photo = demo.load_photo("coffee")
    src, trg, src_kps, trg_kps = make_warped_pair(photo, np.random.default_rng(7), recolour=False)
    s = gaussian_filter(np.asarray(src.convert("L"), dtype=np.float64), 2)
    t = gaussian_filter(np.asarray(trg.convert("L"), dtype=np.float64), 2)

    def at(a, p):
        return a[np.rint(p[:, 1]).astype(int), np.rint(p[:, 0]).astype(int)]

    matched = np.abs(at(s, src_kps) - at(t, trg_kps)).mean()
    shuffled = np.abs(at(s, src_kps) - at(t, np.roll(trg_kps, 1, axis=0))).mean()
    assert matched < 12 and matched < 0.5 * shuffled


def test_stereo_pair_follows_ground_truth_disparity():
    left, right, lk, rk = make_stereo_pair()
    assert len(lk) >= 10 and np.allclose(lk[:, 1], rk[:, 1])
    assert (rk[:, 0] < lk[:, 0]).all()  # right view: points move left
    a = np.asarray(left.convert("L"), dtype=np.float64)
    b = np.asarray(right.convert("L"), dtype=np.float64)

    def ncc(p, q, r=5):
        pa = a[int(round(p[1])) - r: int(round(p[1])) + r + 1, int(round(p[0])) - r: int(round(p[0])) + r + 1]
        pb = b[int(round(q[1])) - r: int(round(q[1])) + r + 1, int(round(q[0])) - r: int(round(q[0])) + r + 1]
        if pa.shape != pb.shape or pa.size == 0:
            return np.nan
        pa, pb = pa - pa.mean(), pb - pb.mean()
        return (pa * pb).sum() / np.sqrt((pa**2).sum() * (pb**2).sum() + 1e-9)

    good = np.nanmean([ncc(p, q) for p, q in zip(lk, rk)])
    shifted = np.nanmean([ncc(p, q + [6, 0]) for p, q in zip(lk, rk)])
    assert good > 0.8 and good > shifted + 0.2


def test_demo_dataset_contract(demo_root):
    manifest = json.loads((demo_root / "demo.json").read_text())
    assert manifest["seed"] == 0
    test_photos = set(SPLIT_PHOTOS["test"])
    assert not test_photos & set(SPLIT_PHOTOS["trn"]) and not test_photos & set(SPLIT_PHOTOS["val"])
    sizes = {}
    for split in ("trn", "val", "test"):
        ds = data.build_dataset("demo", root=demo_root, split=split)
        sizes[split] = len(ds)
        assert ds.default_thres == "bbox" and ds.name == "demo"
        assert {ds.pair_meta(i)["class_name"] for i in range(len(ds))} == set(SPLIT_PHOTOS[split])
    assert sizes == {s: manifest["counts"][s] for s in sizes} and sizes["trn"] >= 80 and sizes["test"] >= 20
    ds = data.build_dataset("demo", root=demo_root, split="test")
    for i in (0, len(ds) - 1):
        s = ds[i]
        assert s["src_img"].dtype == torch.uint8 and s["src_img"].shape[0] == 3
        for side in ("src", "trg"):
            kps, img = s[f"{side}_kps"], s[f"{side}_img"]
            assert kps.dtype == torch.float32 and kps.shape[1] == 2
            assert (kps >= 0).all() and (kps[:, 0] <= img.shape[2] - 1).all()
            assert (kps[:, 1] <= img.shape[1] - 1).all()
            box = torch.stack([kps[:, 0].min(), kps[:, 1].min(), kps[:, 0].max(), kps[:, 1].max()])
            assert torch.equal(s[f"{side}_bbox"], box)
    assert ds.pair_meta(len(ds) - 1)["pair_name"] == "motorcycle_stereo"


def test_demo_default_root_and_imagefolder(demo_root):
    ds = data.build_dataset("demo", split="val")  # root=None -> the default cache folder
    assert ds.root == demo_root
    folder = demo_imagefolder(demo_root)
    classes = sorted(p.name for p in folder.iterdir())
    assert classes == sorted(SPLIT_PHOTOS["trn"])
    assert all(len(list((folder / c).glob("*.png"))) >= 2 for c in classes)


def test_demo_refuses_foreign_folder(tmp_path):
    (tmp_path / "PF-WILLOW").mkdir()
    with pytest.raises(UserError, match="not a demo data folder"):
        data.build_dataset("demo", root=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["PF-WILLOW"]


def test_demo_regenerates_on_seed_change(tmp_path, monkeypatch):
    """A cache made for another seed or version is replaced, not reused (generation itself stubbed small)."""
    calls = []

    def fake_generate(out, seed):
        calls.append(seed)
        out.mkdir(parents=True)
        return {"version": demo.DEMO_VERSION, "seed": seed, "counts": {}}

    monkeypatch.setattr(demo, "_generate", fake_generate)
    root = tmp_path / "demo"
    ensure_demo_data(root, seed=1)
    ensure_demo_data(root, seed=1)
    ensure_demo_data(root, seed=2)
    assert calls == [1, 2]
    assert json.loads((root / "demo.json").read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folders left behind
