"""2-D toy distributions, generated from an optional ``torch.Generator`` as float32 ``[n, 2]``
points with integer labels ``[n]`` (the mode, moon or checkerboard square; 0 where none)."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..analytic import GaussianMixture
from ..registry import Registry

TOY_DISTRIBUTIONS = Registry("toy distribution")
Points = Tuple[Tensor, Tensor]


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Equal-weight mixture of 8 isotropic Gaussians (std ``std``) centred at
    ``radius * (cos(2 pi k / 8), sin(2 pi k / 8))``: exact scores for every SDE marginal."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(torch.ones(8), means, torch.full((8, 1), std, dtype=torch.float64))


@TOY_DISTRIBUTIONS.register("eight_gaussians")
def eight_gaussians(n: int, *, generator: Optional[torch.Generator] = None,
                    radius: float = 2.0, std: float = 0.1) -> Points:
    """``n`` points of :func:`eight_gaussians_mixture`; labels are the mode index 0..7."""
    x, k = eight_gaussians_mixture(radius, std).sample(n, generator, return_labels=True)
    return x.float(), k


@TOY_DISTRIBUTIONS.register("checkerboard")
def checkerboard(n: int, *, generator: Optional[torch.Generator] = None,
                 squares: int = 4, size: float = 4.0) -> Points:
    """Uniform on the black squares of a ``squares x squares`` board covering
    ``[-size/2, size/2]^2`` (square ``(i, j)`` is black when ``i + j`` is even); labels are
    the square's index ``i * squares + j``."""
    if squares % 2:
        raise ValueError(f"squares must be even for a zero-mean board, got {squares}")
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    row = torch.randint(0, squares, (n,), generator=generator)
    col = 2 * torch.randint(0, squares // 2, (n,), generator=generator) + row % 2
    cell = torch.stack([col, row], dim=1).to(torch.float64)
    x = ((cell + u) / squares - 0.5) * size
    return x.float(), row * squares + col


@TOY_DISTRIBUTIONS.register("swiss_roll")
def swiss_roll(n: int, *, generator: Optional[torch.Generator] = None,
               noise: float = 0.5, scale: float = 0.2) -> Points:
    """``scale * (t cos t, t sin t) + scale * noise * N(0, I)`` with ``t = 1.5 pi (1 + 2u)``,
    ``u ~ U(0, 1)`` (scikit-learn's ``make_swiss_roll`` in the plane); labels 0."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
    x = torch.stack([t * t.cos(), t * t.sin()], dim=1)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (scale * x).float(), torch.zeros(n, dtype=torch.int64)


@TOY_DISTRIBUTIONS.register("two_moons")
def two_moons(n: int, *, generator: Optional[torch.Generator] = None,
              noise: float = 0.1, scale: float = 1.0) -> Points:
    """scikit-learn's ``make_moons``: upper moon ``(cos a, sin a)``, lower moon
    ``(1 - cos a, 0.5 - sin a)``, ``a ~ U(0, pi)``, plus ``noise * N(0, I)``, shifted by
    ``(-0.5, -0.25)`` so the mean is 0, times ``scale``; labels are the moon (0 upper, 1 lower)."""
    moon = torch.randint(0, 2, (n,), generator=generator)
    a = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.stack([a.cos(), a.sin()], dim=1)
    lower = torch.stack([1 - a.cos(), 0.5 - a.sin()], dim=1)
    x = torch.where(moon[:, None].bool(), lower, upper) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (scale * x).float(), moon


def sample_toy(name: str, n: int, *, generator: Optional[torch.Generator] = None) -> Points:
    """``n`` points of the toy distribution ``name`` (see :data:`TOY_DISTRIBUTIONS`)."""
    return TOY_DISTRIBUTIONS.get(name)(n, generator=generator)


class PointDataset(torch.utils.data.Dataset):
    """A tensor data set of points: items ``(float [D], label int)``; batches ``(float [b, D], int64 [b])``."""

    def __init__(self, points: Tensor, labels: Optional[Tensor] = None):
        if not torch.is_floating_point(points) or points.dim() != 2:
            raise TypeError(f"points must be a float tensor [N, D], got {points.dtype} {tuple(points.shape)}")
        self.points = points
        self.labels = torch.zeros(len(points), dtype=torch.int64) if labels is None else labels.long()

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int):
        return self.points[index], int(self.labels[index])

    def get_batch(self, indices):
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.points[index], self.labels[index]
