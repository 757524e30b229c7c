"""Inpainting masks for image batches ``[B, C, H, W]``: 1 where a pixel is observed, 0 where it is to be drawn.
All masks are float32 ``[B, 1, H, W]`` (the same for every channel) and broadcast against the images."""
from typing import Sequence

import torch

from .. import noise


def _image_shape(shape: Sequence[int]):
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be [B, C, H, W] with positive sizes, got {shape}")
    return shape


def half_mask(shape: Sequence[int], keep: str = "top") -> torch.Tensor:
    """Observe one half of each image: ``keep`` is ``top``, ``bottom``, ``left`` or ``right``."""
    b, _, h, w = _image_shape(shape)
    mask = torch.zeros(b, 1, h, w)
    if keep == "top":
        mask[:, :, : h // 2] = 1
    elif keep == "bottom":
        mask[:, :, h // 2:] = 1
    elif keep == "left":
        mask[:, :, :, : w // 2] = 1
    elif keep == "right":
        mask[:, :, :, w // 2:] = 1
    else:
        raise ValueError(f"keep must be 'top', 'bottom', 'left' or 'right', got {keep!r}")
    return mask


def box_mask(shape: Sequence[int], box_fraction: float = 0.5) -> torch.Tensor:
    """Observe everything but a centred square whose side is ``box_fraction`` of the image side."""
    b, _, h, w = _image_shape(shape)
    if not 0 < box_fraction < 1:
        raise ValueError(f"box_fraction must be in (0, 1), got {box_fraction!r}")
    bh, bw = max(1, round(h * box_fraction)), max(1, round(w * box_fraction))
    top, left = (h - bh) // 2, (w - bw) // 2
    mask = torch.ones(b, 1, h, w)
    mask[:, :, top:top + bh, left:left + bw] = 0
    return mask


def random_mask(shape: Sequence[int], fraction: float = 0.5,
                generator: noise.Randomness = None) -> torch.Tensor:
    """Observe each pixel independently with probability ``fraction`` (drawn from ``generator``, a
    ``torch.Generator`` or a ``scoresde.noise.RowNoise``)."""
    b, _, h, w = _image_shape(shape)
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    return (noise.rand((b, 1, h, w), generator) < fraction).float()


__all__ = ["half_mask", "box_mask", "random_mask"]
