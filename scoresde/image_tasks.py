"""Image tasks on clean images: inpainting, colourisation and super-resolution observations by name, and
what to show of an observation in a grid (used by ``--mode sample`` with ``sampling.task``; plain
arguments, no config).

Images here are in the network's data space (after the run's scaler, e.g. ``[-1, 1]`` for centred data),
``[B, C, H, W]``; so are the observations built from them, as the samplers expect.
"""
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from . import guidance, noise

Tensor = torch.Tensor

TASKS = ("inpaint", "colorize", "superres")
MASKS = ("half", "box", "random")


def make_mask(kind: str, shape: Sequence[int], fraction: float = 0.5,
              generator: noise.Randomness = None) -> Tensor:
    """A float mask ``[B, 1, H, W]`` for images of ``shape``, 1 where observed: ``half`` (the top half),
    ``box`` (all but a centred square of side ``fraction`` of the image) or ``random`` (each pixel observed
    with probability ``fraction``, drawn from ``generator``: a CPU generator, or a ``scoresde.noise.RowNoise`` for
    one stream per image)."""
    if kind == "half":
        return guidance.half_mask(shape)
    if kind == "box":
        return guidance.box_mask(shape, fraction)
    if kind == "random":
        return guidance.random_mask(shape, fraction, generator=generator)
    raise ValueError(f"mask must be one of {list(MASKS)}, got {kind!r}")


def _noisy(y: Tensor, noise_std: float, generator: noise.Randomness) -> Tensor:
    """``y + noise_std z``, ``z`` drawn on the CPU from ``generator`` (the same numbers on any device)."""
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not 0 <= noise_std < math.inf:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if noise_std == 0:
        return y
    return y + noise_std * noise.randn(y.shape, generator).to(device=y.device, dtype=y.dtype)


def make_observation(task: str, x: Tensor, *, mask: str = "half", mask_fraction: float = 0.5, factor: int = 2,
                     noise_std: float = 0.0, generator: noise.Randomness = None) -> guidance.Observation:
    """The observation of clean images ``x`` [B, C, H, W] (in data space, on any device) for ``task``:

    - ``inpaint``: the pixels of :func:`make_mask` ``(mask, mask_fraction)``, ``guidance.Inpainting``;
    - ``colorize``: the channel mean (grey), ``guidance.Colorization``; needs ``C = 3``;
    - ``superres``: ``factor x factor`` average pooling, ``guidance.SuperResolution``; ``factor`` must divide
      ``H`` and ``W``.

    With ``noise_std > 0`` the measurement carries Gaussian noise of that std, and the observation says so.
    ``generator`` (a CPU generator, or a ``scoresde.noise.RowNoise``: each image's mask and noise from its own
    stream) draws the random mask, then the noise."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"x must be a [B, C, H, W] tensor of images, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if task == "inpaint":
        m = make_mask(mask, x.shape, mask_fraction, generator)
        return guidance.Inpainting(_noisy(x, noise_std, generator), m, noise_std)
    if task == "colorize":
        if x.shape[1] != 3:
            raise ValueError(f"colorize needs colour (3-channel) images, got {x.shape[1]} channel(s)")
        gray = x.mean(dim=1, keepdim=True)
        return guidance.Colorization(_noisy(gray, noise_std, generator), noise_std)
    if task == "superres":
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"factor must be an integer >= 2 that divides the image size {tuple(x.shape[2:])}, "
                             f"got {factor!r}")
        low = F.avg_pool2d(x, factor)
        return guidance.SuperResolution(_noisy(low, noise_std, generator), factor, noise_std)
    raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")


def observation_image(observation: guidance.Observation) -> Tensor:
    """What to show of an observation, shaped like the samples: ``A^+ y`` (inpainting: the observed pixels,
    0 elsewhere, i.e. mid-grey for centred data; colourisation: the grey image in every channel;
    super-resolution: the low-resolution image enlarged by pixel repetition)."""
    return observation.pinv(observation.y)


__all__ = ["TASKS", "MASKS", "make_mask", "make_observation", "observation_image"]
