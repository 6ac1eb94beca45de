"""ImageNet normalisation and the fixed benchmark-pair resize used by the pixel-level branch."""

from __future__ import annotations

import torch
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(img: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise an image (..., 3, H, W): uint8 in [0, 255] or float in [0, 1] -> float32."""
    x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def to_float_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 (3, H, W) in [0, 1] (as torchvision `ToTensor`)."""
    from data.io import pil_to_uint8_tensor

    return pil_to_uint8_tensor(img).float().div_(255.0)


def resize_square_normalized(img: Image.Image, size: int) -> torch.Tensor:
    """PIL RGB -> resized to size x size ignoring aspect (PIL bicubic) -> ImageNet-normalised float32."""
    return normalize(to_float_tensor(img.resize((size, size), Image.BICUBIC)))
