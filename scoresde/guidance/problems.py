"""Posterior problems with closed-form answers, for checking a conditional sampler (ours or yours).

- :func:`gaussian_linear_problem`: a correlated Gaussian prior in 4-D, two noisy random linear measurements; the
  posterior is Gaussian (:meth:`scoresde.analytic.Gaussian.posterior`).
- :func:`mixture_inpainting_problem`: two unit-variance Gaussians at ``+-1`` in 8-D, coordinates 0-3 observed
  with noise; the posterior is a mixture (:meth:`scoresde.analytic.GaussianMixture.posterior`).

Every row observes the same ``y``, so the rows of a sampler's output are independent draws from one posterior and
their statistics can be compared with the exact ones.
"""
import math
from typing import NamedTuple, Tuple

import torch

from ..analytic import Gaussian, GaussianMixture
from .observations import Inpainting, LinearObservation

F64 = torch.float64


class GaussianProblem(NamedTuple):
    prior: Gaussian
    observation: LinearObservation
    mean: torch.Tensor   # the exact posterior mean [D]
    cov: torch.Tensor    # the exact posterior covariance [D, D]

    def standardised_error(self, x: torch.Tensor) -> float:
        """``sqrt(B) |L^{-1} (mean(x) - mean)|`` with ``cov = L L^T``: for exact draws it follows a chi
        distribution with ``D`` degrees of freedom (mean about 1.9 for D = 4, 99th percentile 3.64)."""
        L = torch.linalg.cholesky(self.cov)
        d = torch.linalg.solve_triangular(L, (x.double().mean(0) - self.mean)[:, None], upper=False).squeeze(1)
        return d.norm().item() * math.sqrt(x.shape[0])

    def variance_ratio(self, x: torch.Tensor) -> torch.Tensor:
        """Per-coordinate sample variance over the exact posterior variance, ``[D]``."""
        return x.double().var(0) / self.cov.diagonal()


def gaussian_linear_problem(batch: int, noise_std: float = 0.1) -> GaussianProblem:
    """``N(m, Q Q^T / 4 + 0.05 I)`` in 4-D (``Q`` standard normal, seed 0), ``y = A x_0 + noise_std n`` with a
    standard normal ``2 x 4`` matrix ``A`` and ``y = (1.5, -1)`` for all ``batch`` rows."""
    g = torch.Generator().manual_seed(0)
    Q = torch.randn(4, 4, generator=g, dtype=F64)
    prior = Gaussian.from_covariance(torch.tensor([0.5, -0.5, 0.0, 1.0]), Q @ Q.T / 4 + 0.05 * torch.eye(4, dtype=F64))
    A = torch.randn(2, 4, generator=g, dtype=F64)
    y = torch.tensor([[1.5, -1.0]], dtype=F64).expand(batch, 2)
    means, cov = prior.posterior(A, y, noise_std)
    return GaussianProblem(prior, LinearObservation(A, y, noise_std), means[0], cov)


class MixtureProblem(NamedTuple):
    prior: GaussianMixture
    observation: Inpainting
    unknown_mean: float   # the exact posterior mean of each unobserved coordinate

    @staticmethod
    def estimate(x: torch.Tensor) -> Tuple[float, float]:
        """The mean of the unobserved coordinates 4-7 over the rows, and its standard error."""
        per_row = x[:, 4:].double().mean(1)
        return per_row.mean().item(), per_row.std().item() / math.sqrt(x.shape[0])


def mixture_inpainting_problem(batch: int, noise_std: float = 0.1, value: float = 0.1) -> MixtureProblem:
    """``(N(+1, I) + N(-1, I)) / 2`` in 8-D; coordinates 0-3 observed as ``value + noise_std n`` (the same ``y``
    for all rows). With the defaults the exact posterior mean of coordinates 4-7 is 0.3766."""
    D = 8
    prior = GaussianMixture([0.5, 0.5], torch.stack([torch.ones(D), -torch.ones(D)]), torch.ones(2, D))
    A = torch.eye(D, dtype=F64)[:4]
    y4 = torch.full((batch, 4), float(value), dtype=F64)
    weights, means, _ = prior.posterior(A, y4, noise_std)
    exact = (weights[:, :, None] * means).sum(1)[0, 4:].mean().item()
    y = torch.cat([y4, torch.zeros(batch, 4, dtype=F64)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=F64)
    return MixtureProblem(prior, Inpainting(y, mask, noise_std=noise_std), exact)


__all__ = ["GaussianProblem", "MixtureProblem", "gaussian_linear_problem", "mixture_inpainting_problem"]
