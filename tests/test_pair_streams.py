"""The GPU speed-up paths forced on the CPU give today's per-pair numbers: concurrent images of a pair
(`ConcurrentMatcher`), the CUDA branches of RHM (`rhm.CUDA_PATHS_ON_CPU`), a prefetching loader."""

from __future__ import annotations

import pytest
import torch

import models.rhm as rhm
from bench.lookalike import LookalikePairs
from models.backbone import HyperpixelBackbone
from models.weights import load_resnet
from validation_and_test.evaluate import Matcher, MatchSettings, evaluate
from validation_and_test.pair_streams import ConcurrentMatcher

IDS = (2, 4, 6)
SETTINGS = MatchSettings(long_side=160)  # the look-alike images are small: no upscaling to 300 px


@pytest.fixture(scope="module")
def backbone() -> HyperpixelBackbone:
    model, arch, _ = load_resnet("resnet18", "random", seed=0)
    return HyperpixelBackbone(model, arch)


def _predictions(matcher, dataset) -> list[torch.Tensor]:
    preds: list[torch.Tensor] = []
    def keep(sample, pred, correct) -> None:
        preds.append(torch.cat([pred.pred, correct.float().t()], 1))

    evaluate(matcher, dataset, IDS, on_pair=keep)
    return preds


def test_concurrent_and_cuda_style_paths_equal_todays_pipeline(backbone, monkeypatch):
    ds = LookalikePairs(3, size=(100, 132), n_kps=6)  # 6 pairs, each image in 4
    plain = Matcher(backbone, SETTINGS, "cpu")
    want = _predictions(plain, ds)
    monkeypatch.setattr(rhm, "CUDA_PATHS_ON_CPU", True)
    fast = ConcurrentMatcher(backbone, SETTINGS, "cpu", concurrent=True)
    got = _predictions(fast, ds)
    assert len(got) == len(want) == 6
    for a, b in zip(want, got):
        assert torch.equal(a, b)  # keypoints and per-alpha correctness, bit for bit
    assert (fast.cache.hits, fast.cache.misses) == (plain.cache.hits, plain.cache.misses) == (9, 3)


def test_concurrent_matcher_without_names_and_with_loader_workers(backbone):
    ds = LookalikePairs(2, size=(96, 128), n_kps=4)
    sample = ds[0]
    unnamed = {k: v for k, v in sample.items() if k not in ("src_name", "trg_name")}
    want = Matcher(backbone, SETTINGS, "cpu").predict_pair(unnamed, IDS)
    got = ConcurrentMatcher(backbone, SETTINGS, "cpu", concurrent=True).predict_pair(unnamed, IDS)
    assert torch.equal(want.pred, got.pred) and want.n_uncovered == got.n_uncovered
    res0 = evaluate(ConcurrentMatcher(backbone, SETTINGS, "cpu", concurrent=True), ds, IDS)
    res2 = evaluate(ConcurrentMatcher(backbone, SETTINGS, "cpu", concurrent=True), ds, IDS,
                    num_workers=2)
    assert res0.rows == res2.rows and res0.n_pairs == 2


def test_concurrent_matcher_reraises_errors_from_its_threads(backbone, monkeypatch):
    ds = LookalikePairs(2, size=(96, 128), n_kps=4)
    m = ConcurrentMatcher(backbone, SETTINGS, "cpu", concurrent=True)

    def boom(*a, **k):
        raise RuntimeError("backbone failed")

    monkeypatch.setattr(m, "_blocks", boom)
    with pytest.raises(RuntimeError, match="backbone failed"):
        m.predict_pair(ds[0], IDS)
    assert m._ready == {}


@torch.no_grad()
def test_real_pairs_identical_with_forced_cuda_paths(backbone, realdata_root, monkeypatch):
    from data import build_dataset

    for name, exp2, n in (("spair", 1.0, 1), ("pfwillow", 0.5, 1)):
        ds = build_dataset(name, realdata_root, "test")
        settings = MatchSettings(exp2=exp2, long_side=160)
        monkeypatch.setattr(rhm, "CUDA_PATHS_ON_CPU", False)
        want = [Matcher(backbone, settings, "cpu").predict_pair(ds[i], IDS).pred for i in range(n)]
        monkeypatch.setattr(rhm, "CUDA_PATHS_ON_CPU", True)
        fast = ConcurrentMatcher(backbone, settings, "cpu", concurrent=True)
        got = [fast.predict_pair(ds[i], IDS).pred for i in range(n)]
        assert all(torch.equal(a, b) for a, b in zip(want, got)), name
