"""Run configuration (YAML presets + typed schema) and runtime plumbing shared by every entry point.

`configs/` holds the YAML presets (`eval/`, `train/`, `demo.yaml`) and the two modules every layer
may import: `configs.schema` (YAML -> dataclasses, dotted overrides) and `configs.runtime` (device,
seeding, distributed init, atomic writes, one-line user errors).
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
REPO_ROOT = CONFIG_DIR.parent
