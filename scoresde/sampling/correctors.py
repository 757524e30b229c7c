"""Correctors: score-based MCMC steps that leave the marginal ``p_t`` invariant (Song et al. 2021, Sec. 4.2, App. G).

A corrector is built as ``Corrector(sde, snr, n_steps)`` and stepped with
``update(score_fn, x, t, generator) -> (x, x_mean)``, running ``n_steps`` Langevin iterations at time ``t`` (``[B]``).
The Langevin step uses the batch means of ``||z||`` and ``||s||`` as the paper's code does (``norm="batch"``): a
per-sample ratio is heavy-tailed in low dimension (a sample near a stationary point of ``log p_t`` would get an
unbounded step). It makes each sample depend on the rest of its batch, so per-row sampling (``seeds=``) uses
``norm="sample"``, the per-sample norms, which concentrate in the high dimension of images.
"""
import abc
from typing import Optional, Tuple

import torch

from ..registry import Registry
from ..sde_lib import SDE, VPSDE
from ..utils import batch_broadcast, check_time
from .base import ScoreFn, randn_like

Tensor = torch.Tensor

CORRECTORS = Registry("corrector")


def register_corrector(name: str):
    """Class decorator: make a :class:`Corrector` subclass available to :func:`get_corrector` as ``name``."""
    return CORRECTORS.register(name)


def get_corrector(name: str):
    """The corrector class registered as ``name`` (``ValueError`` listing the available names otherwise)."""
    return CORRECTORS.get(name)


def list_correctors():
    return CORRECTORS.list()


#: how the Langevin step's norms are taken: over the batch (the paper's code) or per sample
NORMS = ("batch", "sample")


def _norms(v: Tensor, norm: str) -> Tensor:
    """The per-sample Euclidean norms ``[B]``, or their batch mean (a scalar) for ``norm="batch"``."""
    per_sample = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)
    return per_sample.mean() if norm == "batch" else per_sample


class Corrector(abc.ABC):
    """Base class: ``snr`` is the signal-to-noise ratio ``r`` (sets the step), ``n_steps`` the iterations ``M``,
    ``norm`` (``"batch"`` or ``"sample"``) how a step size that depends on norms takes them."""

    def __init__(self, sde: SDE, snr: float, n_steps: int, norm: str = "batch"):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an scoresde.sde_lib.SDE, got {type(sde).__name__}")
        if not (isinstance(snr, (int, float)) and snr > 0):
            raise ValueError(f"snr must be a positive number, got {snr!r}")
        if not (isinstance(n_steps, int) and n_steps >= 1):
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.sde = sde
        self.snr = float(snr)
        self.n_steps = n_steps
        self.norm = norm

    @abc.abstractmethod
    def update(self, score_fn: ScoreFn, x: Tensor, t: Tensor,
               generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``n_steps`` MCMC iterations at time ``t`` (``[B]``): the new ``x`` and its noise-free mean."""


class LangevinFamily(Corrector):
    """Langevin iterations ``x_mean = x + eps s(x, t)``, ``x = x_mean + sqrt(2 eps) z``; subclasses set ``eps``."""

    def alpha(self, t: Tensor, x: Tensor) -> Tensor:
        """``alpha_i = 1 - beta_i`` of the DDPM level of ``t`` for VP/subVP (Alg. 5), else ``1`` (Alg. 4); ``[B]``."""
        if isinstance(self.sde, VPSDE):
            return self.sde.alphas[self.sde.step_index(t).cpu()].to(device=x.device, dtype=x.dtype)
        return torch.ones_like(t, dtype=x.dtype)

    @abc.abstractmethod
    def step_size(self, score: Tensor, noise: Tensor, x: Tensor, t: Tensor, alpha: Tensor) -> Tensor:
        """The Langevin step ``eps_i`` per sample, ``[B]``."""

    def update(self, score_fn: ScoreFn, x: Tensor, t: Tensor,
               generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``M`` iterations of ``x_mean = x + eps s(x, t)``, ``x = x_mean + sqrt(2 eps) z``."""
        check_time(t, x)
        alpha = self.alpha(t, x)
        x_mean = x
        for _ in range(self.n_steps):
            score = score_fn(x, t)
            noise = randn_like(x, generator)
            step = self.step_size(score, noise, x, t, alpha)
            x_mean = torch.addcmul(x, score, batch_broadcast(step, x))
            x = torch.addcmul(x_mean, noise, batch_broadcast(torch.sqrt(2.0 * step), x))
        return x, x_mean


@register_corrector("none")
class NoneCorrector(Corrector):
    """No corrector step."""

    def __init__(self, sde: SDE, snr: float = 0.16, n_steps: int = 1, norm: str = "batch"):
        super().__init__(sde, snr, n_steps, norm)

    def update(self, score_fn, x, t, generator=None):
        return x, x


@register_corrector("langevin")
class LangevinCorrector(LangevinFamily):
    """Langevin MCMC with a step set by the signal-to-noise ratio (Alg. 4 for VE, Alg. 5 for VP):
    ``eps = 2 alpha_i (r ||z|| / ||s(x, t)||)^2`` (norms averaged over the batch, or per sample: ``norm``)."""

    def step_size(self, score, noise, x, t, alpha):
        ratio = _norms(noise, self.norm) / _norms(score, self.norm).clamp_min(torch.finfo(score.dtype).tiny)
        return 2.0 * alpha * (self.snr * ratio) ** 2


@register_corrector("ald")
class AnnealedLangevinCorrector(LangevinFamily):
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1, as the paper's ``ald`` corrector):
    ``eps = 2 alpha_i (r sigma(t))^2`` with ``sigma(t)`` the marginal std at ``t``."""

    def step_size(self, score, noise, x, t, alpha):
        sigma = self.sde.marginal_coeffs(t)[1].to(x.dtype)
        return 2.0 * alpha * (self.snr * sigma) ** 2


__all__ = ["NORMS", "Corrector", "LangevinFamily", "LangevinCorrector", "AnnealedLangevinCorrector", "NoneCorrector",
           "register_corrector", "get_corrector", "list_correctors"]
