"""ImageNet two-view loader: torchvision-identical augmentation draws, indexed randomness, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from configs.runtime import UserError
from data.imagenet import IndexedRandom, TwoViewImageFolder, color_jitter, resized_crop_params


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for wnid, n in (("n01", 3), ("n02", 2)):
        (tmp_path / wnid).mkdir()
        for k in range(n):
            arr = rng.integers(0, 255, (40 + 7 * k, 50, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / wnid / f"img_{k}.JPEG", quality=95)
    (tmp_path / "n02" / "notes.txt").write_text("not an image")
    return tmp_path


def _seeded(seed: int) -> IndexedRandom:
    """An IndexedRandom drawing from a generator in the state torchvision's global one has."""
    rnd = IndexedRandom(0, 0, 0)
    rnd.gen = torch.Generator().manual_seed(seed)
    return rnd


def test_draws_match_torchvision():
    """Same generator state -> same RandomResizedCrop box and ColorJitter output as torchvision."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    for seed in range(5):
        torch.manual_seed(seed)
        expect = T.RandomResizedCrop.get_params(img, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
        got = resized_crop_params(80, 60, _seeded(seed))
        assert got == tuple(expect)
        torch.manual_seed(seed)
        expect_img = T.ColorJitter(0.4, 0.4, 0.4, 0.4)(img)
        got_img = color_jitter(img, _seeded(seed), 0.4, 0.4, 0.4, 0.4)
        assert np.array_equal(np.asarray(expect_img), np.asarray(got_img))


@pytest.mark.parametrize("aug", ["v1", "v2"])
def test_views_are_a_function_of_seed_epoch_index(image_folder, aug):
    ds = TwoViewImageFolder(image_folder, aug=aug, image_size=32, seed=3)
    assert len(ds) == 5
    a = ds[2]
    assert a["im_q"].shape == a["im_k"].shape == (3, 32, 32) and a["im_q"].dtype == torch.float32
    assert a["index"] == 2 and not torch.equal(a["im_q"], a["im_k"])
    torch.manual_seed(123)  # global RNG state must not matter
    again = TwoViewImageFolder(image_folder, aug=aug, image_size=32, seed=3)[2]
    assert torch.equal(a["im_q"], again["im_q"]) and torch.equal(a["im_k"], again["im_k"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["im_q"], a["im_q"])
    other_seed = TwoViewImageFolder(image_folder, aug=aug, image_size=32, seed=4)
    assert not torch.equal(other_seed[2]["im_q"], a["im_q"])


def test_workers_see_the_same_augmentations(image_folder):
    ds = TwoViewImageFolder(image_folder, image_size=16, seed=0)
    ds.set_epoch(2)
    direct = torch.stack([ds[i]["im_q"] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    assert torch.equal(next(iter(loader))["im_q"], direct)


def test_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TwoViewImageFolder(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        TwoViewImageFolder(tmp_path)
    with pytest.raises(UserError, match="choose v1 or v2"):
        TwoViewImageFolder(tmp_path, aug="v3")
