"""Fast solvers for the reverse process at a fixed budget of score evaluations.

Every solver here works on any SDE through its perturbation kernel ``x_t = alpha_t x_0 + sigma_t z``
and the log-SNR ``lambda_t = log(alpha_t / sigma_t)``: one adapter, :class:`DataPrediction`, turns the
score into the data prediction ``x0(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t`` (Tweedie), and the
updates below are written in ``(alpha, sigma, lambda)`` only, so VP, subVP and VE share every line.

Registered samplers (``get_sampler(name, sde=..., shape=..., nfe=..., schedule=...)``):

=================  ===========================================================  ====================
name               method (own options)                                         least nfe (+denoise)
=================  ===========================================================  ====================
``ddim``           DDIM (Song et al. 2021a, eq. 12); ``eta`` (0: deterministic)  1
``euler``          Euler on the EDM ODE (Karras et al. 2022, Alg. 2);           1
                   churn ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``
``heun``           Heun on the EDM ODE (Karras et al. 2022, Alg. 1/2), churn     2
``dpmpp_2m``       DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2);                   2
                   ``lower_order_final``
``dpmpp_3m``       DPM-Solver++(3M), third order; ``lower_order_final``          3
``dpmpp_2m_sde``   SDE-DPM-Solver++(2M) (Lu et al. 2022b), stochastic            2
``unipc``          UniPC (Zhao et al. 2023); ``order`` 1-3 (default 3),          ``order``
                   ``variant`` ``bh1``/``bh2`` (default), ``lower_order_final``
=================  ===========================================================  ====================

Options common to all: ``nfe`` (the budget of score calls, the final denoising call included; default 20),
``schedule`` (a name of :mod:`.schedules`, default ``logsnr``, or a list of times from ``T`` to ``eps``;
with a list the budget follows from its length), ``rho`` (of the ``edm`` schedule, default 7),
``denoise`` (finish with ``x0(x_eps, eps)``, which is also the EDM's last Euler step to sigma = 0; it
costs one call), ``dtype``/``device`` of the prior draw. The solvers choose their steps so that the
calls made equal ``nfe`` exactly: one call per step, Heun two (an odd budget makes its last step Euler's).
A ``callback`` sees each step of the grid (not the final denoising call), ``denoised`` the newest data prediction
the step made.
DDIM with ``eta = 0`` and ``euler`` are the same method (Karras et al. 2022, Sec. 3), kept under both names.
With ``observation=`` every solver replaces the observed part after each step (replacement data consistency,
:class:`~scoresde.sampling.base.Replacement`).
"""
import abc
import math
from typing import List, NamedTuple, Optional, Tuple

import torch

from ..progress import progress_bar
from .adaptive import ToleranceBudget
from .base import Sampler, ScoreFn, randn_like, register_sampler, tweedie_denoise
from .schedules import OPTIMIZED, check_schedule, fit_schedule, get_timesteps

Tensor = torch.Tensor

#: the budget used when ``nfe`` is not given and the schedule is a name
DEFAULT_NFE = 20


class Point(NamedTuple):
    """One time of the grid with its kernel coefficients (float64 Python floats)."""
    t: float
    alpha: float
    sigma: float
    lam: float

    @property
    def sigma_hat(self) -> float:
        """The EDM noise level ``sigma / alpha = exp(-lambda)`` of the scaled variable ``x / alpha``."""
        return math.exp(-self.lam)


class DataPrediction:
    """The one adapter from a score to the quantities the solvers use.

    ``x0(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t`` (Tweedie's formula for ``x_t = alpha_t x_0 + sigma_t z``);
    the noise prediction is ``(x - alpha_t x0) / sigma_t = -sigma_t score``.
    """

    def __init__(self, sde, score_fn: ScoreFn):
        self.sde = sde
        self.score_fn = score_fn

    def point(self, t: float) -> Point:
        tt = torch.tensor([float(t)], dtype=torch.float64)
        alpha, sigma = self.sde.marginal_coeffs(tt)
        return Point(float(t), float(alpha), float(sigma), math.log(float(alpha)) - math.log(float(sigma)))

    def point_at_log_snr(self, lam: float) -> Point:
        return self.point(float(self.sde.t_from_log_snr(torch.tensor([float(lam)], dtype=torch.float64))))

    def __call__(self, x: Tensor, p: Point) -> Tensor:
        """The data prediction ``x0`` at ``x`` and time ``p.t`` (one score call)."""
        t = torch.full((x.shape[0],), p.t, device=x.device, dtype=x.dtype)
        return tweedie_denoise(self.sde, self.score_fn, x, t)

    @staticmethod
    def noise(x: Tensor, x0: Tensor, p: Point) -> Tensor:
        """The noise prediction ``eps = (x - alpha x0) / sigma`` that goes with ``x0`` (no score call)."""
        return (x - p.alpha * x0) / p.sigma


class FastSampler(Sampler):
    """Shared set-up: the budget -> steps plan, the time grid, the adapter and the final denoising call.

    Subclasses set ``min_budget`` (score calls the method needs, denoising excluded), implement
    :meth:`steps_for_budget` / :meth:`budget_for_steps` when a step costs other than one call, and
    :meth:`solve` that maps ``x`` at ``points[0]`` to ``points[-1]``.
    """

    options = {**Sampler.options, "nfe": None, "schedule": "logsnr", "rho": 7.0}
    min_budget = 1

    def check_options(self) -> None:
        check_schedule(self.schedule)
        if not isinstance(self.denoise, bool):
            raise ValueError(f"denoise must be True or False, got {self.denoise!r}")
        if not isinstance(self.rho, (int, float)) or isinstance(self.rho, bool) or not self.rho > 0:
            raise ValueError(f"rho must be a positive number, got {self.rho!r}")
        self.min_nfe = self.min_budget + int(self.denoise)
        if isinstance(self.schedule, str):
            nfe = DEFAULT_NFE if self.nfe is None else self.nfe
            self._check_nfe(nfe)
            self.n_steps = self.steps_for_budget(nfe - int(self.denoise))
        else:
            self.n_steps = len(self.schedule) - 1
            nfe = self.budget_for_steps(self.n_steps) + int(self.denoise)
            if self.nfe is not None and self.nfe != nfe:
                raise ValueError(f"nfe={self.nfe} does not match the schedule's {self.n_steps} steps, which "
                                 f"take nfe={nfe} for {type(self).__name__}; leave nfe out to use the schedule's")
            self._check_nfe(nfe)
        self.nfe = nfe
        self.timesteps = None if isinstance(self.schedule, str) and self.schedule == OPTIMIZED else \
            get_timesteps(self.schedule, self.sde, self.n_steps, self.eps, rho=float(self.rho))

    def _check_nfe(self, nfe) -> None:
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < self.min_nfe:
            raise ValueError(f"nfe must be an integer >= {self.min_nfe} for {type(self).__name__} "
                             f"(denoise={self.denoise}), got {nfe!r}")

    def steps_for_budget(self, budget: int) -> int:
        """Number of steps that spend exactly ``budget`` score calls (one per step by default)."""
        return budget

    def budget_for_steps(self, n: int) -> int:
        """Score calls ``n`` steps take (one per step by default)."""
        return n

    def _sample(self, score_fn: ScoreFn, x: Tensor, *, generator: Optional[torch.Generator],
                progress: bool, replace) -> Tensor:
        if self.timesteps is None:  # schedule="optimized": fitted to this score at the first call, then kept
            self.timesteps, self.schedule_fit = fit_schedule(self, score_fn)
        data = DataPrediction(self.sde, score_fn)
        points = [data.point(t) for t in self.timesteps.tolist()]
        x = self.solve(data, x, points, generator=generator, progress=progress, replace=replace)
        return data(x, points[-1]) if self.denoise else x

    @abc.abstractmethod
    def solve(self, data: DataPrediction, x: Tensor, points: List[Point], *,
              generator: Optional[torch.Generator], progress: bool, replace) -> Tensor:
        """Integrate from ``x`` at ``points[0]`` through every point of the grid to ``points[-1]``, with
        ``x = replace(x, t)`` after each step (replacement data consistency; the identity without one)."""

    @staticmethod
    def _range(n: int, progress: bool):
        return progress_bar(range(n)) if progress else range(n)


def _check_nonnegative(obj, *names) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


@register_sampler("ddim")
class DDIMSampler(FastSampler):
    """DDIM (Song, Meng, Ermon 2021, eq. 12) written with ``alpha_t, sigma_t``:

    ``x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps_hat + c z``, ``eps_hat = (x_s - alpha_s x0) / sigma_s``,
    ``c = eta sigma_t sqrt(1 - exp(-2 h))``, ``h = lambda_t - lambda_s`` (eq. 16; for VP this is
    ``eta sqrt((1 - abar_t)/(1 - abar_s)) sqrt(1 - abar_s/abar_t)``). ``eta = 0`` is deterministic (the
    first-order DPM-Solver++), ``eta = 1`` the ancestral DDPM posterior.
    """

    options = {**FastSampler.options, "eta": 0.0}

    def check_options(self) -> None:
        _check_nonnegative(self, "eta")
        super().check_options()

    def solve(self, data, x, points, *, generator, progress, replace):
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            x0 = data(x, s)
            eps_hat = data.noise(x, x0, s)
            c = self.eta * t.sigma * math.sqrt(-math.expm1(-2.0 * (t.lam - s.lam)))
            x = t.alpha * x0 + math.sqrt(max(t.sigma ** 2 - c ** 2, 0.0)) * eps_hat
            if c > 0:
                x = x + c * randn_like(x, generator)
            x = replace(x, t.t)
            replace.report(i, t.t, x, x0)
        return x


@register_sampler("euler")
class EDMEulerSampler(FastSampler):
    """Euler on the probability-flow ODE in the EDM form (Karras et al. 2022, Alg. 2 without its Heun
    correction): in the scaled variable ``x_hat = x / alpha`` with noise level ``sigma_hat = exp(-lambda)``,

    ``d x_hat / d sigma_hat = (x_hat - x0(x, t)) / sigma_hat``, ``x_hat' = x_hat + (sigma_next - sigma) d``.

    Optional churn (Alg. 2, lines 4-6): for ``s_tmin <= sigma_hat <= s_tmax`` raise the noise level by
    ``gamma = min(s_churn / n_steps, sqrt(2) - 1)`` adding fresh noise ``sqrt(sigma'^2 - sigma^2) s_noise z``;
    the raised level is capped at ``sigma_hat(T)`` so that the score is never asked for beyond ``T``.
    """

    options = {**FastSampler.options, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0}

    def check_options(self) -> None:
        _check_nonnegative(self, "s_churn", "s_tmin", "s_tmax", "s_noise")
        if self.s_tmin > self.s_tmax:
            raise ValueError(f"s_tmin must not exceed s_tmax, got s_tmin={self.s_tmin}, s_tmax={self.s_tmax}")
        super().check_options()

    def heun_steps(self) -> int:
        """How many of the steps (the first ones) take the Heun correction."""
        return 0

    def _churn(self, data, x_hat, s: Point, lam_T: float, generator) -> Tuple[Tensor, Point]:
        gamma = min(self.s_churn / self.n_steps, math.sqrt(2.0) - 1.0) \
            if self.s_tmin <= s.sigma_hat <= self.s_tmax else 0.0
        lam_up = max(s.lam - math.log1p(gamma), lam_T)  # never above sigma(T): the score is not asked beyond T
        if lam_up >= s.lam:
            return x_hat, s
        s_up = data.point_at_log_snr(lam_up)
        noise = math.sqrt(s_up.sigma_hat ** 2 - s.sigma_hat ** 2) * self.s_noise
        return x_hat + noise * randn_like(x_hat, generator), s_up

    @staticmethod
    def _slope(data, x_hat, p: Point) -> Tensor:
        """``d x_hat / d sigma_hat = (x_hat - x0) / sigma_hat`` (Karras et al. 2022, eq. 4 with s = 1)."""
        return (x_hat - data(p.alpha * x_hat, p)) / p.sigma_hat

    def solve(self, data, x, points, *, generator, progress, replace):
        x_hat = x / points[0].alpha
        n_heun = self.heun_steps()
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            x_hat, s = self._churn(data, x_hat, s, points[0].lam, generator)
            d = self._slope(data, x_hat, s)
            x_next = x_hat + (t.sigma_hat - s.sigma_hat) * d
            if i < n_heun:  # Alg. 2, line 10: the trapezoidal correction
                x_next = x_hat + (t.sigma_hat - s.sigma_hat) * 0.5 * (d + self._slope(data, x_next, t))
            denoised = x_hat - s.sigma_hat * d if replace.callback is not None else None  # x0 at the step's start
            x_hat = replace(t.alpha * x_next, t.t) / t.alpha if replace else x_next
            if denoised is not None:
                replace.report(i, t.t, t.alpha * x_hat, denoised)
        return points[-1].alpha * x_hat


@register_sampler("heun")
class EDMHeunSampler(EDMEulerSampler):
    """Heun's second-order method on the EDM ODE (Karras et al. 2022, Alg. 1/2): two calls per step.
    An odd budget makes the last step an Euler step (as the EDM's final step to sigma = 0)."""

    min_budget = 2

    def steps_for_budget(self, budget):
        return (budget + 1) // 2

    def budget_for_steps(self, n):
        return 2 * n

    def heun_steps(self):
        return self.nfe - int(self.denoise) - self.n_steps


def _lower_order_final(order: int, i: int, n: int) -> int:
    """The order of step ``i`` of ``n`` for a multistep method: it warms up (``i + 1`` values are known)
    and, for short runs (``n < 10``, as in DPM-Solver and UniPC), lowers the order over the final steps."""
    k = min(order, i + 1)
    return min(k, n - i) if n < 10 else k


class _Multistep(FastSampler):
    """Multistep solvers of a given ``order``: keep the last data predictions and their points."""

    order = 2
    options = {**FastSampler.options, "lower_order_final": True}

    @property
    def min_budget(self):
        return self.order

    def check_options(self) -> None:
        if not isinstance(self.lower_order_final, bool):
            raise ValueError(f"lower_order_final must be True or False, got {self.lower_order_final!r}")
        super().check_options()

    def step_order(self, i: int) -> int:
        return _lower_order_final(self.order, i, self.n_steps) if self.lower_order_final else min(self.order, i + 1)


def _dpmpp_update(x: Tensor, s: Point, t: Point, history: List[Tuple[Point, Tensor]], k: int) -> Tensor:
    """One DPM-Solver++ step of order ``k`` from ``s`` to ``t`` (Lu et al. 2022b), with ``h = lambda_t - lambda_s``,
    ``phi_1 = e^{-h} - 1``, ``phi_2 = phi_1 / h + 1``, ``phi_3 = phi_2 / h - 1/2`` and ``m0`` the newest
    data prediction:

    - k = 1 (DDIM): ``x_t = sigma_t/sigma_s x_s - alpha_t phi_1 m0``;
    - k = 2 (2M, Alg. 2): ``x_t = sigma_t/sigma_s x_s - alpha_t phi_1 (m0 + D1_0 / 2)``, ``D1_0 = (m0 - m1) / r0``,
      ``r0 = h_0 / h``;
    - k = 3 (3M): the exact integral of the quadratic through ``m0, m1, m2`` in ``lambda``:
      ``x_t = sigma_t/sigma_s x_s - alpha_t phi_1 m0 + alpha_t phi_2 D1 - alpha_t phi_3 D2`` with
      ``D1 = h x0' + O(h^3)`` and ``D2 = h^2 x0'' + O(h^3)`` from the divided differences. (The code of
      DPM-Solver and k-diffusion uses half this ``D2``, which leaves their 3M second order asymptotically;
      ``tests/test_fast_solvers.py`` asserts third order for this one.)
    """
    h = t.lam - s.lam
    phi_1 = math.expm1(-h)
    (_, m0) = history[-1]
    x_t = (t.sigma / s.sigma) * x - (t.alpha * phi_1) * m0
    if k == 1:
        return x_t
    p1, m1 = history[-2]
    r0 = (s.lam - p1.lam) / h
    d1_0 = (m0 - m1) / r0
    if k == 2:
        return x_t - (0.5 * t.alpha * phi_1) * d1_0
    p2, m2 = history[-3]
    r1 = (p1.lam - p2.lam) / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)   # = h x0' + O(h^3)
    d2 = (2.0 / (r0 + r1)) * (d1_0 - d1_1)          # = h^2 x0'' + O(h^3)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return x_t + (t.alpha * phi_2) * d1 - (t.alpha * phi_3) * d2


@register_sampler("dpmpp_2m")
class DPMSolverPP2MSampler(ToleranceBudget, _Multistep):
    """DPM-Solver++(2M): multistep second order in ``lambda`` on the data prediction (Lu et al. 2022b, Alg. 2);
    first step first order, and for fewer than 10 steps a first-order last step (``lower_order_final``)."""

    order = 2

    def solve(self, data, x, points, *, generator, progress, replace):
        history: List[Tuple[Point, Tensor]] = []
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            history = (history + [(s, data(x, s))])[-self.order:]
            x = replace(_dpmpp_update(x, s, t, history, self.step_order(i)), t.t)
            replace.report(i, t.t, x, history[-1][1])
        return x


@register_sampler("dpmpp_3m")
class DPMSolverPP3MSampler(DPMSolverPP2MSampler):
    """DPM-Solver++(3M): the third-order multistep update of :func:`_dpmpp_update` (warm-up with orders 1, 2;
    lower orders over the final steps when there are fewer than 10)."""

    order = 3


@register_sampler("dpmpp_2m_sde")
class DPMSolverPP2MSDESampler(_Multistep):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Sec. 5 / App.; "midpoint" form): with ``h = lambda_t - lambda_s``,

    ``x_t = sigma_t/sigma_s e^{-h} x_s + alpha_t (1 - e^{-2h}) (m0 + D1_0 / 2) + sigma_t sqrt(1 - e^{-2h}) z``,

    ``D1_0 = (m0 - m1) / r0`` (zero on first-order steps). Its first-order step is DDIM with ``eta = 1``.
    """

    order = 2

    def solve(self, data, x, points, *, generator, progress, replace):
        history: List[Tuple[Point, Tensor]] = []
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            history = (history + [(s, data(x, s))])[-self.order:]
            h = t.lam - s.lam
            one_m_e2h = -math.expm1(-2.0 * h)
            (_, m0) = history[-1]
            if self.step_order(i) == 2:
                p1, m1 = history[-2]
                m0 = m0 + 0.5 * (m0 - m1) * h / (s.lam - p1.lam)
            x = (t.sigma / s.sigma * math.exp(-h)) * x + (t.alpha * one_m_e2h) * m0 \
                + (t.sigma * math.sqrt(one_m_e2h)) * randn_like(x, generator)
            x = replace(x, t.t)
            replace.report(i, t.t, x, history[-1][1])
        return x


def _unipc_coefficients(h: float, rks: List[float], variant: str):
    """The UniPC linear system (Zhao et al. 2023, Alg. 2/3, data prediction): with ``hh = -h``,
    ``B(h) = hh`` (bh1) or ``e^{hh} - 1`` (bh2), ``R[i, j] = r_j^i`` and ``b_i = i! phi_{i+1}(hh) / B(h)``,
    ``phi_1 = e^{hh} - 1``, ``phi_{k+1} = phi_k / hh - 1/k!`` (here ``phi_k`` is ``h``-scaled as in the paper)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1.0
    R, b = [], []
    for i in range(1, len(rks) + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


@register_sampler("unipc")
class UniPCSampler(ToleranceBudget, _Multistep):
    """UniPC (Zhao et al. 2023): the unified predictor UniP-p (Alg. 3) and corrector UniC-p (Alg. 2) with the
    B(h) variants ``bh1`` (``B(h) = h``) and ``bh2`` (``B(h) = e^h - 1``), on the data prediction.

    With ``x_lin = sigma_t/sigma_s x_s - alpha_t phi_1 m0`` and ``D_k = (m_k - m0) / r_k``,
    predictor ``x_t = x_lin - alpha_t B(h) sum_k a_k D_k``, corrector
    ``x_t^c = x_lin - alpha_t B(h) (sum_k c_k D_k + c_t (m_t - m0))`` where ``m_t`` is the data prediction at
    the predicted ``x_t``; that call is reused by the next step, so the corrector costs nothing and
    the last step takes none. ``order`` (1-3) is that of the predictor; the corrector raises it by one.
    """

    options = {**_Multistep.options, "order": 3, "variant": "bh2"}

    @property
    def min_budget(self):
        return self.order if isinstance(self.order, int) else 1

    def check_options(self) -> None:
        if self.order not in (1, 2, 3) or isinstance(self.order, bool):
            raise ValueError(f"order must be 1, 2 or 3, got {self.order!r}")
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f"variant must be 'bh1' or 'bh2', got {self.variant!r}")
        super().check_options()

    def _update(self, x, s, t, history, k, m_t=None):
        """Predictor (``m_t is None``) or corrector of order ``k`` from ``s`` to ``t``; ``history[-1]`` is at ``s``."""
        h = t.lam - s.lam
        (_, m0) = history[-1]
        rks = [(p.lam - s.lam) / h for p, _ in history[-k:-1]][::-1] + [1.0]
        diffs = [(m - m0) / r for (p, m), r in zip(history[-k:-1][::-1], rks)]
        h_phi_1, b_h, R, b = _unipc_coefficients(h, rks, self.variant)
        x_lin = (t.sigma / s.sigma) * x - (t.alpha * h_phi_1) * m0
        if m_t is None:      # UniP-k: k - 1 previous differences
            if k == 1:
                return x_lin
            rhos = [0.5] if k == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            return x_lin - (t.alpha * b_h) * sum(r * d for r, d in zip(rhos, diffs))
        rhos = [0.5] if k == 1 else torch.linalg.solve(R, b).tolist()
        corr = sum((r * d for r, d in zip(rhos[:-1], diffs)), torch.zeros_like(x)) + rhos[-1] * (m_t - m0)
        return x_lin - (t.alpha * b_h) * corr

    def solve(self, data, x, points, *, generator, progress, replace):
        history: List[Tuple[Point, Tensor]] = [(points[0], data(x, points[0]))]
        n = len(points) - 1
        for i in self._range(n, progress):
            s, t = points[i], points[i + 1]
            k = self.step_order(i)
            x_pred = self._update(x, s, t, history, k)
            if i == n - 1:
                x = replace(x_pred, t.t)
                replace.report(i, t.t, x, history[-1][1])
                return x
            x_pred = replace(x_pred, t.t)
            m_t = data(x_pred, t)
            x = replace(self._update(x, s, t, history, k, m_t=m_t), t.t)
            history = (history + [(t, m_t)])[-self.order:]
            replace.report(i, t.t, x, m_t)
        return x


__all__ = ["DataPrediction", "Point", "FastSampler", "DDIMSampler", "EDMEulerSampler", "EDMHeunSampler",
           "DPMSolverPP2MSampler", "DPMSolverPP3MSampler", "DPMSolverPP2MSDESampler", "UniPCSampler"]
