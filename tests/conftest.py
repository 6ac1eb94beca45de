"""Shared fixtures: `device` (cpu always, cuda when available or forced), real-data roots, tmp roots,
`image_root` (a tiny ImageFolder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REALDATA = REPO_ROOT.parent / "shared" / "realdata"

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", action="store", default="auto",
                     help="auto (cpu, plus cuda when available), cpu, or cuda (forced)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        choice = metafunc.config.getoption("--device")
        if choice == "auto":
            names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        else:
            names = [choice]
        metafunc.parametrize("device_name", names, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `device` fixture's CUDA runs count as `cuda` tests; `cuda` tests skip without a GPU."""
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        params = getattr(item, "callspec", None)
        if params is not None and str(params.params.get("device_name", "")).startswith("cuda"):
            item.add_marker(pytest.mark.cuda)
        if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture
def cuda_device() -> torch.device:
    """The GPU of a `cuda`-marked test (the marker already skips it without one)."""
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture
def device(device_name: str) -> torch.device:
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail("--device cuda requested but CUDA is not available")
    return torch.device(device_name)


def _realdata(name: str) -> Path:
    path = SHARED_REALDATA / name
    if not path.is_dir():
        pytest.skip(f"real benchmark data not available ({path}); it ships only to developers")
    return path


@pytest.fixture
def realdata_root() -> Path:
    """`../shared/realdata` (works as a dataset root for pfwillow and spair); skips when absent."""
    _realdata("PF-WILLOW")
    return SHARED_REALDATA


@pytest.fixture
def realdata_spair_layout() -> Path:
    return _realdata("SPair-71k-official-layout")


@pytest.fixture
def realdata_pfpascal_csvs() -> Path:
    return _realdata("PF-PASCAL")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """16 random 40x40 JPEGs in two class folders (an ImageFolder stand-in for ImageNet)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for i in range(16):
        folder = root / f"n{i % 2:08d}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    return root
