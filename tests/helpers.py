"""Builders shared by several test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from models.cycle import CycleConfig

REPO = Path(__file__).resolve().parents[1]


def original_cycle_config(**changes: Any) -> CycleConfig:
    """The released code's cycle switches, read from their only home (`configs/train/original.yaml`),
    then `changes`."""
    released = yaml.safe_load((REPO / "configs/train/original.yaml").read_text())["cycle"]
    return CycleConfig(**{**released, **changes})
