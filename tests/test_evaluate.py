"""End-to-end matching on synthetic pairs: identity and translation sanity, cache equivalence, HPF mode."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import ListDataset, perturb_like_bf16
from skimage import data as skdata

from models.backbone import HyperpixelBackbone
from models.weights import load_resnet
from validation_and_test.evaluate import Matcher, MatchSettings, evaluate
from validation_and_test.feature_cache import FeatureCache
from validation_and_test.matcher import resolve_layout

IDS = (2, 3)  # ResNet-18: layer1 block 2 (stride 4), layer2 block 1; random weights: low layers match best
LAYOUTS = {"pfpascal": "img", "pfwillow": "bbox", "spair": "bbox"}


def _photo(name: str, long_side: int = 200) -> torch.Tensor:
    img = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).contiguous()
    height, width = img.shape[-2:]
    step = max(1, max(height, width) // long_side)
    return img[:, ::step, ::step].contiguous()


def _kps(img: torch.Tensor, k: int, seed: int, margin: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    height, width = img.shape[-2:]
    return torch.stack([torch.rand(k, generator=g) * (width - 2 * margin) + margin,
                        torch.rand(k, generator=g) * (height - 2 * margin) + margin], dim=1)


def _sample(index, src, trg, src_kps, trg_kps, src_name, trg_name, layout="pfwillow"):
    def extent(k):
        return torch.cat([k.min(0).values, k.max(0).values])

    trg_box = extent(trg_kps) if layout == "pfwillow" else torch.tensor(
        [8.0, 6.0, trg.shape[-1] - 10.0, trg.shape[-2] - 4.0])
    sample = {"index": index, "pair_name": f"{src_name}-{trg_name}", "src_name": src_name,
              "trg_name": trg_name,
              "class_name": src_name.split("/")[0], "class_id": 0, "src_img": src, "trg_img": trg,
              "src_kps": src_kps.float(), "trg_kps": trg_kps.float(), "src_bbox": extent(src_kps),
              "trg_bbox": trg_box}
    if layout == "spair":
        sample.update(viewpoint_variation=0, scale_variation=1, truncation=0, occlusion=0)
    return sample


@pytest.fixture(scope="module")
def backbone():
    model, arch, _ = load_resnet("resnet18", "random", seed=0)
    return HyperpixelBackbone(model, arch)


PHOTOS = ("chelsea", "astronaut", "coffee")


@pytest.fixture(scope="module")
def matcher160(backbone):
    return Matcher(backbone, MatchSettings(long_side=160))  # shared: its cache spans the layouts


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_identical_photos_transfer_exactly(matcher160, layout):
    matcher = matcher160
    hits = matcher.cache.hits
    samples = []
    for i, name in enumerate(PHOTOS):
        img = _photo(name)
        kps = _kps(img, 10, seed=i)
        samples.append(_sample(i, img, img, kps, kps, f"{name}/a", f"{name}/a", layout))
    ds = ListDataset(samples, name=layout, default_thres=LAYOUTS[layout])
    result = evaluate(matcher, ds, IDS)
    assert result.n_pairs == 3
    assert result.summary["pck"]["0.1"] == 100.0 and result.summary["pck"]["0.15"] == 100.0
    assert result.summary["pck"]["0.05"] >= 99.0
    assert [r["index"] for r in result.rows] == [0, 1, 2]
    assert matcher.cache.hits - hits >= 3  # at least every target is the cached source
    if layout == "spair":
        assert "per_difficulty" in result.summary


def test_identity_at_full_resolution(backbone):
    """One faithful 300-px pair (SCOT resize, CAM on, one Sinkhorn update)."""
    img = _photo("chelsea", long_side=400)
    kps = _kps(img, 12, seed=5)
    ds = ListDataset([_sample(0, img, img, kps, kps, "cat/a", "cat/a", "pfpascal")], "pfpascal", "img")
    result = evaluate(Matcher(backbone, MatchSettings()), ds, IDS)
    assert result.summary["pck"]["0.05"] >= 99.0 and result.summary["pck"]["0.1"] == 100.0


def test_translated_copy(backbone):
    matcher = Matcher(backbone, MatchSettings(long_side=160))
    samples = []
    for i, name in enumerate(PHOTOS):
        img = _photo(name)
        height, width = img.shape[-2:]
        dx, dy = 20, 12
        trg = torch.zeros_like(img)
        trg[:, dy:, dx:] = img[:, : height - dy, : width - dx]
        kps = _kps(img, 10, seed=10 + i, margin=30)
        samples.append(_sample(i, img, trg, kps, kps + torch.tensor([dx, dy]), f"{name}/a", f"{name}/b",
                               "pfpascal"))
    result = evaluate(matcher, ListDataset(samples, "pfpascal", "img"), IDS)
    assert result.summary["pck"]["0.1"] >= 90.0


def _pairs(n_images=2):
    imgs = {name: _photo(name, 120) for name in PHOTOS[:n_images]}
    samples = []
    for i, (a, b) in enumerate([(a, b) for a in imgs for b in imgs if a != b]):
        src, trg = imgs[a], imgs[b]
        src_kps = _kps(src, 6, seed=i, margin=10)
        trg_kps = _kps(trg, 6, seed=100 + i, margin=10)
        samples.append(_sample(i, src, trg, src_kps, trg_kps, f"{a}/x", f"{b}/x"))
    return ListDataset(samples)


def test_cache_gives_the_same_numbers_as_recomputing(backbone):
    ds = _pairs()
    settings = MatchSettings(long_side=120)
    cached = Matcher(backbone, settings, cache_mb=512)
    uncached = Matcher(backbone, settings, cache_mb=0)
    blocks = Matcher(backbone, settings, cache_mb=512, cache_blocks=True)
    results = [evaluate(m, ds, IDS) for m in (cached, uncached, blocks)]
    assert cached.cache.hits == len(ds) * 2 - 2 and uncached.cache.hits == 0
    assert results[0].rows == results[1].rows == results[2].rows
    for i in range(len(ds)):  # bit-identical confidences
        s = ds[i]
        feats = [(m.image_features(s["src_img"], IDS, s["src_name"]),
                  m.image_features(s["trg_img"], IDS, s["trg_name"])) for m in (cached, uncached, blocks)]
        confs = [m.confidence(*f) for m, f in zip((cached, uncached, blocks), feats)]
        assert torch.equal(confs[0], confs[1]) and torch.equal(confs[0], confs[2])
    # another id set reuses the cached blocks (no backbone pass) and equals a fresh computation
    before = blocks.cache.misses
    rows = evaluate(blocks, ds, (0, 5), alphas=(0.1,)).rows
    assert blocks.cache.misses == before
    assert rows == evaluate(Matcher(backbone, settings), ds, (5, 0), alphas=(0.1,)).rows


def test_feature_cache_is_bounded_lru():
    cache = FeatureCache(max_mb=1.0)
    mb = torch.zeros(2**18)  # 1 MiB float32
    half = torch.zeros(2**17)
    cache.put("a", half)
    cache.put("b", half)
    assert cache.get("a") is half  # a becomes most recent
    cache.put("c", half)  # evicts b
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.bytes <= cache.max_bytes
    cache.put("big", torch.cat([mb, half]))  # larger than the budget: not stored
    assert "big" not in cache
    calls = []
    assert cache.get_or_compute("d", lambda: calls.append(1) or half) is half
    assert cache.get_or_compute("d", lambda: calls.append(1) or half) is half
    assert calls == [1]


def test_hpf_mode_prunes_boxes_and_keeps_small_images(backbone):
    img = _photo("chelsea", 120)  # long side < 300: HPF does not resize, SCOT would upscale
    matcher = Matcher(backbone, MatchSettings(hpf=True))
    feats = matcher.image_features(img, IDS)
    height, width = img.shape[-2:]
    assert feats.scale == 1.0 and feats.size == (width, height)
    j = backbone.jumps[2]
    b = feats.boxes
    assert ((b[:, 0] >= -j) & (b[:, 1] >= -j) & (b[:, 2] < width + j) & (b[:, 3] < height + j)).all()
    full = Matcher(backbone, MatchSettings(hpf=False, long_side=max(height, width))).image_features(img, IDS)
    assert full.scale == 1.0 and feats.feats.shape[0] < full.feats.shape[0]
    assert feats.weights is None  # no OT marginals in HPF mode
    kps = _kps(img, 8, seed=3)
    result = evaluate(matcher, ListDataset([_sample(0, img, img, kps, kps, "c/a", "c/a")]), IDS)
    assert result.summary["pck"]["0.1"] == 100.0


@pytest.mark.parametrize("sim", ["OT", "cos", "cosGeo"])
def test_other_similarities_and_uniform_marginals(backbone, sim):
    img = _photo("astronaut", 120)
    kps = _kps(img, 8, seed=4)
    ds = ListDataset([_sample(0, img, img, kps, kps, "a/a", "a/a")])
    matcher = Matcher(backbone, MatchSettings(sim=sim, classmap=0, long_side=120))
    assert evaluate(matcher, ds, IDS).summary["pck"]["0.1"] == 100.0
    assert matcher.timings["cam"] < 1e-3  # CAM not computed


def test_shards_cover_every_pair_once():
    from configs.runtime import DistInfo
    from validation_and_test.evaluate import shard_indices

    for n, max_pairs, world in [(10, None, 3), (7, 5, 2), (2, None, 4)]:
        infos = [DistInfo(r, world, r, torch.device("cpu")) for r in range(world)]
        shards = [shard_indices(n, max_pairs, info) for info in infos]
        assert sum(shards, []) == list(range(min(n, max_pairs or n)))
    assert shard_indices(5, None, None) == [0, 1, 2, 3, 4]


def test_confidence_per_sim_matches_closed_forms(backbone):
    """The table of docs/protocol.md, Optimal transport: cos = relu(S)^exp1, OT = (Ns T)^exp2 of one Sinkhorn
    step (closed form; exp1 ignored), the Geo variants = RHM of those votes, HPF = RHM of relu(S)^3; features
    are left untouched."""
    from models.rhm import regularized_hough_matching

    src_img, trg_img = _photo("chelsea", 64), _photo("coffee", 64)

    def conf(**kw):
        m = Matcher(backbone, MatchSettings(classmap=0, long_side=64, **kw))
        src, trg = m.image_features(src_img, IDS), m.image_features(trg_img, IDS)
        before = src.feats.clone()
        out = m.confidence(src, trg).double()
        assert torch.equal(src.feats, before)
        return out, src, trg

    got, src, trg = conf(sim="cos", exp1=2.0)
    f, g = src.feats.double(), trg.feats.double()
    s = (f @ g.t()) / torch.outer(f.norm(dim=1), g.norm(dim=1))
    torch.testing.assert_close(got, s.clamp(min=0) ** 2, rtol=1e-5, atol=1e-6)
    geo, _, _ = conf(sim="cosGeo", exp1=2.0)
    rhm = regularized_hough_matching(got.float(), src.centers, trg.centers, src.size, trg.size).double()
    torch.testing.assert_close(geo, rhm, rtol=1e-5, atol=1e-9)
    hpf, hs, ht = conf(hpf=True)
    fh, gh = hs.feats.double(), ht.feats.double()
    cube = ((fh @ gh.t()) / torch.outer(fh.norm(dim=1), gh.norm(dim=1))).clamp(min=0) ** 3
    ref = regularized_hough_matching(cube.float(), hs.centers, ht.centers, hs.size, ht.size).double()
    torch.testing.assert_close(hpf, ref, rtol=1e-4, atol=1e-9)

    kernel = torch.exp(-(1 - s.clamp(min=0)) / 0.05)
    n_s, n_t = kernel.shape
    b = n_s * torch.full((n_t,), 1 / n_t, dtype=torch.float64) / kernel.sum(0)
    a = torch.full((n_s,), 1 / n_s, dtype=torch.float64) / (kernel @ b)
    plan = a[:, None] * kernel * b[None, :]
    for exp1 in (1.0, 3.0):  # exp1 plays no role in the OT path
        ot, _, _ = conf(sim="OT", exp1=exp1, exp2=0.5)
        torch.testing.assert_close(ot, (n_s * plan).clamp(min=0) ** 0.5, rtol=1e-4, atol=1e-7)


def test_fast_bf16_backbone_keeps_float32_features_within_the_rounding_floor(backbone):
    """`--fast` runs the backbone and CAM under bf16 autocast (forced here: this CPU may have no native bf16,
    where `fast` alone keeps float32). Features reach matching as float32, and their distance to float32 is
    within twice the floor that float32 reaches with every conv input and weight moved by +-2^-8 (bf16's
    unit roundoff; a rounding moves a value by at most that, typically by less: 2x is margin, not fit)."""
    img = _photo("chelsea")
    height, width = img.shape[-2:]
    trg = torch.zeros_like(img)
    trg[:, 12:, 20:] = img[:, : height - 12, : width - 20]
    kps = _kps(img, 10, seed=3, margin=30)
    sample = _sample(0, img, trg, kps, kps + torch.tensor([20, 12]), "cat/a", "cat/b", "pfpascal")
    settings = MatchSettings(long_side=160, fast=True)
    fast = Matcher(backbone, settings, bf16=True)
    bf16_map = fast._blocks(img, IDS).maps[IDS[-1]]
    fp32_map = Matcher(backbone, MatchSettings(long_side=160))._blocks(img, IDS).maps[IDS[-1]]
    jittered = copy.deepcopy(backbone)
    perturb_like_bf16(jittered, seed=0)
    jittered_map = Matcher(jittered, MatchSettings(long_side=160))._blocks(img, IDS).maps[IDS[-1]]
    floor = (jittered_map - fp32_map).norm()
    assert bf16_map.dtype == torch.float32 and not torch.equal(bf16_map, fp32_map)  # autocast applied
    assert 0 < floor < 0.05 * fp32_map.norm()  # the floor is informative
    assert (bf16_map - fp32_map).norm() <= 2 * floor
    assert torch.isfinite(fast.predict_pair(sample, IDS).pred).all()
    assert Matcher(backbone, settings, bf16=False).bf16 is False
    path = fast.bf16_path  # native_bf16's answer on this machine, or "emulated"
    assert fast.precision("float32") == f"bf16 backbone ({path})"
    assert fast.precision("tf32") == f"tf32 + bf16 backbone ({path})"
    assert Matcher(backbone, settings, bf16=False).precision("tf32") == "tf32"


@pytest.mark.parametrize("path", ["amx", "avx512_bf16", None])
def test_fast_uses_bf16_exactly_where_the_device_has_native_kernels(backbone, monkeypatch, path):
    import validation_and_test.matcher as matcher_module

    monkeypatch.setattr(matcher_module, "native_bf16", lambda device: path)
    fast = Matcher(backbone, MatchSettings(long_side=160, fast=True))
    assert fast.bf16 is (path is not None)
    assert fast.numerics({"device": "cpu", "precision": "float32"}) == {
        "device": "cpu", "layout": "channels_last",
        "precision": f"bf16 backbone ({path})" if path else "float32"}
    assert Matcher(backbone, MatchSettings(long_side=160)).bf16 is False  # never without --fast


def test_layout_auto_is_channels_last_on_the_cpu_and_matching_gets_contiguous_maps(backbone):
    assert resolve_layout("auto", torch.device("cpu")) == "channels_last"
    assert resolve_layout("auto", torch.device("cuda")) == "contiguous"
    assert resolve_layout("contiguous", torch.device("cpu")) == "contiguous"
    img = _photo("chelsea")
    fast = Matcher(backbone, MatchSettings(long_side=160))
    plain = Matcher(backbone, MatchSettings(long_side=160, layout="contiguous"))
    seen = []
    hook = backbone.net.conv1.register_forward_hook(
        lambda mod, args, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)))
    a = fast._blocks(img, IDS)
    b = plain._blocks(img, IDS)
    hook.remove()
    assert fast.layout == "channels_last" and seen == [True, True, True, False, False, False]  # 3 passes
    assert all(p.is_contiguous() for p in backbone.parameters())  # the shared network is left as given
    # float32 in another summation order: (convolutions up to layer2) x (sum length 9 x 128) x 2^-24
    bound = 8 * 9 * 128 * 2.0 ** -24
    for i in IDS:
        assert a.maps[i].is_contiguous()
        assert (a.maps[i] - b.maps[i]).norm() <= bound * b.maps[i].norm(), i
    # the CAM (values in [0, 1)): all ResNet-18 convolutions (20), sums up to 9 x 512 long
    assert (a.cam - b.cam).abs().max() <= 20 * 9 * 512 * 2.0 ** -24
