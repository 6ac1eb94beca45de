"""Both images of a pair at once: a `Matcher` whose two feature extractions (backbone + 3-scale CAM each)
run in two host threads, each on its own CUDA stream, so the latency-bound batch-1 passes of the two images
overlap.

    matcher = ConcurrentMatcher(HyperpixelBackbone(model, arch), MatchSettings(), "cuda")
    prediction = matcher.predict_pair(sample, ids)   # identical numbers to `Matcher.predict_pair`

The same kernels run on the same inputs, so every number equals the sequential matcher's. On the CPU it is
sequential unless `concurrent=True` (tests force it there: two threads, no streams). Images already in the
feature cache are not recomputed; `cache_blocks=True` (layer searches) stays sequential. Stage timings add
both threads' wall time (they overlap), so only `ms_per_pair` is the pair's latency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import torch

from models.backbone import validate_ids
from validation_and_test.matcher import ImageFeatures, Matcher, PairPrediction

__all__ = ["ConcurrentMatcher"]


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside nested dataclasses, lists, tuples and dicts."""
    if torch.is_tensor(obj):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return []


class ConcurrentMatcher(Matcher):
    """`Matcher` with the two images of a pair computed concurrently (default: on CUDA only)."""

    def __init__(self, *args: Any, concurrent: bool | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.concurrent = self.device.type == "cuda" if concurrent is None else concurrent
        self._ready: dict[int, ImageFeatures] = {}
        self._streams = ([torch.cuda.Stream(self.device) for _ in range(2)]
                         if self.device.type == "cuda" else [None, None])

    def _missing(self, sample: dict[str, Any], ids: tuple[int, ...]) -> list[torch.Tensor]:
        """The pair's images whose features are not cached (src first; one image when both are the same)."""
        out: list[torch.Tensor] = []
        for side in ("src", "trg"):
            key = sample.get(f"{side}_name")
            img = sample[f"{side}_img"]
            if (key is None or (key, ids) not in self.cache) and all(img is not o for o in out):
                out.append(img)
        return out

    def _compute(self, img: torch.Tensor, ids: tuple[int, ...], slot: int,
                 errors: list[BaseException]) -> None:
        stream = self._streams[slot]
        on_stream = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        try:
            with torch.no_grad(), on_stream:
                feats = self._assemble(self._blocks(img, ids), ids)
            if stream is not None:  # hand the result to the default stream safely
                torch.cuda.current_stream(self.device).wait_stream(stream)
                for t in _tensors(feats):
                    t.record_stream(torch.cuda.current_stream(self.device))
            self._ready[id(img)] = feats
        except BaseException as err:  # re-raised in the calling thread
            errors.append(err)

    def prefetch_pair(self, sample: dict[str, Any], ids: Sequence[int]) -> None:
        """Compute the uncached images of `sample` concurrently; `image_features` then returns them."""
        ids = validate_ids(ids, self.backbone.n_ids)
        todo = self._missing(sample, ids)
        errors: list[BaseException] = []
        if len(todo) < 2:
            for img in todo:
                self._compute(img, ids, 0, errors)
        else:
            threads = [threading.Thread(target=self._compute, args=(img, ids, k, errors))
                       for k, img in enumerate(todo)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if self.device.type == "cuda":
            for stream in self._streams:
                torch.cuda.current_stream(self.device).wait_stream(stream)
        if errors:
            self._ready.clear()
            raise errors[0]

    def image_features(self, img: torch.Tensor, ids: Sequence[int], key: str | None = None) -> ImageFeatures:
        ready = self._ready.pop(id(img), None)
        if ready is None:
            return super().image_features(img, ids, key)
        ids = validate_ids(ids, self.backbone.n_ids)
        return ready if key is None else self.cache.get_or_compute((key, ids), lambda: ready)

    def predict_pair(self, sample: dict[str, Any], ids: Sequence[int]) -> PairPrediction:
        if self.concurrent and not self.cache_blocks:
            self.prefetch_pair(sample, ids)
        try:
            return super().predict_pair(sample, ids)
        finally:
            self._ready.clear()
