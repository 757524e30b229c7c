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

Other parameterisations (``prediction``, continuous only)
---------------------------------------------------------
With ``x_t = alpha(t) x_0 + sigma(t) z`` (:meth:`SDE.marginal_coeffs`), the network fed the labels of the
table above may predict another quantity; each maps to the score exactly:

================  ==================================  ===========================================
``prediction``    the network predicts                score
================  ==================================  ===========================================
``"auto"``        the paper's: ``eps`` on VP/sub-VP,  as in the table above
                  ``score`` on VE
``"score"``       ``grad log p_t(x_t)``               ``out``
``"eps"``         the noise ``z``                     ``-out / sigma``
``"x0"``          the clean data ``x_0``              ``(alpha out - x_t) / sigma^2`` (Tweedie)
``"v"`` (VP)      ``v = alpha z - sigma x_0``         ``-(sigma x_t + alpha out) / sigma``
``"edm"``         the EDM-preconditioned denoiser     ``(alpha D(x_t / alpha, sigma / alpha) - x_t)
                  ``D`` (:class:`EDMDenoiser`)        / sigma^2``
================  ==================================  ===========================================

``v`` needs ``alpha^2 + sigma^2 = 1`` (the VP SDE: Salimans & Ho 2022). For ``"edm"`` the SDE's state is
rescaled to the variance-exploding variable ``x_t / alpha = x_0 + (sigma / alpha) z`` of Karras et al.
(2022, eq. 4 and Table 1), whose Tweedie denoiser is ``D``; on a VE SDE ``alpha = 1`` and the score is
``(D(x, sigma) - x) / sigma^2``. The network is then fed EDM's ``c_noise = log(sigma) / 4`` in place of
the time (see :class:`EDMDenoiser`), so its labels do not follow the table above.
"""
import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from scoresde import sde_lib
from scoresde.utils import batch_broadcast, check_time

CONTINUOUS_TIME_SCALE = 999.0
PREDICTIONS = ("auto", "score", "eps", "x0", "v", "edm")


def _network(model):
    """The network itself under a ``DistributedDataParallel`` wrapper (for its attributes)."""
    return getattr(model, "module", model)


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """EDM's preconditioning (Karras et al. 2022, Table 1), each ``[B]`` like ``sigma`` [B]:
    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = log(sigma) / 4``, with ``sd = sigma_data``."""
    total = sigma ** 2 + sigma_data ** 2
    return (sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt(), sigma.log() / 4)


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (Karras et al. 2022, eq. 8 and
    Table 1): ``1 / c_out^2``, so the network's own target has unit weight at every sigma."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def check_sigma_data(sigma_data) -> float:
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not 0 < sigma_data < math.inf:
        raise ValueError(f"sigma_data (the data's standard deviation, config training.sigma_data) must be a "
                         f"positive finite number, e.g. 0.5, got {sigma_data!r}")
    return float(sigma_data)


class EDMDenoiser:
    """A network wrapped in EDM's preconditioner (Karras et al. 2022, eq. 7 and Table 1):
    ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` for ``x`` [B, ...] and ``sigma`` [B] (the noise
    level of ``x = x_0 + sigma z``); ``D`` estimates ``E[x_0 | x]``.

    The network ``F = model(x, noise_labels, class_labels)`` takes ``c_noise = log(sigma) / 4`` in place of
    the time: a network with a sinusoidal (``positional``) embedding is fed ``c_noise`` itself; one that
    embeds the logarithm of its label (``embedding_type = 'fourier'``: NCSN++, the MLP) is fed
    ``exp(c_noise) = sigma^(1/4)``, so it embeds ``c_noise`` too. A network that divides its output by
    sigma (``scale_by_sigma``, NCSNv2) is refused: ``c_out`` does the scaling. Not an ``nn.Module``: the
    network's parameters, checkpoints and EMA stay as they are.
    """

    def __init__(self, model: nn.Module, sigma_data: float = 0.5, *, train: Optional[bool] = None):
        net = _network(model)
        if getattr(net, "scale_by_sigma", False):
            raise ValueError(f"EDM preconditioning needs a network that does not divide its output by sigma; "
                             f"{type(net).__name__} does (model.scale_by_sigma = True, or NCSNv2, which always "
                             f"does): set model.scale_by_sigma = False or choose another network")
        self.model, self.sigma_data = model, check_sigma_data(sigma_data)
        self.log_labels = getattr(net, "embedding_type", "positional") == "fourier"
        self.model_fn = get_model_fn(model, train=train)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor,
                 class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_time(sigma, x, "sigma")
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma.to(torch.float64), self.sigma_data)
        labels = (c_noise.exp() if self.log_labels else c_noise).to(x.dtype)
        out = self.model_fn(batch_broadcast(c_in, x) * x, labels, class_labels)
        return batch_broadcast(c_skip, x) * x + batch_broadcast(c_out, out) * out


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
                 train: Optional[bool] = False, class_labels: Optional[torch.Tensor] = None,
                 prediction: str = "auto", sigma_data: float = 0.5):
        check_sde(sde)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {list(PREDICTIONS)} (config training.prediction), "
                             f"got {prediction!r}")
        if prediction != "auto" and not continuous and not isinstance(sde, sde_lib.subVPSDE):
            raise ValueError(f"prediction={prediction!r} is defined for continuous-time networks; set "
                             f"continuous=True (config training.continuous) or prediction='auto'")
        if prediction == "v" and type(sde) is not sde_lib.VPSDE:
            raise ValueError(f"prediction='v' needs alpha(t)^2 + sigma(t)^2 = 1, i.e. a VPSDE, got "
                             f"{type(sde).__name__}: use 'eps', 'x0' or 'score'")
        self.sde, self.model, self.continuous = sde, model, bool(continuous)
        self.prediction = prediction
        self.class_labels = class_labels
        self.model_fn = get_model_fn(model, train=train)
        self.denoiser = EDMDenoiser(model, sigma_data, train=train) if prediction == "edm" else None

    def noise_labels(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is fed for times ``t`` [B] (see the module docstring)."""
        return noise_labels(self.sde, x, t, self.continuous)

    def __call__(self, x: torch.Tensor, t: torch.Tensor,
                 class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_time(t, x)
        if class_labels is None:
            class_labels = self.class_labels
        if self.prediction != "auto":
            return self._mapped(x, t, class_labels)
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

    def _mapped(self, x: torch.Tensor, t: torch.Tensor, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """The score from a network of parameterisation ``self.prediction`` (module docstring's second table)."""
        alpha, sigma = self.sde.marginal_coeffs(t)
        a, s = batch_broadcast(alpha, x), batch_broadcast(sigma, x)
        if self.prediction == "edm":
            x0 = self.denoiser(x / a, (sigma / alpha).to(x.dtype), class_labels)
            return (a * x0 - x) / s ** 2
        out = self.model_fn(x, self.noise_labels(x, t), class_labels)
        if self.prediction == "score":
            return out
        if self.prediction == "eps":
            return -out / s
        if self.prediction == "x0":
            return (a * out - x) / s ** 2
        return -(s * x + a * out) / s  # v: z = sigma x_t + alpha v


def get_score_fn(sde: sde_lib.SDE, model: nn.Module, *, continuous: bool = True,
                 train: Optional[bool] = False,
                 class_labels: Optional[torch.Tensor] = None, prediction: str = "auto",
                 sigma_data: float = 0.5) -> ScoreFunction:
    """Wrap ``model`` (called as ``model(x, noise_labels, class_labels)``) into
    ``score_fn(x, t, class_labels=None)`` for ``sde``; conventions in this module's docstring.

    ``train``: put the model in train (True) / eval (False) mode on every call, or leave it
    (None). ``class_labels`` [B]: default labels for a class-conditional network. ``prediction``: what
    the network predicts (``"auto"``, ``"score"``, ``"eps"``, ``"x0"``, ``"v"``, ``"edm"``; the second
    table of the module docstring); ``sigma_data``: EDM's data standard deviation (``"edm"`` only)."""
    return ScoreFunction(sde, model, continuous=continuous, train=train, class_labels=class_labels,
                         prediction=prediction, sigma_data=sigma_data)
