"""Layer search: beam-search mechanics and the original's quirks, the block cache, both scores, the CLI.

End-to-end runs use the demo benchmark (val split, 2 pairs) with a random ResNet-18 and the demo preset
shrunk to long side 96 (a `--config` that inherits `configs/eval/demo.yaml`), passed to both the search
and test.py, so the found set's score is checked against an independent test.py run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import shlex

import pytest
import torch
from helpers import assert_one_line_error, write_small_willow

from configs.runtime import UserError
from models.cycle import soft_argmax_walk
from validation_and_test.config import parse_ids
from validation_and_test.layer_scores import (
    CycleScore,
    CycleScoreSettings,
    attention_peak,
    crop_cell_targets,
    crop_image,
    crop_to_source,
    make_crop_spec,
    pair_augmentation,
    receptive_field_centres,
)
from validation_and_test.layer_search import (
    BeamSettings,
    beam_search,
    default_search_split,
    resolve_search_config,
)

LONG_SIDE = 96
COMMON = ["--dataset", "demo", "--weights", "random", "--backbone", "resnet18", "--max-pairs", "2",
          "--beam", "2", "--depth", "2", "--bases", "2-3", "--candidates", "2-6"]


# ----------------------------------------------------------------------------------- search mechanics
def _additive(weights):
    calls = []

    def score(ids):
        calls.append(ids)
        return float(sum(weights[i] for i in ids))

    return score, calls


def test_full_beam_enumerates_every_set_and_finds_brute_force_best():
    weights = [3.0, -1.0, 2.5, 0.5, -4.0]
    pairwise = {(1, 3): 6.0, (0, 4): 9.0}  # interactions a greedy search would miss at depth 2

    def score(ids):
        return sum(weights[i] for i in ids) + sum(v for k, v in pairwise.items() if set(k) <= set(ids))

    result = beam_search(score, 5, BeamSettings(beam=1000, depth=3))
    every = [c for k in (1, 2, 3) for c in itertools.combinations(range(5), k)]
    assert sorted(c.ids for c in result.scored) == sorted(every)  # each set once, depth = max size
    brute = max(every, key=score)
    assert result.best.ids == brute and result.best.score == pytest.approx(score(brute))
    assert all(c.depth == len(c.ids) for c in result.scored)


def test_duplicates_continue_versus_original_break():
    # depth 1 keeps {0}, {1}; depth 2 keeps {0,1}, {0,2}; at depth 3 parent {0,2} first meets {0,1,2} (dup)
    score, _ = _additive([10.0, 5.0, 4.0, 1.0])
    cont = beam_search(score, 4, BeamSettings(beam=2, depth=3))
    brk = beam_search(score, 4, BeamSettings(beam=2, depth=3, on_duplicate="break"))
    depth3 = lambda r: [c.ids for c in r.scored if c.depth == 3]  # noqa: E731
    assert cont.beams[:2] == [[(0,), (1,)], [(0, 1), (0, 2)]]
    assert depth3(cont) == [(0, 1, 2), (0, 1, 3), (0, 2, 3)]
    assert depth3(brk) == [(0, 1, 2), (0, 1, 3)]
    assert (cont.skipped_duplicates, cont.stopped_by_break, brk.stopped_by_break) == (1, 0, 1)


def test_bases_candidates_ties_and_parsing():
    score, calls = _additive([1.0, 1.0, 1.0, 1.0, 1.0, 7.0])
    result = beam_search(score, 6, BeamSettings(beam=2, depth=2, bases=parse_ids("0-3")))
    assert calls[:4] == [(0,), (1,), (2,), (3,)]  # original bases range(beam) style, id 5 never a base
    assert result.beams[0] == [(0,), (1,)]  # ties keep scoring order
    assert result.best.ids == (0, 5)  # id 5 still reachable as an extension
    restricted = beam_search(score, 6, BeamSettings(beam=2, depth=2, candidates=(0, 1, 2)))
    assert all(5 not in c.ids or len(c.ids) == 1 for c in restricted.scored)
    assert all(c.parent is None or c.ids[0] == c.parent[0] for c in result.scored)  # the base stays the min
    assert parse_ids("2,5,7-9") == [2, 5, 7, 8, 9] and parse_ids("(2, 12, 13)") == [2, 12, 13]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_ids("3-1")
    with pytest.raises(UserError, match="out of range"):
        beam_search(score, 6, BeamSettings(bases=(0, 9)))
    nan_first = beam_search(lambda ids: math.nan if ids == (0,) else -float(sum(ids)), 3,
                            BeamSettings(beam=1, depth=1))
    assert nan_first.best.ids == (1,)  # NaN ranks last


def test_split_defaults_and_test_py_settings():
    assert default_search_split("pfpascal") == ("val", False)
    assert default_search_split("spair") == ("val", False)
    assert default_search_split("pfwillow") == ("test", True)  # no val split: flagged test-tuned
    import argparse

    from validation_and_test.config import resolve_config

    for name in ("pfpascal", "pfwillow", "spair", "demo"):
        cfg, preset, fell_back = resolve_search_config({"dataset": name, "classmap": 0})
        ref, ref_preset, _ = resolve_config(argparse.Namespace(config=None, dataset=name, classmap=0))
        assert preset == ref_preset and cfg.split == default_search_split(name)[0]
        for key in ("sim", "exp1", "exp2", "eps", "sinkhorn_iters", "classmap", "thres", "long_side", "hpf"):
            assert getattr(cfg, key) == getattr(ref, key), (name, key)
    assert resolve_search_config({"dataset": "spair"})[0].exp2 == 1.0


# ----------------------------------------------------------------------------------- cycle geometry
@pytest.mark.parametrize("flip,angle", [(False, 0.0), (True, 7.0), (False, -9.5)])
def test_crop_samples_where_its_ground_truth_says(flip, angle, monkeypatch):
    width, height, jump = 96, 64, 4  # non-square
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    coords = torch.stack([xs, ys, torch.ones_like(xs)]).float()[None]  # the image holds its own coordinates
    monkeypatch.setattr("validation_and_test.layer_scores.pair_augmentation", lambda *a: (flip, angle))
    spec = make_crop_spec(3, (width, height), (60.5, 30.5), CycleScoreSettings(patch=48))
    crop = crop_image(coords, spec)[0]
    if angle == 0.0 and not flip:
        ox, oy = spec.origin
        assert torch.allclose(crop, coords[0, :, oy:oy + 48, ox:ox + 48], atol=1e-4)
    grid = 48 // jump
    gt, valid = crop_cell_targets(spec, grid, grid, jump)
    centres = receptive_field_centres(grid, grid, jump).long()  # crop pixel (u j, v j) has centre u j + 1/2
    sampled = crop[:2, centres[:, 1], centres[:, 0]].t()
    inside = valid & (gt[:, 0] > 1) & (gt[:, 0] < width - 1) & (gt[:, 1] > 1) & (gt[:, 1] < height - 1)
    assert inside.sum() > 0.8 * len(inside)
    assert torch.allclose(sampled[inside], gt[inside], atol=1e-3)
    assert torch.allclose(crop_to_source(spec, torch.tensor([[24.0, 24.0]])).float(),
                          torch.tensor([[60.5, 30.5]]), atol=0.75)  # the crop is centred on the peak


def test_attention_peak_and_keyed_augmentation():
    final = torch.zeros(1, 2, 2, 3)  # cells (1, 0); (0, 1) = (1, 0.5); (1, 2) = (0, 1): mean (5/6, 1/4)
    final[0, 0] = 1.0
    final[0, 1, 0, 1] = 0.5
    final[0, :, 1, 2] = torch.tensor([0.0, 1.0])
    assert attention_peak(final, 32) == (32 + 0.5, 0.5)
    assert pair_augmentation(0, 5, 0.5, 10.0) == pair_augmentation(0, 5, 0.5, 10.0)
    draws = {pair_augmentation(0, i, 0.5, 10.0) for i in range(20)}
    assert len(draws) == 20 and all(abs(a) <= 10.0 for _, a in draws)
    assert any(f for f, _ in draws) and not all(f for f, _ in draws)


def test_the_scorer_walk_recovers_the_origin_with_perfect_features():
    g = torch.Generator().manual_seed(0)
    f1 = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    perm = torch.randperm(30, generator=g)
    f2 = f1[perm]  # the target is a shuffled copy of the source
    idx = torch.tensor([4, 17, 29, 0])
    centres = receptive_field_centres(5, 6, 8)
    pred = soft_argmax_walk(f1[idx].t()[None], f1.t()[None], f2.t()[None], 0.0007, centres)[0][0]
    assert torch.allclose(pred, centres[idx], atol=1e-4)


# ----------------------------------------------------------------------------------- end to end (demo)
@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    from configs import CONFIG_DIR

    path = tmp_path_factory.mktemp("cfg") / "demo_tiny.yaml"
    path.write_text(f"_base_: {CONFIG_DIR / 'eval' / 'demo.yaml'}\nlong_side: {LONG_SIDE}\nnum_workers: 0\n")
    return str(path)


@pytest.fixture(scope="module")
def backbone18():
    from models.backbone import HyperpixelBackbone
    from models.weights import load_resnet

    model, arch, _ = load_resnet("resnet18", "random", 0)
    return HyperpixelBackbone(model, arch)


@pytest.fixture(scope="module")
def demo_val():
    from data import build_dataset

    return build_dataset("demo", None, "val")


def test_block_cache_gives_the_direct_features(backbone18, demo_val):
    from validation_and_test.evaluate import Matcher, MatchSettings
    from validation_and_test.preprocess import prepare_image

    settings = MatchSettings(long_side=LONG_SIDE)
    cached = Matcher(backbone18, settings, cache_blocks=True)
    direct = Matcher(backbone18, settings)
    img = demo_val[0]["src_img"]
    for ids in [(2, 5, 7), (0, 3)]:
        a = cached.image_features(img, ids, key="src0")
        b = direct.image_features(img, ids)
        assert torch.equal(a.feats, b.feats) and torch.equal(a.weights, b.weights)
        assert torch.equal(a.centers, b.centers) and a.size == b.size and a.scale == b.scale
    assert cached.image_features(img, (1, 8), key="src0").feats.shape[1] == 64 + 512
    assert cached.cache.stats()["misses"] == 1  # one backbone + CAM run for every id set

    scorer = CycleScore(backbone18, demo_val, [0], CycleScoreSettings(long_side=LONG_SIDE))
    src, _, crop, spec = scorer.pair_blocks(0)
    x, _ = prepare_image(img, "scot", LONG_SIDE)
    ref = backbone18.forward_blocks(x, [4, 8]).maps
    assert torch.equal(src.maps[4], ref[4]) and torch.equal(src.maps[8], ref[8])
    ref_crop = backbone18.forward_blocks(crop_image(x, spec), [2]).maps[2]
    assert torch.equal(crop.maps[2], ref_crop)


@pytest.fixture(scope="module")
def pck_search(tmp_path_factory, tiny_config):
    from validation_and_test.beamsearch import main

    out = tmp_path_factory.mktemp("search_pck")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*COMMON, "--config", tiny_config, "--output-dir", str(out), "--progress"]) == 0
    doc = json.loads((out / "search.json").read_text())
    doc["_printed"] = printed.getvalue()
    doc["_files"] = sorted(p.name for p in out.iterdir())
    return doc


def test_pck_search_json_and_table(pck_search):
    doc = pck_search
    assert doc["complete"] and doc["score"] == "pck" and doc["split"] == "val" and not doc["test_tuned"]
    assert doc["weights"] == {"weights": "random", "seed": 0, "arch": "resnet18"}
    assert doc["search"]["bases"] == [2, 3] and doc["search"]["on_duplicate"] == "continue"
    assert doc["matching"]["classmap"] == 1 and doc["matching"]["long_side"] == LONG_SIDE
    assert doc["thres"] == "bbox"
    ids = [tuple(c["ids"]) for c in doc["scored"]]
    assert ids[:2] == [(2,), (3,)] and len(ids) == len(set(ids)) and max(map(len, ids)) == 2
    best = max(doc["scored"], key=lambda c: c["score"])
    assert doc["best"]["score"] == best["score"]
    assert doc["cache"]["misses"] == 4  # 2 pairs = 4 images, each through the backbone once
    assert doc["sample_cache"]["misses"] == 2  # each pair decoded once
    table = doc["_printed"]
    assert "depth 1: 2 candidate(s)" in table and "depth 2:" in table
    assert f"{doc['best']['score']:.4f}" in table and "test.py" in table
    assert doc["_files"] == ["search.json"]  # its lock is gone once the search is complete


def test_pck_score_equals_an_independent_test_py_run(pck_search, tmp_path):
    from validation_and_test.test import main as run_test_py

    argv = shlex.split(pck_search["test_command"])[2:]
    assert run_test_py([*argv, "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n_pairs"] == 2 and results["split"] == "val"
    assert results["pck"]["0.1"] == pck_search["best"]["score"]


def test_cycle_search_runs_and_rescores_independently(tmp_path, tiny_config, backbone18, demo_val):
    from validation_and_test.beamsearch import main

    argv = [*COMMON[:-2], "--candidates", "2-4", "--config", tiny_config, "--output-dir", str(tmp_path),
            "--score", "cycle", "--crop-seed", "3", "--duplicate", "break"]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "search.json").read_text())
    assert doc["score"] == "cycle" and doc["cycle"]["seed"] == 3 and len(doc["cycle"]["crops"]) == 2
    assert doc["search"]["on_duplicate"] == "break" and doc["search"]["candidates"] == [2, 3, 4]
    assert all(c["score"] < 0 for c in doc["scored"])
    fresh = CycleScore(backbone18, demo_val, [1, 0], CycleScoreSettings(seed=3, long_side=LONG_SIDE))
    assert fresh(tuple(doc["best"]["ids"])) == pytest.approx(doc["best"]["score"], rel=1e-6, abs=1e-6)
    crop1 = [c for c in doc["cycle"]["crops"] if c["index"] == 1][0]
    spec1 = fresh.specs[1]  # keyed by pair index, independent of which other pairs are scored
    assert (spec1.flip, list(spec1.origin)) == (crop1["flip"], crop1["origin"])


def test_cli_errors_are_one_line(capsys, tiny_config, tmp_path):
    from configs.runtime import run_cli
    from validation_and_test.beamsearch import main

    with pytest.raises(SystemExit) as exc:
        run_cli(main, [*COMMON[:-4], "--bases", "0-20", "--config", tiny_config, "--output-dir",
                         str(tmp_path / "out")])
    assert exc.value.code == 2
    assert_one_line_error(exc.value.code, capsys.readouterr().err, "out of range")


@pytest.mark.parametrize("source", ["generated", "real"])
def test_pfwillow_searches_test_and_says_so(source, request, tmp_path):
    """PF-WILLOW has no val split: the search falls back to test and says so (generated, real data)."""
    from validation_and_test.beamsearch import main

    root = (request.getfixturevalue("realdata_root") if source == "real"
            else write_small_willow(tmp_path / "root", n_rows=1))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--dataset", "pfwillow", "--datapath", str(root), "--weights", "random",
                     "--backbone", "resnet18", "--max-pairs", "1", "--score", "cycle", "--bases", "3",
                     "--depth", "1", "--output-dir", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "search.json").read_text())
    assert doc["split"] == "test" and doc["split_fallback"] and doc["test_tuned"]
    assert "TEST-TUNED" in printed.getvalue() and "no val split" in printed.getvalue()
    assert [c["ids"] for c in doc["scored"]] == [[3]] and math.isfinite(doc["best"]["score"])
