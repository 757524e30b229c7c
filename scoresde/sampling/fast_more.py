"""More fast solvers, under the names k-diffusion and diffusers users know, on the base of :mod:`.fast`.

The same options (``nfe``, ``schedule``, ``rho``, ``eps``, ``denoise``), the same exact budget of score calls, and
VP, subVP and VE alike: every update is written with ``alpha_t``, ``sigma_t`` and the log-SNR ``lambda_t`` only,
most in the scaled variable ``x_hat = x / alpha`` with noise level ``sigma_hat = sigma / alpha = e^{-lambda}`` (the
EDM / k-diffusion form, where the probability-flow ODE is ``d x_hat / d sigma_hat = (x_hat - x0) / sigma_hat``
for every SDE). Intermediate points are times of the SDE found from their log-SNR (``sde.t_from_log_snr``).

=======================  ===============================================================  ====================
name                     method (own options)                                             least nfe (+denoise)
=======================  ===============================================================  ====================
``euler_ancestral``      Euler to ``sigma_down``, then noise ``sigma_up`` (k-diffusion);  1
                         ``eta`` (1), ``s_noise`` (1), ``noise``
``dpm_2``                DPM-Solver-2 (Lu et al. 2022a, Alg. 1, ``r1 = 1/2``), two calls    2
                         a step (an odd budget makes the last step Euler's)
``dpm_2_ancestral``      ``dpm_2`` to ``sigma_down``, then noise; ``eta`` (1, at most 1),  2
                         ``s_noise``, ``noise``
``lms``                  linear multistep (Adams-Bashforth) in ``sigma_hat``; ``order``    ``order``
                         1-4 (4), ``lower_order_final``
``ipndm``                improved PNDM (Zhang & Chen 2023): Adams-Bashforth with the       ``order``
                         fixed-step coefficients; ``order`` 1-4 (4), ``lower_order_final``
``deis``                 tAB-DEIS (Zhang & Chen 2023): the noise prediction                ``order``
                         extrapolated in ``t``; ``order`` 1-3 (3), ``lower_order_final``
``dpmpp_2s_ancestral``   DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1) to ``sigma_down``,     2
                         then noise; ``eta`` (1, at most 1), ``s_noise``, ``noise``
``dpmpp_sde``            single-step SDE-DPM-Solver++ with midpoint ``r`` (1/2) (k-diff.); 2
                         ``eta`` (1, at most 1), ``s_noise``, ``noise``
``dpmpp_3m_sde``         SDE-DPM-Solver++(3M); ``eta`` (1), ``s_noise``, ``noise``,        3
                         ``lower_order_final``
``dpm_solver``           single-step DPM-Solver (Lu et al. 2022a, Alg. 1-2) with its fast  1
                         order plan ("DPM-Solver-fast"); ``order`` 1-3 (3)
=======================  ===============================================================  ====================

``noise`` (the stochastic ones): ``"gaussian"`` (default) draws each step's noise from the generator (or the rows'
streams of ``seeds=``); ``"brownian"`` takes it from one Brownian motion ``W`` indexed by ``sigma_hat``, as
k-diffusion's ``BrownianTreeNoiseSampler``: the step from ``sigma_hat_a`` to ``sigma_hat_b`` gets
``(W(b) - W(a)) / sqrt(|b - a|)``, so a run with other steps sees the same path (a ``torchsde.BrownianInterval``
seeded from the generator; with ``seeds=`` one interval per row, :class:`~scoresde.sampling.sde.RowBrownian`).
Two-call steps spend the budget as ``heun`` does: ``(nfe - denoise + 1) // 2`` steps, the last one a one-call
step (Euler's, ancestral for the ancestral ones) when the budget is odd. ``dpm_solver`` takes
``K = nfe // 3 + 1`` steps (order 3) of orders ``3, ..., 3, 2, 1`` / ``3, ..., 3, 1`` / ``3, ..., 3, 2`` for
``nfe % 3 = 0 / 1 / 2``; with a list of times it takes ``3 n - 1`` calls (order 3), ``2 n`` (order 2).
"""
import abc
import math
from typing import List, Tuple

import numpy as np
import torch

from ..noise import RowNoise
from ..utils import randn_like
from .base import register_sampler
from .fast import FastSampler, Point, _check_nonnegative, _Multistep

Tensor = torch.Tensor
NOISES = ("gaussian", "brownian")


# ------------------------------------------------------------------------------------------------ helpers
def _x0(data, x_hat: Tensor, p: Point) -> Tensor:
    """The data prediction at the scaled state ``x_hat`` (one score call)."""
    return data(p.alpha * x_hat, p)


def _first_order(x_hat: Tensor, x0: Tensor, sig_from: float, sig_to: float) -> Tensor:
    """DPM-Solver++(1) (= DDIM = Euler in ``sigma_hat``) from noise level ``sig_from`` to ``sig_to``:
    ``x_hat' = (sig_to / sig_from) x_hat - (e^{-h} - 1) x0``, ``h = log(sig_from / sig_to)``."""
    return (sig_to / sig_from) * x_hat - math.expm1(math.log(sig_to) - math.log(sig_from)) * x0


def _ancestral_step(s: Point, t: Point, eta: float) -> Tuple[float, float]:
    """``(sigma_down, sigma_up)`` of k-diffusion's ``get_ancestral_step`` in ``sigma_hat``: the DDPM posterior's
    noise ``sigma_up = min(sigma_t, eta sigma_t sqrt(1 - e^{-2h}))`` (``h = lambda_t - lambda_s``; DDIM's ``c``, Song
    et al. 2021a eq. 16, divided by ``alpha_t``), and ``sigma_down = sqrt(sigma_t^2 - sigma_up^2)``."""
    up = min(t.sigma_hat, eta * t.sigma_hat * math.sqrt(-math.expm1(-2.0 * (t.lam - s.lam))))
    return math.sqrt(max(t.sigma_hat ** 2 - up ** 2, 0.0)), up


def _finish(replace, i: int, t: Point, x_hat: Tensor, denoised: Tensor) -> Tensor:
    """End of step ``i`` at ``t`` in the scaled variable: replacement (when observing) and the callback."""
    if replace:
        x_hat = replace(t.alpha * x_hat, t.t) / t.alpha
    if replace.callback is not None:
        replace.report(i, t.t, t.alpha * x_hat, denoised)
    return x_hat


class _NoiseSource:
    """Standard normal noise for a step between two noise levels ``sigma_hat``: fresh draws (``gaussian``) or the
    normalised increment ``(W(b) - W(a)) / sqrt(|b - a|)`` of one Brownian motion in ``sigma_hat`` (``brownian``)."""

    def __init__(self, kind: str, like: Tensor, generator, lo: float, hi: float):
        self.like, self.generator, self.bm = like, generator, None
        if kind == "brownian":
            self.bm = _brownian(like, generator, lo, hi)

    def __call__(self, a: float, b: float) -> Tensor:
        if self.bm is None:
            return randn_like(self.like, self.generator)
        lo, hi = min(a, b), max(a, b)
        w = self.bm(lo, hi).view(self.like.shape)
        return w * ((1.0 if b > a else -1.0) / math.sqrt(hi - lo))


def _brownian(like: Tensor, generator, lo: float, hi: float):
    """A Brownian motion on ``[lo, hi]`` shaped ``[B, D]`` (flattened ``like``), its entropy from ``generator`` (per
    row with a :class:`~scoresde.noise.RowNoise`); the dyadic tree makes ``W(s)`` a function of the seed and ``s``."""
    import torchsde
    from .sde import RowBrownian
    flat = (like.shape[0], like[0].numel())

    def interval(size, seed):
        return torchsde.BrownianInterval(t0=lo, t1=hi, size=size, dtype=like.dtype, device=like.device, entropy=seed,
                                         halfway_tree=True, tol=1e-6 * (hi - lo))

    if isinstance(generator, RowNoise):
        return RowBrownian([interval((1, flat[1]), seed) for seed in generator.entropy()])
    seed = int(torch.randint(2 ** 62, (), generator=generator, device=generator.device if generator else "cpu"))
    return interval(flat, seed)


def _check_order(obj, allowed) -> None:
    if isinstance(obj.order, bool) or not isinstance(obj.order, int) or obj.order not in allowed:
        raise ValueError(f"order must be one of {', '.join(map(str, allowed))} for {type(obj).__name__}, "
                         f"got {obj.order!r}")


class _TwoStage:
    """The budget plan of two-call steps: ``(budget + 1) // 2`` steps, the last a one-call step for an odd budget."""

    min_budget = 2

    def steps_for_budget(self, budget):
        return (budget + 1) // 2

    def budget_for_steps(self, n):
        return 2 * n

    def two_stage(self, i: int) -> bool:
        return i < self.nfe - int(self.denoise) - self.n_steps


class _Stochastic(FastSampler):
    """Options and checks of the ancestral / SDE solvers: ``eta``, ``s_noise``, ``noise``."""

    options = {**FastSampler.options, "eta": 1.0, "s_noise": 1.0, "noise": "gaussian"}
    #: the largest ``eta`` (two-call ancestral steps need ``sigma_down > 0`` and a midpoint inside the step)
    max_eta = math.inf

    def check_options(self) -> None:
        _check_nonnegative(self, "eta", "s_noise")
        if self.eta > self.max_eta:
            raise ValueError(f"eta must be in [0, {self.max_eta:g}] for {type(self).__name__}, got {self.eta!r}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {self.noise!r}")
        super().check_options()

    def noise_source(self, x: Tensor, points: List[Point], generator) -> _NoiseSource:
        return _NoiseSource(self.noise, x, generator, points[-1].sigma_hat, points[0].sigma_hat)


# ------------------------------------------------------------------------------------------------ ancestral
class _Ancestral(_Stochastic):
    """Ancestral steps: a deterministic step (:meth:`descend`) from ``sigma_hat_s`` down to ``sigma_down``, then
    ``+ s_noise sigma_up z`` (:func:`_ancestral_step`)."""

    @abc.abstractmethod
    def descend(self, data, x_hat: Tensor, x0: Tensor, s: Point, sig_down: float, i: int) -> Tuple[Tensor, Tensor]:
        """Step ``i`` from ``s`` to noise level ``sig_down``: the new ``x_hat`` and the newest data prediction."""

    def solve(self, data, x, points, *, generator, progress, replace):
        noise = self.noise_source(x, points, generator)
        x_hat = x / points[0].alpha
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            down, up = _ancestral_step(s, t, self.eta)
            x_hat, x0 = self.descend(data, x_hat, _x0(data, x_hat, s), s, down, i)
            if up > 0:
                x_hat = x_hat + (self.s_noise * up) * noise(s.sigma_hat, t.sigma_hat)
            x_hat = _finish(replace, i, t, x_hat, x0)
        return points[-1].alpha * x_hat


@register_sampler("euler_ancestral")
class EulerAncestralSampler(_Ancestral):
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral``): with ``d = (x_hat - x0) / sigma_hat_s``,

    ``x_hat' = x_hat + (sigma_down - sigma_hat_s) d + s_noise sigma_up z`` (:func:`_ancestral_step`).

    The same map as DDIM with the same ``eta`` (Song et al. 2021a, eq. 12; Karras et al. 2022, Sec. 3), one call
    a step."""

    def descend(self, data, x_hat, x0, s, sig_down, i):
        return x_hat + (sig_down - s.sigma_hat) * ((x_hat - x0) / s.sigma_hat), x0


@register_sampler("dpm_2")
class DPM2Sampler(_TwoStage, FastSampler):
    """DPM-Solver-2 (Lu et al. 2022a, Alg. 1 with ``r1 = 1/2``; k-diffusion's ``sample_dpm_2``), in the scaled
    variable, where ``alpha_t/alpha_s x_s - sigma_t (e^h - 1) eps`` reads ``x_hat + (sigma_hat_t - sigma_hat_s) eps``:

    ``u = x_hat + (sigma_hat_m - sigma_hat_s) eps(x_hat, s)``,
    ``x_hat' = x_hat + (sigma_hat_t - sigma_hat_s) eps(u, m)``,

    ``lambda_m = (lambda_s + lambda_t) / 2`` (``sigma_hat_m = sqrt(sigma_hat_s sigma_hat_t)``), ``eps = (x_hat - x0) /
    sigma_hat``. Two calls a step; second order."""

    def solve(self, data, x, points, *, generator, progress, replace):
        x_hat = x / points[0].alpha
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            x_hat, x0 = self._step(data, x_hat, _x0(data, x_hat, s), s, t.sigma_hat, self.two_stage(i))
            x_hat = _finish(replace, i, t, x_hat, x0)
        return points[-1].alpha * x_hat

    @staticmethod
    def _step(data, x_hat, x0, s: Point, sig_to: float, two: bool):
        """From ``s`` to noise level ``sig_to`` (``sigma_hat_t``, or ``sigma_down`` of an ancestral step):
        DPM-Solver-2 with its midpoint in log-SNR, or Euler; returns the new ``x_hat`` and the newest ``x0``."""
        d = (x_hat - x0) / s.sigma_hat
        if not two:
            return x_hat + (sig_to - s.sigma_hat) * d, x0
        m = data.point_at_log_snr(0.5 * (s.lam - math.log(sig_to)))
        u = x_hat + (m.sigma_hat - s.sigma_hat) * d
        x0_m = _x0(data, u, m)
        return x_hat + (sig_to - s.sigma_hat) * ((u - x0_m) / m.sigma_hat), x0_m


@register_sampler("dpm_2_ancestral")
class DPM2AncestralSampler(_TwoStage, _Ancestral):
    """DPM-Solver-2 ancestral (k-diffusion's ``sample_dpm_2_ancestral``): the :class:`DPM2Sampler` step from
    ``sigma_hat_s`` to ``sigma_down``, then ``+ s_noise sigma_up z`` (:func:`_ancestral_step`). ``eta = 0`` is
    ``dpm_2``. ``eta`` is at most 1, so that ``sigma_down > 0`` and the midpoint lies inside the step."""

    max_eta = 1.0

    def descend(self, data, x_hat, x0, s, sig_down, i):
        return DPM2Sampler._step(data, x_hat, x0, s, sig_down, self.two_stage(i))


@register_sampler("dpmpp_2s_ancestral")
class DPMSolverPP2SAncestralSampler(_TwoStage, _Ancestral):
    """DPM-Solver++(2S) ancestral (k-diffusion's ``sample_dpmpp_2s_ancestral``): DPM-Solver++(2S) (Lu et al. 2022b,
    Alg. 1, ``r = 1/2``) from ``sigma_hat_s`` to ``sigma_down``, then ``+ s_noise sigma_up z``. With
    ``h = log(sigma_hat_s / sigma_down)`` and the point ``m`` at ``lambda_s + h/2``:

    ``u = (sigma_hat_m / sigma_hat_s) x_hat - (e^{-h/2} - 1) x0(x_hat, s)``,
    ``x_hat' = (sigma_down / sigma_hat_s) x_hat - (e^{-h} - 1) x0(u, m)``.

    A one-call step is DPM-Solver++(1). ``eta`` is at most 1; ``eta = 0`` is the deterministic DPM-Solver++(2S)."""

    max_eta = 1.0

    def descend(self, data, x_hat, x0, s, sig_down, i):
        if self.two_stage(i):
            m = data.point_at_log_snr(0.5 * (s.lam - math.log(sig_down)))
            x0 = _x0(data, _first_order(x_hat, x0, s.sigma_hat, m.sigma_hat), m)
        return _first_order(x_hat, x0, s.sigma_hat, sig_down), x0


@register_sampler("dpmpp_sde")
class DPMSolverPPSDESampler(_TwoStage, _Stochastic):
    """Single-step SDE-DPM-Solver++ (k-diffusion's ``sample_dpmpp_sde``; Lu et al. 2022b, the stochastic
    DPM-Solver++ with an intermediate point). With ``h = lambda_t - lambda_s``, the point ``u`` at ``lambda_s + r h``
    and ``f = 1 / (2 r)``:

    ``x_u = DPM-Solver++(1)(x_hat, x0_s; sigma_hat_s -> sigma_down(s, u)) + s_noise sigma_up(s, u) z_1``,
    ``x_hat' = DPM-Solver++(1)(x_hat, (1 - f) x0_s + f x0(x_u, u); sigma_hat_s -> sigma_down(s, t))
    + s_noise sigma_up(s, t) z_2``

    (:func:`_first_order`, :func:`_ancestral_step`). With ``noise="brownian"`` ``z_1`` and ``z_2`` are the
    increments of one path over ``[sigma_hat_u, sigma_hat_s]`` and ``[sigma_hat_t, sigma_hat_s]``, as k-diffusion's.
    Options ``r`` (1/2, in (0, 1)), ``eta`` (1, at most 1; ``eta = 0`` is deterministic and second order)."""

    options = {**_Stochastic.options, "r": 0.5}
    max_eta = 1.0

    def check_options(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, (int, float)) or not 0 < self.r < 1:
            raise ValueError(f"r must be a number in (0, 1) (the midpoint's share of the step), got {self.r!r}")
        super().check_options()

    def solve(self, data, x, points, *, generator, progress, replace):
        noise = self.noise_source(x, points, generator)
        x_hat = x / points[0].alpha
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            x0 = _x0(data, x_hat, s)
            if self.two_stage(i):
                u = data.point_at_log_snr(s.lam + self.r * (t.lam - s.lam))
                down, up = _ancestral_step(s, u, self.eta)
                x_u = _first_order(x_hat, x0, s.sigma_hat, down)
                if up > 0:
                    x_u = x_u + (self.s_noise * up) * noise(s.sigma_hat, u.sigma_hat)
                f = 0.5 / self.r
                x0 = (1.0 - f) * x0 + f * _x0(data, x_u, u)
            down, up = _ancestral_step(s, t, self.eta)
            x_hat = _first_order(x_hat, x0, s.sigma_hat, down)
            if up > 0:
                x_hat = x_hat + (self.s_noise * up) * noise(s.sigma_hat, t.sigma_hat)
            x_hat = _finish(replace, i, t, x_hat, x0)
        return points[-1].alpha * x_hat


@register_sampler("dpmpp_3m_sde")
class DPMSolverPP3MSDESampler(_Multistep, _Stochastic):
    """SDE-DPM-Solver++(3M) (k-diffusion's ``sample_dpmpp_3m_sde``): with ``h = lambda_t - lambda_s``,
    ``H = (1 + eta) h``, ``phi_2 = (e^{-H} - 1) / H + 1``, ``phi_3 = phi_2 / H - 1/2``,

    ``x_t = sigma_t/sigma_s e^{-eta h} x_s + alpha_t (1 - e^{-H}) m0 + alpha_t phi_2 D1 - alpha_t phi_3 D2
    + s_noise sigma_t sqrt(1 - e^{-2 eta h}) z``,

    the exact integral of the quadratic through the last three data predictions in ``lambda`` (``D1 = h x0' +
    O(h^3)``, ``D2 = h^2 x0'' + O(h^3)``, as :func:`~scoresde.sampling.fast._dpmpp_update`; k-diffusion's ``D2`` is
    half of it), ``D2 = 0`` on second-order steps and ``D1 = D2 = 0`` on first-order ones. ``eta = 0`` is
    deterministic and third order."""

    order = 3
    options = {**_Multistep.options, **_Stochastic.options}

    def solve(self, data, x, points, *, generator, progress, replace):
        noise = self.noise_source(x, points, generator)
        history: List[Tuple[Point, Tensor]] = []
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            history = (history + [(s, data(x, s))])[-self.order:]
            h = t.lam - s.lam
            H = (1.0 + self.eta) * h
            m0 = history[-1][1]
            x = (t.sigma / s.sigma * math.exp(-self.eta * h)) * x - (t.alpha * math.expm1(-H)) * m0
            k = self.step_order(i)
            if k >= 2:
                phi_2 = math.expm1(-H) / H + 1.0
                d1, d2 = _divided_differences(s, h, history, k)
                x = x + (t.alpha * phi_2) * d1
                if k == 3:
                    x = x - (t.alpha * (phi_2 / H - 0.5)) * d2
            if self.eta > 0 and self.s_noise > 0:
                x = x + (self.s_noise * t.sigma * math.sqrt(-math.expm1(-2.0 * self.eta * h))) \
                    * noise(s.sigma_hat, t.sigma_hat)
            x = replace(x, t.t)
            replace.report(i, t.t, x, m0)
        return x


def _divided_differences(s: Point, h: float, history, k: int):
    """``(D1, D2)`` from the last ``k`` data predictions (``history[-1]`` at ``s``): ``D1 = h x0'``, ``D2 = h^2 x0''``
    up to ``O(h^3)`` (``D2`` is None for ``k = 2``)."""
    (_, m0), (p1, m1) = history[-1], history[-2]
    r0 = (s.lam - p1.lam) / h
    d1_0 = (m0 - m1) / r0
    if k == 2:
        return d1_0, None
    p2, m2 = history[-3]
    r1 = (p1.lam - p2.lam) / h
    d1_1 = (m1 - m2) / r1
    return d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (2.0 / (r0 + r1)) * (d1_0 - d1_1)


# ------------------------------------------------------------------------------------------------ multistep
class _SigmaMultistep(_Multistep):
    """Multistep in ``sigma_hat`` on the slope ``d = (x_hat - x0) / sigma_hat`` (``= eps``): ``x_hat' = x_hat +
    sum_j c_j d_{i-j}`` with the coefficients of :meth:`coefficients`; ``order`` is an option."""

    options = {**_Multistep.options, "order": 4}
    orders = (1, 2, 3, 4)

    @property
    def min_budget(self):
        return self.order if isinstance(self.order, int) and not isinstance(self.order, bool) else 1

    def check_options(self) -> None:
        _check_order(self, self.orders)
        super().check_options()

    @abc.abstractmethod
    def coefficients(self, data, points: List[Point], i: int, k: int) -> List[float]:
        """``c_j``, ``j = 0..k-1``, for step ``i`` from ``points[i]`` with ``k`` slopes (newest first)."""

    def solve(self, data, x, points, *, generator, progress, replace):
        x_hat = x / points[0].alpha
        slopes: List[Tensor] = []
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            x0 = _x0(data, x_hat, s)
            slopes = ([(x_hat - x0) / s.sigma_hat] + slopes)[:self.order]
            k = self.step_order(i)
            c = self.coefficients(data, points, i, k)
            x_hat = x_hat + sum(cj * dj for cj, dj in zip(c, slopes[:k]))
            x_hat = _finish(replace, i, t, x_hat, x0)
        return points[-1].alpha * x_hat


@register_sampler("lms")
class LMSSampler(_SigmaMultistep):
    """Linear multistep (k-diffusion's ``sample_lms``): variable-step Adams-Bashforth of order ``k`` in
    ``sigma_hat``,
    ``c_j = int_{sigma_i}^{sigma_{i+1}} prod_{m != j} (s - sigma_{i-m}) / (sigma_{i-j} - sigma_{i-m}) ds``
    (the integral of the Lagrange basis through the last ``k`` noise levels; exact, by polynomial integration)."""

    def coefficients(self, data, points, i, k):
        s0, s1 = points[i].sigma_hat, points[i + 1].sigma_hat
        h = s1 - s0
        nodes = [(points[i - j].sigma_hat - s0) / h for j in range(k)]  # in units of the step, from sigma_i
        out = []
        for j in range(k):
            others = [u for m, u in enumerate(nodes) if m != j]
            basis = np.polynomial.Polynomial.fromroots(others) / np.prod([nodes[j] - u for u in others]) \
                if others else np.polynomial.Polynomial([1.0])
            integral = basis.integ()
            out.append(h * float(integral(1.0) - integral(0.0)))
        return out


#: Adams-Bashforth coefficients for equal steps, orders 1-4 (newest slope first)
ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@register_sampler("ipndm")
class IPNDMSampler(_SigmaMultistep):
    """Improved PNDM (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator", App.;
    k-diffusion's ``sample_ipndm``): Adams-Bashforth in ``sigma_hat`` with the equal-step coefficients
    ``1``, ``(3, -1)/2``, ``(23, -16, 5)/12``, ``(55, -59, 37, -9)/24`` whatever the steps, and lower orders to warm up
    (instead of PNDM's Runge-Kutta start): ``x_hat' = x_hat + (sigma_hat_t - sigma_hat_s) sum_j c_j d_{i-j}``.

    On a grid whose steps vary (every schedule here), fixed coefficients are exact only to first order in the
    change of step, which leaves the method second order asymptotically (``tests/test_fast_solvers_more.py``
    measures it); at practical budgets its error is far below that bound."""

    def coefficients(self, data, points, i, k):
        h = points[i + 1].sigma_hat - points[i].sigma_hat
        return [h * c for c in ADAMS_BASHFORTH[k]]


#: Gauss-Legendre nodes and weights on [-1, 1] for the DEIS coefficients
_GAUSS = np.polynomial.legendre.leggauss(24)


@register_sampler("deis")
class DEISSampler(_SigmaMultistep):
    """tAB-DEIS (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator", the variant
    with the polynomial in ``t``): the exponential integrator in the scaled variable with the noise prediction
    ``eps = d`` extrapolated by the Lagrange polynomial through the last ``k`` times ``t_{i-j}``:

    ``x_hat' = x_hat + sum_j C_j eps_{i-j}``, ``C_j = int_{t_i}^{t_{i+1}} (d sigma_hat / d t) l_j(t) dt
    = -int_{lambda_i}^{lambda_{i+1}} e^{-lambda} l_j(t(lambda)) d lambda``,

    by 24-point Gauss-Legendre in ``lambda``. Order 1 is DDIM. ``order`` 1-3 (3)."""

    options = {**_SigmaMultistep.options, "order": 3}
    orders = (1, 2, 3)

    def coefficients(self, data, points, i, k):
        s, t = points[i], points[i + 1]
        if k == 1:
            return [t.sigma_hat - s.sigma_hat]
        x, w = _GAUSS
        lam = 0.5 * (t.lam - s.lam) * x + 0.5 * (t.lam + s.lam)
        tau = data.sde.t_from_log_snr(torch.from_numpy(lam)).numpy()
        weight = -np.exp(-lam) * w * 0.5 * (t.lam - s.lam)
        times = [points[i - j].t for j in range(k)]
        out = []
        for j in range(k):
            basis = np.ones_like(tau)
            for m in range(k):
                if m != j:
                    basis = basis * (tau - times[m]) / (times[j] - times[m])
            out.append(float(np.sum(weight * basis)))
        return out


# ------------------------------------------------------------------------------------------------ single-step
def dpm_solver_orders(budget: int, order: int) -> List[int]:
    """The order of each step of DPM-Solver-fast (Lu et al. 2022a) for ``budget`` score calls."""
    if order == 3:
        k = budget // 3 + 1
        return [3] * (k - 2) + [2, 1] if budget % 3 == 0 else [3] * (k - 1) + [budget % 3]
    return [2] * (budget // 2) + [1] * (budget % 2) if order == 2 else [1] * budget


@register_sampler("dpm_solver")
class DPMSolverSampler(FastSampler):
    """Single-step DPM-Solver (Lu et al. 2022a) on the noise prediction ``eps = (x - alpha x0) / sigma``, with
    ``h = lambda_t - lambda_s`` and intermediate points ``s_j`` at ``lambda_s + r_j h``:

    - DPM-Solver-1 (= DDIM): ``x_t = alpha_t/alpha_s x_s - sigma_t (e^h - 1) eps_s``;
    - DPM-Solver-2 (Alg. 1, ``r_1 = 1/2``): ``u = alpha_1/alpha_s x_s - sigma_1 (e^{r_1 h} - 1) eps_s``,
      ``x_t = alpha_t/alpha_s x_s - sigma_t (e^h - 1) eps_s - sigma_t/(2 r_1) (e^h - 1) (eps(u, s_1) - eps_s)``;
    - DPM-Solver-3 (Alg. 2, ``r_1 = 1/3``, ``r_2 = 2/3``): ``u_1`` as above, ``D_1 = eps(u_1, s_1) - eps_s``,
      ``u_2 = alpha_2/alpha_s x_s - sigma_2 (e^{r_2 h} - 1) eps_s - sigma_2 r_2/r_1 ((e^{r_2 h} - 1)/(r_2 h) - 1) D_1``,
      ``x_t = alpha_t/alpha_s x_s - sigma_t (e^h - 1) eps_s - sigma_t/r_2 ((e^h - 1)/h - 1) (eps(u_2, s_2) - eps_s)``.

    The budget is spent by the paper's "DPM-Solver-fast" plan (:func:`dpm_solver_orders`) on a grid of ``K``
    steps (uniform in log-SNR by default, as in the paper). ``order`` 1-3 (3)."""

    options = {**FastSampler.options, "order": 3}

    def check_options(self) -> None:
        _check_order(self, (1, 2, 3))
        super().check_options()

    def steps_for_budget(self, budget):
        return len(dpm_solver_orders(budget, self.order))

    def budget_for_steps(self, n):
        return {1: n, 2: 2 * n, 3: 3 * n - 1}[self.order]

    def solve(self, data, x, points, *, generator, progress, replace):
        orders = dpm_solver_orders(self.nfe - int(self.denoise), self.order)
        for i in self._range(len(points) - 1, progress):
            s, t = points[i], points[i + 1]
            x0 = data(x, s)
            x, x0 = self._step(data, x, x0, s, t, orders[i])
            x = replace(x, t.t)
            replace.report(i, t.t, x, x0)
        return x

    @staticmethod
    def _step(data, x: Tensor, x0: Tensor, s: Point, t: Point, k: int):
        h = t.lam - s.lam
        eps_s = data.noise(x, x0, s)

        def linear(p: Point) -> Tensor:  # DPM-Solver-1 from s to p
            return (p.alpha / s.alpha) * x - (p.sigma * math.expm1(p.lam - s.lam)) * eps_s

        if k == 1:
            return linear(t), x0
        r1 = 0.5 if k == 2 else 1.0 / 3.0
        p1 = data.point_at_log_snr(s.lam + r1 * h)
        u1 = linear(p1)
        m1 = data(u1, p1)
        d1 = data.noise(u1, m1, p1) - eps_s
        if k == 2:
            return linear(t) - (t.sigma / (2.0 * r1) * math.expm1(h)) * d1, m1
        r2 = 2.0 / 3.0
        p2 = data.point_at_log_snr(s.lam + r2 * h)
        u2 = linear(p2) - (p2.sigma * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0)) * d1
        m2 = data(u2, p2)
        d2 = data.noise(u2, m2, p2) - eps_s
        return linear(t) - (t.sigma / r2 * (math.expm1(h) / h - 1.0)) * d2, m2


__all__ = ["EulerAncestralSampler", "DPM2Sampler", "DPM2AncestralSampler", "DPMSolverPP2SAncestralSampler",
           "DPMSolverPPSDESampler", "DPMSolverPP3MSDESampler", "LMSSampler", "IPNDMSampler", "DEISSampler",
           "DPMSolverSampler", "dpm_solver_orders", "ADAMS_BASHFORTH", "NOISES"]
