"""Forward SDEs, their discretisations and their reverses (Song et al. 2021, Sec. 3 and App. B-D).

Every SDE here is linear, ``dx = f(t) x dt + g(t) dw``, so its perturbation kernel is Gaussian,
``p_0t(x_t | x_0) = N(x_t; alpha(t) x_0, sigma(t)^2 I)``, and ``marginal_prob`` returns
``(alpha(t) x_0, sigma(t))``. DDPM is the discretisation of the VP SDE and SMLD/NCSN the
discretisation of the VE SDE: ``VPSDE.discretize`` and ``VESDE.discretize`` are their updates.

Shapes: ``x`` is ``[B, ...]`` of any rank, ``t`` is ``[B]``. Schedules are computed in float64 and
cast once to ``x``'s dtype; device comes from the input.
"""
import abc
import math
from typing import Callable, Optional, Tuple

import torch

from . import noise
from .utils import batch_broadcast, check_shape, check_time, flat_sum

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _f64(t: Tensor) -> Tensor:
    return t.to(torch.float64)


class SDE(abc.ABC):
    """A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]`` with ``N`` discretisation steps."""

    T: float = 1.0
    #: the smallest time samplers stop at by default (the paper's ``sampling_eps``)
    default_eps: float = 1e-3

    def __init__(self, N: int):
        if not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be a positive integer, got {N!r}")
        self.N = N

    @abc.abstractmethod
    def sde(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """Drift ``f(x, t)`` shaped like ``x`` and diffusion ``g(t)`` of shape ``[B]``."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))`` of the perturbation kernel, float64, shape ``[B]``."""

    def marginal_prob(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """Mean ``alpha(t) x`` (shaped like ``x``) and std ``sigma(t)`` (``[B]``) of ``p_0t(. | x)``."""
        check_time(t, x)
        alpha, sigma = self.marginal_coeffs(t)
        return batch_broadcast(alpha, x) * x, sigma.to(x.dtype)

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(alpha(t) / sigma(t))``, float64 ``[B]``: the time variable of the fast solvers."""
        alpha, sigma = self.marginal_coeffs(t)
        return torch.log(alpha) - torch.log(sigma)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """The time ``t`` with ``lambda(t) = log_snr``, float64, same shape as ``log_snr``.

        Generic inverse by float64 bisection on ``[0, 2T]`` (``lambda`` decreases in ``t``); the SDEs
        below override it with their closed forms.
        """
        lam = _f64(log_snr)
        lo, hi = torch.zeros_like(lam), torch.full_like(lam, 2.0 * self.T)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid.reshape(-1)).reshape(lam.shape) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @abc.abstractmethod
    def prior_sampling(self, shape, *, generator: Optional[torch.Generator] = None,
                       device=None, dtype=torch.float32) -> Tensor:
        """A draw from the prior ``p_T``."""

    @abc.abstractmethod
    def prior_logp(self, z: Tensor) -> Tensor:
        """``log p_T(z)`` summed over all but the batch dimension: ``[B]``."""

    def discretize(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """One step of size ``T/N`` of the forward process, ``x_{i+1} = x_i + f_i + G_i z_i``.

        The default is Euler-Maruyama: ``f_i = f(x, t) dt``, ``G_i = g(t) sqrt(dt)``.
        Returns ``f_i`` shaped like ``x`` and ``G_i`` of shape ``[B]``.
        """
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (eq. 6) or, with ``probability_flow``, the probability-flow ODE (eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow)

    def _check_shape(self, shape) -> Tuple[int, ...]:
        return check_shape(shape)


class ReverseSDE:
    """``dx = [f(x, t) - c g(t)^2 score(x, t)] dt + g_rev(t) dw-bar`` with ``c = 1`` (reverse SDE, eq. 6)
    or ``c = 1/2`` and no noise (probability-flow ODE, eq. 13). Time runs from ``T`` down to 0."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N
        self.T = forward.T

    @property
    def _c(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - batch_broadcast(diffusion ** 2, x) * score * self._c
        diffusion = torch.zeros_like(diffusion) if self.probability_flow else diffusion
        return drift, diffusion

    def discretize(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """Reverse of ``forward.discretize``: ``f_rev = f - G^2 score c``, ``G_rev = G`` (0 for the ODE)."""
        f, G = self.forward.discretize(x, t)
        rev_f = f - batch_broadcast(G ** 2, x) * self.score_fn(x, t) * self._c
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


def _standard_normal_logp(z: Tensor, scale: float) -> Tensor:
    D = z[0].numel()
    return -0.5 * D * math.log(2 * math.pi * scale ** 2) - flat_sum(z.to(torch.float64) ** 2).to(z.dtype) / (2 * scale ** 2)


class VPSDE(SDE):
    """Variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw`` with ``beta(t) = b_min + t (b_max - b_min)``
    (eq. 11). Its discretisation with ``N`` steps is DDPM, with ``beta_i = b_min/N + i/(N-1) (b_max - b_min)/N``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)
        betas = torch.linspace(beta_min / N, beta_max / N, N, dtype=torch.float64)
        self.discrete_betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_1m_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_0 + _f64(t) * (self.beta_1 - self.beta_0)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """``int_0^t beta(s) ds``, float64."""
        t = _f64(t)
        return 0.5 * t ** 2 * (self.beta_1 - self.beta_0) + t * self.beta_0

    def t_from_integrated_beta(self, integral: Tensor) -> Tensor:
        """Inverse of :meth:`integrated_beta`: the root ``t >= 0`` of ``(b1 - b0) t^2 / 2 + b0 t = B``,
        written ``t = 2B / (b0 + sqrt(b0^2 + 2 (b1 - b0) B))`` to avoid cancellation."""
        B = _f64(integral)
        return 2.0 * B / (self.beta_0 + torch.sqrt(self.beta_0 ** 2 + 2.0 * (self.beta_1 - self.beta_0) * B))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """VP: ``sigma^2 / alpha^2 = exp(B(t)) - 1 = exp(-2 lambda)``, so ``B(t) = log(1 + exp(-2 lambda))``."""
        return self.t_from_integrated_beta(torch.nn.functional.softplus(-2.0 * _f64(log_snr)))

    def sde(self, x, t):
        check_time(t, x)
        beta = self.beta(t)
        return -0.5 * batch_broadcast(beta, x) * x, torch.sqrt(beta).to(x.dtype)

    def marginal_coeffs(self, t):
        log_alpha = -0.5 * self.integrated_beta(t)
        return torch.exp(log_alpha), torch.sqrt(-torch.expm1(2 * log_alpha))

    def prior_sampling(self, shape, *, generator=None, device=None, dtype=torch.float32):
        return noise.randn(self._check_shape(shape), generator, device=device, dtype=dtype)

    def prior_logp(self, z):
        return _standard_normal_logp(z, 1.0)

    def step_index(self, t: Tensor) -> Tensor:
        """The DDPM step ``i = round(t (N-1) / T)`` of a continuous time, as int64 ``[B]``."""
        return torch.round(_f64(t) * (self.N - 1) / self.T).long()

    def discretize(self, x, t):
        """The DDPM forward step: ``x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z`` (Ho et al. 2020, eq. 2)."""
        check_time(t, x)
        i = self.step_index(t).cpu()
        beta = self.discrete_betas[i].to(x.device)
        alpha = self.alphas[i].to(x.device)
        f = (batch_broadcast(torch.sqrt(alpha), x) - 1.0) * x
        return f, torch.sqrt(beta).to(x.dtype)


class subVPSDE(VPSDE):
    """Sub-VP SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw`` (eq. 12).
    Its marginal std is ``1 - exp(-int_0^t beta)``, below the VP one at every ``t``."""

    def sde(self, x, t):
        check_time(t, x)
        beta = self.beta(t)
        drift = -0.5 * batch_broadcast(beta, x) * x
        discount = -torch.expm1(-2.0 * self.integrated_beta(t))
        return drift, torch.sqrt(beta * discount).to(x.dtype)

    def marginal_coeffs(self, t):
        log_alpha = -0.5 * self.integrated_beta(t)
        return torch.exp(log_alpha), -torch.expm1(2 * log_alpha)

    def t_from_log_snr(self, log_snr):
        """subVP: ``alpha = exp(-B/2)``, ``sigma = 1 - alpha^2``, so ``exp(-lambda) = 1/alpha - alpha = 2 sinh(B/2)``
        and ``B(t) = 2 asinh(exp(-lambda) / 2)``."""
        return self.t_from_integrated_beta(2.0 * torch.asinh(0.5 * torch.exp(-_f64(log_snr))))

    def discretize(self, x, t):
        return SDE.discretize(self, x, t)


class VESDE(SDE):
    """Variance-exploding SDE ``dx = sqrt(d sigma^2(t) / dt) dw`` with
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (eq. 9). Its discretisation is SMLD/NCSN with the
    geometric noise levels ``discrete_sigmas``."""

    default_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N,
                                                        dtype=torch.float64))

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _f64(t)

    def sde(self, x, t):
        check_time(t, x)
        sigma = self.sigma(t)
        g = sigma * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.zeros_like(x), g.to(x.dtype)

    def marginal_coeffs(self, t):
        sigma = self.sigma(t)
        return torch.ones_like(sigma), sigma

    def t_from_log_snr(self, log_snr):
        """VE: ``lambda = -log sigma(t)``, so ``t = (-lambda - log sigma_min) / log(sigma_max / sigma_min)``."""
        return (-_f64(log_snr) - math.log(self.sigma_min)) / (math.log(self.sigma_max) - math.log(self.sigma_min))

    def prior_sampling(self, shape, *, generator=None, device=None, dtype=torch.float32):
        z = noise.randn(self._check_shape(shape), generator, device=device, dtype=dtype)
        return z * self.sigma_max

    def prior_logp(self, z):
        return _standard_normal_logp(z, self.sigma_max)

    def step_index(self, t: Tensor) -> Tensor:
        """The SMLD noise level ``i = round(t (N-1) / T)`` of a continuous time, as int64 ``[B]``."""
        return torch.round(_f64(t) * (self.N - 1) / self.T).long()

    def discretize(self, x, t):
        """The SMLD forward step: ``x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z`` with ``sigma_{-1} = 0``."""
        check_time(t, x)
        i = self.step_index(t).cpu()
        sigma = self.discrete_sigmas[i]
        adjacent = torch.where(i == 0, torch.zeros_like(sigma), self.discrete_sigmas[(i - 1).clamp(min=0)])
        G = torch.sqrt(sigma ** 2 - adjacent ** 2).to(device=x.device, dtype=x.dtype)
        return torch.zeros_like(x), G


SDES = {"vpsde": VPSDE, "subvpsde": subVPSDE, "vesde": VESDE}


def get_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by its config name (``vpsde``, ``subvpsde``, ``vesde``)."""
    key = name.lower()
    if key not in SDES:
        raise ValueError(f"unknown sde {name!r}; available: {', '.join(SDES)}")
    return SDES[key](**kwargs)
