"""From a network to the score ``s(x, t) ~ grad_x log p_t(x)`` that samplers and losses take.

The one convention (the paper's ``get_score_fn``); ``t`` is a [B] tensor of times in [0, T]:

================  ==========================================  =====================================
SDE               network input ``noise_labels``              score
================  ==========================================  =====================================
VP, continuous    ``999 t`` (float)                           ``-network(x, 999 t) / std(t)``
VP, discrete      ``(N - 1) t`` (float, not rounded)          ``-output / sqrt(1 - alphabar_i)``,
                                                              ``i = round((N - 1) t)``
sub-VP (either)   ``999 t`` (float)                           ``-output / std(t)`` (sub-VP std)
VE, continuous    ``sigma(t) = smin (smax / smin) ** t``      ``network(x, sigma)`` (it divides by
                                                              sigma itself: ``scale_by_sigma``)
VE, discrete      ``round((T - t) (N - 1))`` (int64 step,     ``network(x, i)`` (``sigmas[i]``
                  0 = largest noise)                          descends from sigma_max)
================  ==========================================  =====================================

For VP the network predicts the noise ``eps`` (the DDPM parameterisation), hence the division
by the marginal std. ``999`` is the paper's ``N - 1`` with its ``N = 1000``, fixed for continuous
networks so the labels do not change with the sampler's number of steps. Sub-VP has no discrete
chain of its own, so ``continuous=False`` is treated as continuous (as in the paper's code).
"""
from typing import Callable, Optional

import torch
import torch.nn as nn

from scoresde import sde_lib
from scoresde.utils import batch_broadcast, check_time

CONTINUOUS_TIME_SCALE = 999.0


def check_sde(sde: sde_lib.SDE, what: str = "get_score_fn") -> None:
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE)):
        raise TypeError(f"{what} supports VPSDE, subVPSDE and VESDE, got {type(sde).__name__}")


def noise_labels(sde: sde_lib.SDE, x: torch.Tensor, t: torch.Tensor, continuous: bool = True) -> torch.Tensor:
    """What a network (score network or noise-conditional classifier) is fed for times ``t`` [B]
    of ``sde``, by the table of the module docstring; ``x`` [B, ...] gives the device and dtype."""
    if isinstance(sde, sde_lib.VESDE):
        if continuous:
            return sde.marginal_prob(x, t)[1]
        return torch.round((sde.T - t.to(torch.float64)) * (sde.N - 1)).long()
    if continuous or isinstance(sde, sde_lib.subVPSDE):
        return t * CONTINUOUS_TIME_SCALE
    return t * (sde.N - 1)


def get_model_fn(model: nn.Module, train: Optional[bool] = False) -> Callable:
    """``model_fn(x, noise_labels, class_labels=None)`` that first puts ``model`` in training
    (``train=True``) or evaluation (``False``) mode; ``None`` leaves the mode alone."""

    def model_fn(x, noise_labels, class_labels=None):
        if train is not None:
            model.train(train)
        return model(x, noise_labels, class_labels)

    return model_fn


class ScoreFunction:
    """``score_fn(x, t, class_labels=None) -> score`` shaped like ``x``, by the convention of
    this module. ``class_labels`` given at call time override those given at construction."""

    def __init__(self, sde: sde_lib.SDE, model: nn.Module, *, continuous: bool = True,
                 train: Optional[bool] = False, class_labels: Optional[torch.Tensor] = None):
        check_sde(sde)
        self.sde, self.model, self.continuous = sde, model, bool(continuous)
        self.class_labels = class_labels
        self.model_fn = get_model_fn(model, train=train)

    def noise_labels(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is fed for times ``t`` [B] (see the module docstring)."""
        return noise_labels(self.sde, x, t, self.continuous)

    def __call__(self, x: torch.Tensor, t: torch.Tensor,
                 class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_time(t, x)
        if class_labels is None:
            class_labels = self.class_labels
        out = self.model_fn(x, self.noise_labels(x, t), class_labels)
        sde = self.sde
        if isinstance(sde, sde_lib.VESDE):
            return out
        if self.continuous or isinstance(sde, sde_lib.subVPSDE):
            std = sde.marginal_prob(x, t)[1]
        else:
            step = sde.step_index(t).cpu()
            std = sde.sqrt_1m_alphas_cumprod[step].to(x.device)
        return -out / batch_broadcast(std, out)


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, *, continuous: bool = True,
                 train: Optional[bool] = False,
                 class_labels: Optional[torch.Tensor] = None) -> ScoreFunction:
    """Wrap ``model`` (called as ``model(x, noise_labels, class_labels)``) into
    ``score_fn(x, t, class_labels=None)`` for ``sde``; conventions in this module's docstring.

    ``train``: put the model in train (True) / eval (False) mode on every call, or leave it
    (None). ``class_labels`` [B]: default labels for a class-conditional network."""
    return ScoreFunction(sde, model, continuous=continuous, train=train, class_labels=class_labels)
