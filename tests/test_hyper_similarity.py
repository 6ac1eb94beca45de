"""Factorised hyperpixel similarity: agreement with the dense product at real sizes, the HPF window,
the interpolation operators, and per-pair PCK parity of the two matchers on generated and real pairs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from models.backbone import HyperpixelBackbone, hyper_image
from models.hyper_similarity import factorise, factorised_cosine, factorised_dots, interp_matrix
from models.sinkhorn import cosine_similarity
from models.weights import load_resnet
from validation_and_test.evaluate import Matcher, MatchSettings, evaluate

# ResNet-50 ids (2, 12, 13, 15) of a 225 x 300 image: stride 4 -> 57 x 75, 16 -> 15 x 19, 32 -> 8 x 10
R50_SHAPES = {2: (256, 4), 12: (1024, 16), 13: (1024, 16), 15: (2048, 32)}


def _relu_maps(height: int, width: int, seed: int, shapes=R50_SHAPES) -> dict[int, torch.Tensor]:
    """Random post-ReLU-like maps of an image of height x width at the strides of `shapes`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (c, stride) in shapes.items():
        h, w = -(-height // stride), -(-width // stride)  # ResNet grids: ceil(size / stride)
        out[i] = torch.randn(1, c, h, w, generator=g).relu_()
    return out


def _dense(maps, ids, window=(slice(None), slice(None))) -> torch.Tensor:
    return hyper_image(maps, ids)[0][:, window[0], window[1]].flatten(1).t()


def test_interp_matrix_is_the_library_upsampling():
    x = torch.randn(3, 7, 5)
    ref = F.interpolate(x.unsqueeze(0), size=(19, 13), mode="bilinear", align_corners=True)[0]
    got = torch.einsum("yh,chw,xw->cyx", interp_matrix(7, 19), x, interp_matrix(5, 13))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert (interp_matrix(7, 19) != 0).sum(1).max() <= 2  # two non-zeros per row


def test_factorised_cosine_matches_dense_at_real_size():
    """Random ReLU features at the real sizes (two 300 x 225 images, transposed): max abs <= 1e-5."""
    ids = (2, 12, 13, 15)
    src, trg = _relu_maps(225, 300, 0), _relu_maps(300, 225, 1)
    fs, ft = factorise(src, ids), factorise(trg, ids)
    assert fs.n == 57 * 75 and fs.dim == 4352 and len(fs.grids) == 3  # one Gram matrix per stride
    got = factorised_cosine(fs, ft)
    ref = cosine_similarity(_dense(src, ids), _dense(trg, ids))
    assert got.shape == ref.shape == (4275, 4275)
    assert (got - ref).abs().max() <= 1e-5
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.999
    torch.testing.assert_close(fs.norms, _dense(src, ids).norm(dim=1), rtol=1e-5, atol=0)


def test_window_equals_cropping_the_dense_hyperpixels():
    shapes = {0: (8, 4), 1: (8, 4), 3: (16, 8), 5: (16, 16)}
    src, trg = _relu_maps(40, 52, 2, shapes), _relu_maps(36, 44, 3, shapes)
    ids = (0, 1, 3, 5)
    win_s, win_t = (slice(1, 9), slice(2, 12)), (slice(0, 8), slice(1, 10))
    fs, ft = factorise(src, ids, win_s), factorise(trg, ids, win_t)
    ref = _dense(src, ids, win_s) @ _dense(trg, ids, win_t).t()
    torch.testing.assert_close(factorised_dots(fs, ft), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fs.dense(), _dense(src, ids, win_s), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="different id sets"):
        factorised_dots(fs, factorise(trg, (0, 3)))


@pytest.fixture(scope="module")
def r18():
    model, arch, _ = load_resnet("resnet18", "random", seed=0)
    return HyperpixelBackbone(model, arch)


def _parity(backbone, dataset, ids, settings, indices=None):
    """Per-pair rows of the dense and the factorised matcher (one shared block cache)."""
    dense = Matcher(backbone, replace(settings, similarity="dense"), cache_blocks=True)
    fact = Matcher(backbone, replace(settings, similarity="factorised"), cache_blocks=True)
    fact.cache = dense.cache
    return [evaluate(m, dataset, ids, (0.05, 0.1, 0.15), indices=indices).rows for m in (dense, fact)]


@pytest.mark.parametrize("hpf", [False, True])
def test_generated_pairs_score_identically(r18, hpf):
    """Fast twin of the real-data parity runs: demo pairs, CAM marginals (or HPF pruning), every alpha."""
    from data import build_dataset

    dataset = build_dataset("demo", None, "test")
    dense, fact = _parity(r18, dataset, (2, 3, 5), MatchSettings(long_side=160, hpf=hpf), range(4))
    assert dense == fact


def test_real_spair_pairs_score_identically(realdata_root, r18):
    """Real SPair-71k pairs at small size (long side 160), SPair preset settings (exp2 1.0)."""
    from data import build_dataset

    if not (realdata_root / "SPair-71k" / "PairAnnotation" / "test").is_dir():
        pytest.skip("SPair-71k real data not available")
    dataset = build_dataset("spair", realdata_root, "test")
    dense, fact = _parity(r18, dataset, (2, 3, 5), MatchSettings(exp2=1.0, long_side=160), range(4))
    assert dense == fact


@pytest.mark.slow
def test_real_pfwillow_hundred_pairs_parity(realdata_root):
    """100 PF-WILLOW pairs (every 9th, all classes) at small size (long side 160), random ResNet-50, preset
    ids: at least 99.5 % of the pairs identical at every alpha and the dataset PCK within 0.1 point (full
    size: bench/similarity_parity.py, too slow for the suite)."""
    from data import build_dataset

    model, arch, _ = load_resnet("resnet50", "random", seed=0)
    dataset = build_dataset("pfwillow", realdata_root, "test")
    dense, fact = _parity(HyperpixelBackbone(model, arch), dataset, (2, 11, 12, 13, 14),
                          MatchSettings(long_side=160), range(0, 900, 9))
    same = sum(a == b for a, b in zip(dense, fact))
    assert same >= 0.995 * len(dense)
    for key in ("pck_0.05", "pck_0.1", "pck_0.15"):
        mean = [sum(r[key] for r in rows) / len(rows) for rows in (dense, fact)]
        assert abs(mean[0] - mean[1]) <= 0.1
