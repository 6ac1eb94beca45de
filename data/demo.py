"""Offline demo benchmark built from photographs bundled with scikit-image (no network).

Each pair is (a crop of a photo, a homography-warped and recoloured view of the same photo); keypoints are
Harris corners of the source mapped exactly through the warp, out-of-frame ones dropped. The test split
uses held-out photos, plus one real stereo pair (Middlebury motorcycle, keypoints mapped through the
ground-truth disparity). Layout of the cache folder (default `<repo>/.cache/demo`):

    demo.json                      manifest (version, seed, counts), written last = completeness marker
    pairs/{trn,val,test}.json      [{"pair_name", "src", "trg", "class", "src_kps", "trg_kps"}, ...]
    images/<split>/<photo>/<k>_{src,trg}.png
    imagefolder/<photo>/<photo>_<k>.png   unlabelled images (trn photos only) for the image-level branch
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from configs import REPO_ROOT
from configs.runtime import UserError
from data.io import read_json
from data.registry import PairDataset, PairRecord, check_kps, extent_box, register

DEMO_VERSION = 2
DEFAULT_DEMO_ROOT = REPO_ROOT / ".cache" / "demo"
SPLIT_PHOTOS: dict[str, tuple[str, ...]] = {
    "trn": ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "coins", "gravel", "retina",
            "brick", "page"),
    "val": ("chelsea", "moon"),
    "test": ("coffee", "camera", "motorcycle"),
}
PAIRS_PER_PHOTO = {"trn": 10, "val": 10, "test": 8}  # v2: val 4 -> 10 (same first 4)
CROPS_PER_PHOTO = 4  # unlabelled images per trn photo (the photo itself + crops)
PHOTO_MAX_SIDE = 640
FILL = (118, 118, 118)  # canvas colour outside the photo


def _photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    import skimage.data as skd

    return {
        "astronaut": skd.astronaut, "rocket": skd.rocket, "immunohistochemistry": skd.immunohistochemistry,
        "hubble_deep_field": skd.hubble_deep_field, "coins": skd.coins, "gravel": skd.gravel,
        "retina": skd.retina, "brick": skd.brick, "page": skd.page, "chelsea": skd.chelsea, "moon": skd.moon,
        "coffee": skd.coffee, "camera": skd.camera, "motorcycle": lambda: skd.stereo_motorcycle()[0],
    }


def demo_classes() -> list[str]:
    return sorted(p for photos in SPLIT_PHOTOS.values() for p in photos)


def load_photo(name: str) -> Image.Image:
    """A bundled scikit-image photo as PIL RGB, long side at most `PHOTO_MAX_SIDE`."""
    arr = np.asarray(_photo_loaders()[name]())
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8) if arr.dtype.kind == "f" else arr.astype(np.uint8)
    img = Image.fromarray(arr).convert("RGB")
    scale = PHOTO_MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    return img


# ------------------------------------------------------------------------------------------ geometry
def map_points(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography acting on continuous coordinates (pixel i spans [i, i+1]) to points in
    pixel-index coordinates (pixel i centred at i): q = H(p + 0.5) - 0.5. pts (K, 2) -> (K, 2) float64."""
    p = np.concatenate([pts + 0.5, np.ones((len(pts), 1))], axis=1) @ h.T
    return p[:, :2] / p[:, 2:3] - 0.5


def render_view(photo: Image.Image, h: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Warp `photo` by the homography h (photo -> view, continuous coordinates) onto a (W, H) canvas."""
    inv = np.linalg.inv(h)
    inv = inv / inv[2, 2]
    return photo.transform(size, Image.PERSPECTIVE, tuple(inv.ravel()[:8]), resample=Image.BICUBIC,
                           fillcolor=FILL)


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)


def _random_crop(rng: np.random.Generator, photo_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Photo -> source view: a crop of 60-95 % of each side, long side resized to 200-300 px."""
    pw, ph = photo_size
    cw, ch = pw * rng.uniform(0.6, 0.95), ph * rng.uniform(0.6, 0.95)
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    long_side = int(rng.integers(200, 301))
    s = long_side / max(cw, ch)
    size = (max(32, round(cw * s)), max(32, round(ch * s)))
    return np.diag([s, s, 1.0]) @ _translate(-x0, -y0), size


def _random_warp(rng: np.random.Generator, src_size: tuple[int, int], strength: float
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Source view -> target view: rotation, scale, translation and mild perspective about the centre."""
    sw, sh = src_size
    long_side = int(rng.integers(200, 301))
    aspect = (sw / sh) * np.exp(rng.uniform(-0.2, 0.2))
    tw, th = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    angle = np.deg2rad(rng.uniform(-25, 25) * strength)
    scale = (long_side / max(sw, sh)) * np.exp(rng.uniform(-0.25, 0.25) * strength)
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    sim = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    persp = np.eye(3)
    persp[2, :2] = rng.uniform(-1, 1, size=2) * 0.25 * strength / max(sw, sh)
    shift = rng.uniform(-0.1, 0.1, size=2) * strength * np.array([tw, th])
    g = _translate(tw / 2 + shift[0], th / 2 + shift[1]) @ sim @ persp @ _translate(-sw / 2, -sh / 2)
    return g, (int(tw), int(th))


def corner_points(img: Image.Image, num: int = 60) -> np.ndarray:
    """Strongest Harris corners of an image, (N, 2) (x, y) pixel indices, at least 8 px from the border."""
    from skimage.feature import corner_harris, corner_peaks

    gray = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    response = corner_harris(gray, sigma=1.5)
    min_dist = max(5, max(img.size) // 40)
    peaks = corner_peaks(response, min_distance=min_dist, threshold_rel=1e-3, exclude_border=8, num_peaks=num)
    return peaks[:, ::-1].astype(np.float64)


def _inside(pts: np.ndarray, size: tuple[int, int], margin: float = 2.0) -> np.ndarray:
    w, h = size
    return ((pts[:, 0] >= margin) & (pts[:, 0] <= w - 1 - margin)
            & (pts[:, 1] >= margin) & (pts[:, 1] <= h - 1 - margin))


def _recolour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    import torchvision.transforms.functional as tvf

    img = tvf.adjust_brightness(img, rng.uniform(0.7, 1.3))
    img = tvf.adjust_contrast(img, rng.uniform(0.7, 1.3))
    img = tvf.adjust_saturation(img, rng.uniform(0.6, 1.4))
    img = tvf.adjust_hue(img, rng.uniform(-0.05, 0.05))
    if rng.uniform() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.0)))
    return img


def make_warped_pair(photo: Image.Image, rng: np.random.Generator, min_kps: int = 8, recolour: bool = True
                     ) -> tuple[Image.Image, Image.Image, np.ndarray, np.ndarray]:
    """(source view, recoloured warped target view, src_kps (K, 2), trg_kps (K, 2)), 10 <= K <= 20 when the
    photo has enough corners. Keypoints in pixel indices, mapped exactly through the warp."""
    src_h, src_size = _random_crop(rng, photo.size)
    src = render_view(photo, src_h, src_size)
    corners = corner_points(src)
    strength = 1.0
    for _ in range(30):
        g, trg_size = _random_warp(rng, src_size, strength)
        mapped = map_points(g, corners)
        keep = _inside(mapped, trg_size)
        if keep.sum() >= min_kps:
            break
        strength *= 0.85
    else:
        raise RuntimeError("could not find a warp keeping enough keypoints")
    idx = np.flatnonzero(keep)
    k = min(len(idx), int(rng.integers(10, 21)))
    idx = np.sort(rng.choice(idx, size=k, replace=False))
    trg = render_view(photo, g @ src_h, trg_size)
    if recolour:
        trg = _recolour(trg, rng)
    return src, trg, corners[idx], mapped[idx]


def make_stereo_pair(long_side: int = 300, num: int = 15
                     ) -> tuple[Image.Image, Image.Image, np.ndarray, np.ndarray]:
    """The Middlebury motorcycle stereo pair resized to `long_side`; left corners with a locally smooth
    ground-truth disparity mapped to the right image (x_r = x_l - d)."""
    import skimage.data as skd

    left, right, disp = skd.stereo_motorcycle()
    h, w = disp.shape
    s = long_side / max(h, w)
    size = (round(w * s), round(h * s))
    left_img = Image.fromarray(left).resize(size, Image.BICUBIC)
    right_img = Image.fromarray(right).resize(size, Image.BICUBIC)
    pts = corner_points(left_img, num=200)
    orig = (pts + 0.5) / s - 0.5  # resized index coordinates -> original index coordinates
    ix = np.clip(np.rint(orig).astype(int), 2, [w - 3, h - 3])
    offs = np.arange(-2, 3)
    win = disp[ix[:, 1, None, None] + offs[None, :, None], ix[:, 0, None, None] + offs[None, None, :]]
    win = win.reshape(len(pts), -1)
    ok = np.isfinite(win).all(1) & (np.ptp(np.where(np.isfinite(win), win, 0), axis=1) < 1.5)
    d = disp[ix[:, 1], ix[:, 0]]
    trg = pts.copy()
    trg[:, 0] = (orig[:, 0] - d + 0.5) * s - 0.5
    ok &= _inside(trg, size, margin=4)
    idx = np.flatnonzero(ok)
    idx = idx[np.linspace(0, len(idx) - 1, min(num, len(idx))).round().astype(int)]
    return left_img, right_img, pts[idx], trg[idx]


# ---------------------------------------------------------------------------------------- generation
def _generate(out: Path, seed: int) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for split_id, (split, photos) in enumerate(SPLIT_PHOTOS.items()):
        pairs = []
        for photo_id, name in enumerate(photos):
            photo = load_photo(name)
            for k in range(PAIRS_PER_PHOTO[split]):
                rng = np.random.default_rng([seed, split_id, photo_id, k])
                src, trg, src_kps, trg_kps = make_warped_pair(photo, rng)
                pairs.append(_save_pair(out, split, name, f"{k:03d}", src, trg, src_kps, trg_kps))
            if split == "test" and name == "motorcycle":
                pairs.append(_save_pair(out, split, name, "stereo", *make_stereo_pair()))
        (out / "pairs").mkdir(parents=True, exist_ok=True)
        (out / "pairs" / f"{split}.json").write_text(json.dumps(pairs, indent=0))
        counts[split] = len(pairs)
    n_unlabelled = 0
    for photo_id, name in enumerate(SPLIT_PHOTOS["trn"]):
        photo = load_photo(name)
        folder = out / "imagefolder" / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(CROPS_PER_PHOTO):
            rng = np.random.default_rng([seed, 99, photo_id, k])
            view = photo if k == 0 else render_view(photo, *_random_crop(rng, photo.size))
            view.save(folder / f"{name}_{k}.png", compress_level=1)
            n_unlabelled += 1
    counts["imagefolder"] = n_unlabelled
    return {"version": DEMO_VERSION, "seed": seed, "counts": counts, "splits": {s: list(p) for s, p in
                                                                                  SPLIT_PHOTOS.items()}}


def _save_pair(out: Path, split: str, photo: str, key: str, src: Image.Image, trg: Image.Image,
               src_kps: np.ndarray, trg_kps: np.ndarray) -> dict[str, Any]:
    folder = out / "images" / split / photo
    folder.mkdir(parents=True, exist_ok=True)
    src_name, trg_name = f"images/{split}/{photo}/{key}_src.png", f"images/{split}/{photo}/{key}_trg.png"
    src.save(out / src_name, compress_level=1)
    trg.save(out / trg_name, compress_level=1)
    return {"pair_name": f"{photo}_{key}", "src": src_name, "trg": trg_name, "class": photo,
            "src_kps": np.round(src_kps, 4).tolist(), "trg_kps": np.round(trg_kps, 4).tolist()}


def _manifest_ok(root: Path, seed: int) -> bool:
    try:
        manifest = json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("version") == DEMO_VERSION and manifest.get("seed") == seed


def ensure_demo_data(root: str | Path | None = None, seed: int = 0) -> Path:
    """Generate the demo benchmark into `root` unless a complete copy for this seed and version is there
    (one made for another seed or version is replaced); returns the folder. Default root:
    `<repo>/.cache/demo` for seed 0, `<repo>/.cache/demo-seed<seed>` otherwise. Deterministic given the
    seed; offline; safe when several processes call it at once (generated in a temporary folder, renamed)."""
    if root is None:
        root = DEFAULT_DEMO_ROOT if seed == 0 else DEFAULT_DEMO_ROOT.with_name(f"demo-seed{seed}")
    root = Path(root)
    if _manifest_ok(root, seed):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        manifest = _generate(tmp, seed)
        (tmp / "demo.json").write_text(json.dumps(manifest, indent=1))
        if _manifest_ok(root, seed):  # another process finished first
            return root
        if root.exists():
            trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _manifest_ok(root, seed):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def demo_imagefolder(root: str | Path | None = None) -> Path:
    """The unlabelled ImageFolder (trn photos) of the demo data, for `TwoViewImageFolder`."""
    return Path(root if root is not None else DEFAULT_DEMO_ROOT) / "imagefolder"


# ------------------------------------------------------------------------------------------- dataset
@register("demo")
class DemoPairs(PairDataset):
    """Demo pairs; `root` = the demo cache folder itself (default `<repo>/.cache/demo`), generated there
    when it holds no `demo.json`. Threshold "bbox" = extent box of the target keypoints (as PF-WILLOW)."""

    folder = ""
    splits = ("trn", "val", "test")
    default_thres = "bbox"
    supported_thres = ("bbox", "img")
    classes = demo_classes()

    def __init__(self, root: str | Path | None = None, split: str = "test", seed: int = 0) -> None:
        if root is not None and not (Path(root) / "demo.json").is_file():
            if Path(root).is_dir() and any(Path(root).iterdir()):
                raise UserError(f"{root} is not a demo data folder (no demo.json) and not empty; omit the "
                                f"root to use {DEFAULT_DEMO_ROOT}, or name a new folder for the demo data")
        root = ensure_demo_data(root, seed=seed)
        super().__init__(root, split)

    def _describe_options(self) -> dict[str, Any]:
        manifest = read_json(self.dir / "demo.json", what="demo manifest")
        return {"demo_seed": manifest.get("seed"), "demo_version": manifest.get("version")}

    def download_hint(self) -> str:
        return "python -c 'import data.demo as d; d.ensure_demo_data()'"

    def split_file(self) -> Path:
        return self.dir / "pairs" / f"{self.split}.json"

    def _read_records(self) -> list[PairRecord]:
        path = self.split_file()
        entries = read_json(path, what="demo pair list")
        records = []
        for n, e in enumerate(entries):
            try:
                src_kps = np.asarray(e["src_kps"], dtype=np.float32).reshape(-1, 2)
                trg_kps = np.asarray(e["trg_kps"], dtype=np.float32).reshape(-1, 2)
                rec = PairRecord(e["pair_name"], e["src"], e["trg"], e["class"],
                                 self.classes.index(e["class"]), {"src_kps": src_kps, "trg_kps": trg_kps})
            except (KeyError, ValueError, TypeError) as err:
                raise UserError(f"{path}: entry {n} is malformed ({err}); delete {self.dir} to regenerate"
                                ) from None
            check_kps(src_kps, trg_kps, f"{path}: entry {n}")
            records.append(rec)
        return records

    def _annotation(self, i: int) -> dict[str, Any]:
        ex = self.records[i].extra
        return {"src_kps": ex["src_kps"], "trg_kps": ex["trg_kps"],
                "src_bbox": extent_box(ex["src_kps"]), "trg_bbox": extent_box(ex["trg_kps"])}
