"""Builders shared by several test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from models.cycle import CycleConfig

REPO = Path(__file__).resolve().parents[1]


def original_cycle_config(**changes: Any) -> CycleConfig:
    """The released code's cycle switches, read from their only home (`configs/train/original.yaml`),
    then `changes`."""
    released = yaml.safe_load((REPO / "configs/train/original.yaml").read_text())["cycle"]
    return CycleConfig(**{**released, **changes})


class ListDataset(torch.utils.data.Dataset):
    """The data layer's sample contract (`data.registry.PairDataset`), built in memory from samples."""

    def __init__(self, samples: list[dict[str, Any]], name: str = "pfwillow", default_thres: str = "bbox",
                 split: str = "test"):
        self.samples, self.name, self.default_thres, self.split = samples, name, default_thres, split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]

    def pair_meta(self, i: int) -> dict[str, Any]:
        return {k: v for k, v in self.samples[i].items() if not torch.is_tensor(v)}

    def check_thres(self, thres: str) -> str:
        return self.default_thres if thres == "auto" else thres

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "split": self.split, "pairs": len(self)}
