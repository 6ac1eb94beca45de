"""Opt-in on-disk cache of per-image backbone outputs (`--feature-cache DIR`), shared by every run.

One file per image and key, `DIR/<k[:2]>/<k>.pt`, k = sha256 over the image's pixels (uint8 bytes and
shape) and every setting that changes the stored tensors: backbone name, weights identity, resize rule and
long side (the resolution), ids, CAM on/off, bf16, device type and this format's version. Any change of
key is a miss; a file is written to a temporary name and renamed (`atomic_torch_save`), so a killed run
leaves no half file behind; an unreadable file is a miss (and is rewritten).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from configs.runtime import atomic_torch_save, check_writable_dir

FORMAT = "feature-cache/v1"


class DiskFeatureCache:
    """Files of per-image tensors under `folder`; `weights` is the weights record (its identity)."""

    def __init__(self, folder: str | Path, weights: dict[str, Any]):
        self.folder = Path(check_writable_dir(folder, "--feature-cache"))
        self.weights = {k: v for k, v in weights.items() if k not in ("file",)}
        self.hits = 0
        self.misses = 0

    def key(self, img: torch.Tensor, settings: dict[str, Any]) -> str:
        """Hex key of a uint8 image (3, H, W) under `settings` (JSON-able)."""
        h = hashlib.sha256()
        h.update(json.dumps({"format": FORMAT, "weights": self.weights, **settings}, sort_keys=True,
                            default=str).encode())
        h.update(str(tuple(img.shape)).encode())
        h.update(img.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        value = None
        if path.is_file():
            try:
                value = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # truncated or foreign file: recompute and overwrite
                value = None
        if isinstance(value, dict) and value.get("format") == FORMAT:
            self.hits += 1
            return value
        self.misses += 1
        return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({**value, "format": FORMAT}, path)

    def stats(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "hits": self.hits, "misses": self.misses}


def disk_feature_cache(folder: str | None, weights: dict[str, Any]) -> DiskFeatureCache | None:
    """The cache at `folder`, or None when `folder` is None (the cache is opt-in)."""
    return None if folder is None else DiskFeatureCache(folder, weights)
