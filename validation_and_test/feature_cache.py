"""A least-recently-used cache bounded in megabytes, for per-image hyper-images and CAM weights.

An image shared by several pairs (PF-WILLOW: 18 pairs per image; SPair: ~51) is processed once while it
is in use. Values are objects exposing `nbytes()` (or tensors); entries are evicted oldest-first when the
total exceeds the budget. A value larger than the whole budget is returned but not stored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch


def _nbytes(value: Any) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if hasattr(value, "nbytes"):
        n = value.nbytes
        return int(n() if callable(n) else n)
    raise TypeError(f"cannot size a {type(value).__name__} for the feature cache")


class FeatureCache:
    """LRU mapping key -> value with a byte budget (`max_mb`; 0 disables caching)."""

    def __init__(self, max_mb: float = 2048.0):
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        size = _nbytes(value)
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        if size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        value = self.get(key)
        if value is not None:
            self.hits += 1
            return value
        self.misses += 1
        value = compute()
        self.put(key, value)
        return value

    def clear(self) -> None:
        """Drop every entry (the hit and miss counters keep counting)."""
        self._items.clear()
        self.bytes = 0

    def stats(self) -> dict[str, float]:
        return {"entries": len(self._items), "mb": self.bytes / 2**20, "hits": self.hits,
                "misses": self.misses}
