"""Predictors: one step of a numerical solver of the reverse-time SDE (Song et al. 2021, Sec. 4.2, App. E-G).

A predictor is built as ``Predictor(sde, probability_flow=False)`` and stepped with
``update(score_fn, x, t, t_next, generator) -> (x, x_mean)``, where ``x`` is ``[B, ...]``, ``t`` and ``t_next``
are ``[B]`` with ``t_next < t``, and ``x_mean`` is the step without its noise (what ``denoise`` returns at the
last step).

Two kinds of step:
- *continuous* (``euler_maruyama``): moves from ``t`` exactly to ``t_next``; the sampler's grid is
  ``linspace(T, eps, N + 1)`` so the last step lands on ``eps``.
- *discrete* (``reverse_diffusion``, ``ancestral_sampling``): the step is the reverse of the SDE's own
  discretisation ``x_{i+1} = x_i + f_i(x_i) + G_i z_i`` at level ``i = sde.step_index(t)`` (DDPM for VP, SMLD for
  VE), so ``t_next`` is not used; the sampler visits the SDE's levels ``i = N-1, ..., 0``.
"""
import abc
from typing import Optional, Tuple

import torch

from ..registry import Registry
from ..sde_lib import SDE, VESDE, VPSDE
from ..utils import batch_broadcast, check_time
from .base import ScoreFn, randn_like

Tensor = torch.Tensor

PREDICTORS = Registry("predictor")


def register_predictor(name: str):
    """Class decorator: make a :class:`Predictor` subclass available to :func:`get_predictor` as ``name``."""
    return PREDICTORS.register(name)


def get_predictor(name: str):
    """The predictor class registered as ``name`` (``ValueError`` listing the available names otherwise)."""
    return PREDICTORS.get(name)


def list_predictors():
    return PREDICTORS.list()


def _noise(x_mean: Tensor, scale: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """``x_mean + scale z`` with ``z ~ N(0, I)``; ``scale`` is ``[B]``."""
    return torch.addcmul(x_mean, randn_like(x_mean, generator), batch_broadcast(scale, x_mean))


class Predictor(abc.ABC):
    """Base class: holds the forward ``sde`` and whether to step the probability-flow ODE instead."""

    #: True when the step is the SDE's own discretisation (needs the SDE's level grid, ignores ``t_next``)
    discrete: bool = False

    def __init__(self, sde: SDE, probability_flow: bool = False):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an scoresde.sde_lib.SDE, got {type(sde).__name__}")
        self.sde = sde
        self.probability_flow = bool(probability_flow)
        #: weight of the score in the reverse drift: 1 for the reverse SDE (eq. 6), 1/2 for the ODE (eq. 13)
        self.c = 0.5 if self.probability_flow else 1.0

    @abc.abstractmethod
    def update(self, score_fn: ScoreFn, x: Tensor, t: Tensor, t_next: Tensor,
               generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """One step from ``t`` to ``t_next`` (both ``[B]``): the new ``x`` and its noise-free mean."""


@register_predictor("none")
class NonePredictor(Predictor):
    """No predictor step: ``x`` is returned unchanged (corrector-only sampling, e.g. SMLD's annealed Langevin)."""

    discrete = True  # visits the SDE's levels, like annealed Langevin dynamics

    def update(self, score_fn, x, t, t_next, generator=None):
        return x, x


@register_predictor("euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
    """Euler-Maruyama on the reverse SDE (eq. 6) or the probability-flow ODE (eq. 13), from ``t`` to ``t_next``:

    ``x_mean = x + [f(x, t) - c g(t)^2 s(x, t)] dt``, ``x = x_mean + g(t) sqrt(|dt|) z``, ``dt = t_next - t < 0``,
    with ``c = 1`` (SDE) or ``c = 1/2`` and no noise (ODE).
    """

    def update(self, score_fn, x, t, t_next, generator=None):
        check_time(t, x)
        check_time(t_next, x, "t_next")
        dt = t_next - t
        drift, g = self.sde.sde(x, t)
        score_coeff = -self.c * g ** 2 * dt.to(g.dtype)               # -c g^2 dt, [B]
        x_mean = torch.addcmul(x, drift, batch_broadcast(dt, x))
        x_mean = torch.addcmul(x_mean, score_fn(x, t), batch_broadcast(score_coeff, x))
        if self.probability_flow:
            return x_mean, x_mean
        return _noise(x_mean, g * torch.sqrt(-dt.to(g.dtype)), generator), x_mean


@register_predictor("reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
    """The reverse of the SDE's discretisation (eq. 46): with ``f_i, G_i = sde.discretize(x, t)``,

    ``x_mean = x - f_i + c G_i^2 s(x, t)``, ``x = x_mean + G_i z`` (``c = 1``; ``c = 1/2`` and no noise for the ODE).
    """

    discrete = True

    def update(self, score_fn, x, t, t_next=None, generator=None):
        f, G = self.sde.discretize(x, t)
        x_mean = torch.addcmul(x - f, score_fn(x, t), batch_broadcast(self.c * G ** 2, x))
        if self.probability_flow:
            return x_mean, x_mean
        return _noise(x_mean, G, generator), x_mean


@register_predictor("ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
    """Ancestral sampling (eq. 47, App. F): invert the forward step ``x_{i+1} = a_i x_i + G_i z`` with the score,

    ``x_mean = (x + G_i^2 s(x, t_i)) / a_i``, ``x = x_mean + tau_i z``:
    - VP (DDPM, Ho et al. 2020 Alg. 2 with ``sigma_i^2 = beta_i``): ``a_i = sqrt(1 - beta_i)``,
      ``G_i^2 = tau_i^2 = beta_i``;
    - VE (SMLD): ``a_i = 1``, ``G_i^2 = sigma_i^2 - sigma_{i-1}^2``, ``tau_i^2 = sigma_{i-1}^2 G_i^2 / sigma_i^2``;
    - any other SDE with a drift linear in ``x`` (subVP): ``a_i = 1 + f_i(1)`` and ``G_i`` from ``sde.discretize``,
      ``tau_i = G_i`` -- the DDPM rule applied to that discretisation (for VP it *is* eq. 47).
    There is no probability-flow form.
    """

    discrete = True

    def __init__(self, sde: SDE, probability_flow: bool = False):
        super().__init__(sde, probability_flow)
        if self.probability_flow:
            raise ValueError("predictor 'ancestral_sampling' has no probability-flow form; "
                             "use probability_flow=False or predictor 'reverse_diffusion'/'euler_maruyama'")
        if type(sde).discretize is VPSDE.discretize and sde.discrete_betas.max() >= 1:
            raise ValueError(f"ancestral sampling divides by sqrt(1 - beta_i), but this VPSDE has beta_i up to "
                             f"{sde.discrete_betas.max().item():.3g} >= 1: use N > beta_max = {sde.beta_1}")

    def coefficients(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(a_i, G_i^2, tau_i)`` of level ``i = step_index(t)``; ``a_i`` broadcasts like ``x``, the rest ``[B]``."""
        check_time(t, x)
        sde = self.sde
        if type(sde).discretize is VPSDE.discretize:
            i = sde.step_index(t).cpu()
            beta = sde.discrete_betas[i].to(x.device)
            return batch_broadcast(torch.sqrt(1.0 - beta), x), beta, torch.sqrt(beta)
        if type(sde).discretize is VESDE.discretize:
            _, G = sde.discretize(x, t)                                   # G_i^2 = sigma_i^2 - sigma_{i-1}^2
            sigma = sde.discrete_sigmas[sde.step_index(t).cpu()].to(G)
            tau = G * torch.sqrt(1.0 - G ** 2 / sigma ** 2)               # sigma_{i-1}^2 / sigma_i^2 = 1 - G^2/sigma^2
            return torch.ones((), dtype=x.dtype, device=x.device), G ** 2, tau
        f_unit, G = sde.discretize(torch.ones_like(x), t)
        return 1.0 + f_unit, G ** 2, G

    def update(self, score_fn, x, t, t_next=None, generator=None):
        a, G2, tau = self.coefficients(x, t)
        x_mean = torch.addcmul(x, score_fn(x, t), batch_broadcast(G2, x)) / a
        return _noise(x_mean, tau, generator), x_mean


__all__ = ["Predictor", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
           "NonePredictor", "register_predictor", "get_predictor", "list_predictors"]
