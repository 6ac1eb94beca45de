"""Hyperpixel layer selection by beam search (HPF/SCOT style): candidates, scoring, table, search.json.

    result = beam_search(score, n_ids=17, settings=BeamSettings(beam=4, depth=8))
    result.best.ids, result.best.score, result.scored

Algorithm (HPF's, with the original's defects fixed; `BeamSettings` switches them back):
1. depth 1: score every base set {b} (`bases`, default every id; the original: `range(beam)` = `--bases 0-3`);
2. depth d = 2..`depth`: extend every kept set S (best first) by every candidate id c (ascending) with
   c not in S and c > min(S); an extension whose sorted set was already generated at this depth (e.g.
   {2, 12} + 13 and {2, 13} + 12) is a duplicate: skipped (`on_duplicate="continue"`, default) or, as in
   the original, it ends the parent's loop (`"break"`, its later extensions are never scored);
3. keep the `beam` best of each depth (ties: first generated); return the best set ever scored.
So `depth` is the maximum set size. Scores are "higher is better" (PCK in percent; the label-free cycle
score is minus a squared error, `layer_scores.py`).

`layer_scores.PCKScore` scores a set with `evaluate` (the loop `test.py` runs; block cache: the backbone
and CAM run once per image, a new set only re-assembles hyperpixels and re-runs the matching) using
exactly the matching settings that `test.py` resolves for the dataset (`resolve_search_config`).
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Optional

import torch

from configs.runtime import UserError
from models.backbone import validate_ids
from validation_and_test.config import EvalConfig

Score = Callable[[tuple[int, ...]], float]


# ------------------------------------------------------------------------------------------- search
@dataclass(frozen=True)
class BeamSettings:
    """Beam width, maximum set size, base sets, extension pool and the duplicate rule."""

    beam: int = 4
    depth: int = 8
    bases: Optional[tuple[int, ...]] = None  # None: every id ({0}, {1}, ...); original: 0..beam-1
    candidates: Optional[tuple[int, ...]] = None  # ids that may extend a set; None: every id
    on_duplicate: Literal["continue", "break"] = "continue"  # "break" = the original's loop exit

    def __post_init__(self) -> None:
        if self.beam < 1 or self.depth < 1:
            raise UserError(f"--beam and --depth must be >= 1, got beam {self.beam}, depth {self.depth}")
        if self.on_duplicate not in ("continue", "break"):
            raise UserError(f"on_duplicate must be 'continue' or 'break', got {self.on_duplicate!r}")


@dataclass
class Candidate:
    """One scored id set: sorted ids, score (higher is better), depth (= set size), parent set, seconds."""

    ids: tuple[int, ...]
    score: float
    depth: int
    parent: Optional[tuple[int, ...]]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "score": _json_float(self.score), "depth": self.depth,
                "parent": list(self.parent) if self.parent is not None else None,
                "seconds": round(self.seconds, 4)}


@dataclass
class SearchResult:
    best: Candidate
    scored: list[Candidate]  # in scoring order
    beams: list[list[tuple[int, ...]]] = field(default_factory=list)  # kept sets per depth, best first
    skipped_duplicates: int = 0
    stopped_by_break: int = 0  # parents whose loop a duplicate ended (on_duplicate="break")


def _json_float(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


def _rank_key(c: Candidate) -> float:
    return -math.inf if math.isnan(c.score) else c.score


def extensions(parent: tuple[int, ...], pool: Sequence[int]) -> list[tuple[int, ...]]:
    """Sorted children of `parent`: parent + c for c in `pool` (ascending), c not in it, c > min(parent)."""
    low = min(parent)
    return [tuple(sorted(parent + (c,))) for c in pool if c not in parent and c > low]


def beam_search(score: Score, n_ids: int, settings: BeamSettings = BeamSettings(),
                on_candidate: Optional[Callable[[Candidate], None]] = None,
                on_depth: Optional[Callable[[int, list[Candidate], list[Candidate]], None]] = None
                ) -> SearchResult:
    """Beam search over hyperpixel id sets (module docstring). `score(ids)` gets sorted tuples.

    Callbacks: `on_candidate(c)` after each scored set; `on_depth(depth, scored_at_depth, kept)`.
    """
    bases = validate_ids(range(n_ids) if settings.bases is None else settings.bases, n_ids, "--bases")
    pool = validate_ids(range(n_ids) if settings.candidates is None else settings.candidates, n_ids,
                        "--candidates")
    scored: list[Candidate] = []
    beams: list[list[tuple[int, ...]]] = []
    n_dup = n_break = 0

    def run(ids: tuple[int, ...], depth: int, parent: Optional[tuple[int, ...]]) -> Candidate:
        t0 = time.perf_counter()
        value = float(score(ids))
        cand = Candidate(ids=ids, score=value, depth=depth, parent=parent, seconds=time.perf_counter() - t0)
        scored.append(cand)
        if on_candidate is not None:
            on_candidate(cand)
        return cand

    level = [run((b,), 1, None) for b in bases]
    kept: list[Candidate] = []
    for depth in range(1, settings.depth + 1):
        if depth > 1:
            seen: set[tuple[int, ...]] = set()
            level = []
            for parent in kept:
                for child in extensions(parent.ids, pool):
                    if child in seen:
                        n_dup += 1
                        if settings.on_duplicate == "break":
                            n_break += 1
                            break
                        continue
                    seen.add(child)
                    level.append(run(child, depth, parent.ids))
            if not level:
                break
        kept = sorted(level, key=_rank_key, reverse=True)[:settings.beam]  # stable: ties keep scoring order
        beams.append([c.ids for c in kept])
        if on_depth is not None:
            on_depth(depth, level, kept)
    best = max(scored, key=_rank_key)  # first maximum in scoring order
    return SearchResult(best=best, scored=scored, beams=beams, skipped_duplicates=n_dup,
                        stopped_by_break=n_break)


# ------------------------------------------------------------------------------------------- table
def format_candidate(c: Candidate, kept: bool, best: bool) -> str:
    ids = ",".join(map(str, c.ids))
    mark = ("*" if kept else " ") + ("B" if best else " ")
    return f"  {mark} {ids:<28} {c.score:>12.4f} {c.seconds:>8.2f}s"


def format_depth(depth: int, level: list[Candidate], kept: list[Candidate], best: Candidate) -> str:
    """Table of one depth: every candidate in scoring order; * = kept in the beam, B = best so far."""
    kept_ids = {c.ids for c in kept}
    lines = [f"depth {depth}: {len(level)} candidate(s)", f"     {'ids':<28} {'score':>12} {'time':>9}"]
    lines += [format_candidate(c, c.ids in kept_ids, c.ids == best.ids) for c in level]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- configs
def default_search_split(dataset: str) -> tuple[str, bool]:
    """(split, fell back): "val", or "test" for datasets without a validation split (PF-WILLOW)."""
    from data import DATASETS

    cls = DATASETS.get(dataset)
    if cls is None:
        raise UserError(f"unknown dataset {dataset!r} (choose from {', '.join(sorted(DATASETS))})")
    return ("val", False) if "val" in cls.splits else ("test", True)


def resolve_search_config(flags: dict[str, Any], config_path: Optional[str] = None,
                          split: Optional[str] = None) -> tuple[EvalConfig, str, bool]:
    """test.py's settings for the dataset (preset `configs/eval/<dataset>.yaml` or `config_path`, then
    `flags`, keyed like `EvalConfig`), with the search split. Returns (config, preset file, split fell back).

    Uses test.py's own resolution (`config.resolve_config`), so a found set scores the same in a `test.py`
    run with those flags.
    """
    import argparse

    from validation_and_test.config import resolve_config

    cfg, preset, _ = resolve_config(argparse.Namespace(config=config_path, **flags))
    fell_back = False
    if split is None:
        split, fell_back = default_search_split(cfg.dataset)
    return replace(cfg, split=split), preset, fell_back


def beam_settings_json(settings: BeamSettings, n_ids: int) -> dict[str, Any]:
    d = asdict(settings)
    d["bases"] = list(settings.bases) if settings.bases is not None else list(range(n_ids))
    d["candidates"] = list(settings.candidates) if settings.candidates is not None else list(range(n_ids))
    d["bases_rule"] = "all ids" if settings.bases is None else "given"
    return d


# ------------------------------------------------------------------------------------------- the run
SEARCH_FORMAT = "layer-search/v1"
MATCH_FLAGS = (("thres", "--thres"), ("sim", "--sim"), ("exp1", "--exp1"), ("exp2", "--exp2"),
               ("eps", "--eps"), ("sinkhorn_iters", "--sinkhorn-iters"), ("classmap", "--classmap"),
               ("matcher", "--matcher"))


def reproduce_command(cfg: EvalConfig, ids: Sequence[int], n_pairs: int, alpha: float, arch: str,
                 config_path: Optional[str]) -> str:
    """The `test.py` command whose headline PCK@alpha equals the search's PCK score of `ids`."""
    argv = ["python", "validation_and_test/test.py", "--dataset", cfg.dataset, "--split", cfg.split,
            "--max-pairs", str(n_pairs), "--alpha", f"{alpha:g}", "--hyperpixel", ",".join(map(str, ids)),
            "--backbone", arch, "--weights", cfg.weights, "--seed", str(cfg.seed)]
    if cfg.datapath:
        argv += ["--datapath", cfg.datapath]
    if config_path:
        argv += ["--config", config_path]
    for key, flag in MATCH_FLAGS:
        argv += [flag, str(getattr(cfg, key))]
    if cfg.hpf:
        argv.append("--hpf")
    return shlex.join(argv)


@torch.no_grad()
def run_layer_search(cfg: EvalConfig, beam: BeamSettings, score: Literal["pck", "cycle"] = "pck",
                     alpha: float = 0.1, cycle: Optional[Any] = None, output_dir: Optional[str] = None,
                     preset: str = "", config_path: Optional[str] = None, split_fell_back: bool = False,
                     cache_mb: float = 8192.0, sample_cache_mb: float = 1024.0, progress: bool = False,
                     echo: Callable[[str], None] = print, overwrite: bool = False) -> dict[str, Any]:
    """Build data, weights and scorer from `cfg` (split = `cfg.split`, first `cfg.max_pairs` pairs), run
    `beam_search`, print the table per depth (and every set as scored with `progress`) and write
    `search.json` (atomically, after every depth with `complete: false`, then final). Returns its dict.
    The output folder is claimed as `test.py` claims its own: one holding a complete `search.json` is refused
    unless `overwrite`, and one in use by another run is refused (its `.lock`).

    `cache_mb`: block maps (+ CAM) of every image, on the device; `sample_cache_mb`: decoded pairs (PCK).
    The cycle score's frame follows `cfg` (resize rule and long side), overriding `cycle`'s.
    """

    from configs import REPO_ROOT
    from configs.runtime import (
        atomic_write_json,
        claim_output_dir,
        release_output_dir,
        resolve_device,
        set_faithful_numerics,
        unique_suffix,
    )
    from data import build_dataset
    from models.backbone_loader import load_backbone
    from validation_and_test.evaluate import Matcher, MatchSettings, shard_indices
    from validation_and_test.feature_store import disk_feature_cache
    from validation_and_test.record import settings_record

    if score not in ("pck", "cycle"):
        raise UserError(f"--score must be pck or cycle, got {score!r}")
    # the output folder is claimed before any work; the default name is unique (time + random suffix)
    out_dir = claim_output_dir(output_dir or REPO_ROOT / "runs" / "search" /
                               f"{cfg.dataset}-{score}-{unique_suffix()}", overwrite, marker="search.json")
    device = resolve_device(cfg.device)
    numerics = set_faithful_numerics(device, cfg.fast)
    dataset = build_dataset(cfg.dataset, cfg.datapath, cfg.split)
    indices = shard_indices(len(dataset), cfg.max_pairs, None)
    backbone, weights_record = load_backbone(cfg.backbone, cfg.weights, cfg.seed)
    arch = backbone.name
    n_ids = backbone.n_ids
    settings = MatchSettings.from_config(cfg)
    scorer: Any
    matcher = None
    if score == "pck":
        matcher = Matcher(backbone, settings, device, cache_mb=cache_mb, cache_blocks=True,
                          disk_cache=disk_feature_cache(cfg.feature_cache, weights_record))
        numerics = matcher.numerics(numerics)
        from validation_and_test.layer_scores import CachedPairs, PCKScore

        scorer = PCKScore(matcher, CachedPairs(dataset, sample_cache_mb), indices, alpha, cfg.thres)
        thres: Optional[str] = scorer.thres
    else:
        from validation_and_test.layer_scores import CycleScore, CycleScoreSettings

        cycle = cycle or CycleScoreSettings()
        cycle = replace(cycle, resize_rule=settings.resize_rule, long_side=cfg.long_side)
        scorer = CycleScore(backbone, dataset, indices, cycle, device, cache_mb=cache_mb)
        thres = None
    test_tuned = cfg.split == "test"
    tuned = ", TEST-TUNED" if test_tuned else ""
    echo(f"beam search on {cfg.dataset} {cfg.split} ({len(indices)} pairs{tuned}"
         f"{': the dataset has no val split' if split_fell_back else ''}), score {score}, {arch} "
         f"({weights_record.get('weights')}), {n_ids} ids, beam {beam.beam}, depth {beam.depth}, "
         f"duplicates: {beam.on_duplicate}")
    start = time.perf_counter()

    def document(result: Optional[SearchResult], scored: list[Candidate], beams: list[list[tuple[int, ...]]],
                 complete: bool) -> dict[str, Any]:
        best = max(scored, key=_rank_key) if scored else None
        doc: dict[str, Any] = {
            "format": SEARCH_FORMAT, "complete": complete, "score": score,
            "score_units": "PCK percent (per-pair mean)" if score == "pck" else "-MSE, resized-frame px^2",
            "best": best.to_json() if best else None,
            "scored": [c.to_json() for c in scored], "beams": [[list(ids) for ids in b] for b in beams],
            "dataset": cfg.dataset, "split": cfg.split, "split_fallback": split_fell_back,
            "test_tuned": test_tuned, "data": dataset.describe(),
            "n_pairs": len(indices), "max_pairs": cfg.max_pairs, "alpha": alpha if score == "pck" else None,
            "search": beam_settings_json(beam, n_ids), "n_ids": n_ids,
            **settings_record(cfg, thres=thres, arch=arch, weights=weights_record, numerics=numerics,
                              preset=preset, matcher=matcher),
            "cache": scorer.cache_stats(), "elapsed_s": round(time.perf_counter() - start, 3),
        }
        doc["matching"]["used"] = score == "pck"
        if score == "cycle":
            from validation_and_test.layer_scores import crops_json

            doc["cycle"] = {**scorer.describe(), "crops": crops_json(scorer)}
        if score == "pck":
            doc["sample_cache"] = scorer.dataset.samples.stats()
        if best is not None and score == "pck":
            doc["test_command"] = reproduce_command(cfg, best.ids, len(indices), alpha, arch, config_path)
        if result is not None:
            doc["skipped_duplicates"] = result.skipped_duplicates
            doc["stopped_by_break"] = result.stopped_by_break
        return doc

    scored_so_far: list[Candidate] = []
    beams_so_far: list[list[tuple[int, ...]]] = []
    n_images = len({n for i in indices for n in _pair_names(dataset, i)})

    def on_depth(depth: int, level: list[Candidate], kept: list[Candidate]) -> None:
        scored_so_far.extend(level)
        beams_so_far.append([c.ids for c in kept])
        best = max(scored_so_far, key=_rank_key)
        echo(format_depth(depth, level, kept, best))
        stats = scorer.cache_stats()
        if depth > 1 and stats["misses"] > n_images + (len(indices) if score == "cycle" else 0):
            echo(f"warning: feature cache too small ({stats['mb']:.0f} MB held, {stats['misses']} misses for "
                 f"{n_images} images): raise --cache-mb to avoid recomputing features")
        atomic_write_json(out_dir / "search.json", document(None, scored_so_far, beams_so_far, False))

    def on_candidate(c: Candidate) -> None:
        if progress:
            echo(f"  .. {','.join(map(str, c.ids))}: {c.score:.4f} ({c.seconds:.1f} s)")

    result = beam_search(scorer, n_ids, beam, on_candidate=on_candidate, on_depth=on_depth)
    doc = document(result, result.scored, result.beams, True)
    atomic_write_json(out_dir / "search.json", doc)
    release_output_dir(out_dir)
    echo(f"best: {','.join(map(str, result.best.ids))}  score {result.best.score:.4f}  "
         f"({len(result.scored)} sets scored in {doc['elapsed_s']:.1f} s) -> {out_dir / 'search.json'}")
    if "test_command" in doc:
        echo(f"check: {doc['test_command']}")
    doc["output_dir"] = str(out_dir)
    return doc


def _pair_names(dataset: Any, i: int) -> tuple[str, str]:
    meta = dataset.pair_meta(i)
    return meta["src_name"], meta["trg_name"]
