"""Time-step schedules for the fast solvers: ``n`` steps from ``T`` down to ``eps``, chosen by name.

Every schedule returns ``n + 1`` float64 times ``T = t_0 > t_1 > ... > t_n = eps``. Schedules that are
uniform in another variable (log-SNR ``lambda``, the EDM noise level ``sigma = exp(-lambda)``) are
mapped back to ``t`` through the SDE's own inverse ``sde.t_from_log_snr``, so one schedule serves
VP, subVP and VE alike.

Names (see :func:`list_schedules`):

- ``uniform``: uniform in ``t``.
- ``logsnr``: uniform in ``lambda(t) = log(alpha / sigma)`` (the DPM-Solver choice).
- ``edm`` / ``karras``: uniform in ``sigma^(1/rho)`` with ``sigma = sigma(t) / alpha(t)``
  (Karras et al. 2022, eq. 5); ``rho = 7`` is theirs.
- ``quadratic``: uniform in ``sqrt(t - eps)`` (the "quad" skip of DDIM, Song et al. 2021a, App. D.2).

A sequence of times may be given instead of a name; :func:`get_timesteps` checks it.
``optimized`` is no formula: it asks a fast solver to fit its times to the score it is given at its first
call (:func:`optimize_schedule`, which can also be called directly and its result saved and passed back
as a list of times).
"""
import logging
import math
from typing import Sequence, Tuple, Union

import torch

from ..registry import Registry
from ..sde_lib import SDE

Tensor = torch.Tensor
logger = logging.getLogger(__name__)

SCHEDULES = Registry("schedule")


def list_schedules():
    return SCHEDULES.list()


def _fraction(n: int) -> Tensor:
    """``i / n`` for ``i = 0..n``, float64."""
    return torch.arange(n + 1, dtype=torch.float64) / n


def _endpoints(sde: SDE, eps: float):
    """``lambda(T)`` and ``lambda(eps)`` as Python floats."""
    lam = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    return float(lam[0]), float(lam[1])


@SCHEDULES.register("uniform")
def uniform(sde: SDE, n: int, eps: float, rho: float = 7.0) -> Tensor:
    """``t_i = T + i/n (eps - T)``."""
    return sde.T + _fraction(n) * (eps - sde.T)


@SCHEDULES.register("logsnr")
def logsnr(sde: SDE, n: int, eps: float, rho: float = 7.0) -> Tensor:
    """``lambda_i = lambda_T + i/n (lambda_eps - lambda_T)``, ``t_i = lambda^{-1}(lambda_i)``."""
    lam_T, lam_eps = _endpoints(sde, eps)
    return sde.t_from_log_snr(lam_T + _fraction(n) * (lam_eps - lam_T))


@SCHEDULES.register("karras")
@SCHEDULES.register("edm")
def edm(sde: SDE, n: int, eps: float, rho: float = 7.0) -> Tensor:
    """``sigma_i = (sigma_max^(1/rho) + i/n (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` (Karras et al. 2022,
    eq. 5) with ``sigma = exp(-lambda)``, ``t_i = lambda^{-1}(-log sigma_i)``."""
    lam_T, lam_eps = _endpoints(sde, eps)
    a, b = math.exp(-lam_T / rho), math.exp(-lam_eps / rho)
    sigma = (a + _fraction(n) * (b - a)) ** rho
    return sde.t_from_log_snr(-torch.log(sigma))


@SCHEDULES.register("quadratic")
def quadratic(sde: SDE, n: int, eps: float, rho: float = 7.0) -> Tensor:
    """``t_i = eps + (T - eps) (1 - i/n)^2``: dense near the data."""
    return eps + (sde.T - eps) * (1.0 - _fraction(n)) ** 2


def check_schedule(schedule: Union[str, Sequence[float]], name: str = "schedule") -> None:
    """Raise ``ValueError``/``TypeError`` unless ``schedule`` is a known name or a strictly decreasing list of times."""
    if isinstance(schedule, str):
        if schedule != OPTIMIZED:
            SCHEDULES.get(schedule)
        return
    try:  # a list, tuple, tensor or array of numbers
        times = torch.as_tensor(schedule, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        times = None
    if times is None or times.dim() != 1:
        raise TypeError(f"{name} must be a name ({', '.join(list_schedules())}) or a 1-D sequence of times, "
                        f"got {type(schedule).__name__}")
    times = times.tolist()
    if len(times) < 2 or not all(math.isfinite(v) and v > 0 for v in times) or \
            any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"{name} given as times must hold at least 2 finite, positive, strictly decreasing "
                         f"values, got {times}")


def get_timesteps(schedule: Union[str, Sequence[float]], sde: SDE, n: int, eps: float, *,
                  rho: float = 7.0) -> Tensor:
    """The ``n + 1`` float64 times ``T = t_0 > ... > t_n = eps`` of ``schedule`` (a name or the times themselves).

    Given times must start at ``T`` and end at ``eps``, and hold ``n + 1`` values.
    """
    check_schedule(schedule)
    if isinstance(schedule, str) and schedule == OPTIMIZED:
        raise ValueError("schedule='optimized' is fitted to a score: call optimize_schedule(sde, score_fn, ...) "
                         "or give it to a fast solver, which fits it at its first call")
    if isinstance(schedule, str):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of steps must be a positive integer, got {n!r}")
        if not 0 < eps < sde.T:
            raise ValueError(f"eps must satisfy 0 < eps < T = {sde.T}, got {eps}")
        if not rho > 0:
            raise ValueError(f"rho must be positive, got {rho}")
        t = SCHEDULES.get(schedule)(sde, n, eps, rho)
    else:
        t = torch.as_tensor(schedule, dtype=torch.float64).reshape(-1).cpu().clone()
        if t.numel() != n + 1:
            raise ValueError(f"schedule holds {t.numel()} times, that is {t.numel() - 1} steps, not {n}")
        if not (math.isclose(float(t[0]), sde.T, rel_tol=1e-6) and math.isclose(float(t[-1]), eps, rel_tol=1e-6)):
            raise ValueError(f"schedule given as times must run from T = {sde.T} to eps = {eps}, "
                             f"got {float(t[0])} .. {float(t[-1])}")
    t[0], t[-1] = sde.T, eps  # exact endpoints, whatever the round-off of the inverse
    return t




#: the name that asks a fast solver to fit its step times to the score at its first call (:func:`optimize_schedule`)
OPTIMIZED = "optimized"
#: prior draws the fit of :func:`optimize_schedule` runs on by default: at least PILOT_ROWS rows and PILOT_NUMBERS
#: numbers (2-D data get 512 rows, images 16)
PILOT_ROWS = 16
PILOT_NUMBERS = 1024


def _warped(base: Tensor, a: float) -> Tensor:
    """The log-SNR grid ``base`` (``lambda_T .. lambda_eps``) warped by ``a``: each point's fraction ``u`` of the
    way in ``lambda`` becomes ``(e^{a u} - 1) / (e^a - 1)``; ``a = 0`` keeps it, ``a < 0`` moves the points
    towards the data, ``a > 0`` towards ``T``."""
    if abs(a) < 1e-8:
        return base.clone()
    u = (base - base[0]) / (base[-1] - base[0])
    return base[0] + torch.expm1(a * u) / math.expm1(a) * (base[-1] - base[0])


def optimize_schedule(sde: SDE, score_fn, *, shape: Sequence[int], solver="unipc", nfe: int = 10,
                      eps: float = None, pilot_rows: int = None, max_calls: int = None, reference_nfe: int = None,
                      seed: int = 0, return_info: bool = False, **options):
    """Step times fitted to ``score_fn`` for ``solver`` at ``nfe`` score calls (denoising excluded).

    In the spirit of "Align Your Steps" (Sabour et al. 2024), with the solver's own global error as the loss:
    on ``pilot_rows`` prior draws (shape ``[pilot_rows, *shape[1:]]``, from ``seed``; default 16 rows, more for
    small data: at least 1024 numbers, at most 512 rows), the error ``||x_n - x_ref|| / ||x_ref||`` of the
    ``nfe``-call solve with times ``t_0 = T > ... > t_n = eps`` is measured against a reference solve of the
    same draws (UniPC-3 at ``reference_nfe`` calls, default ``max(4 nfe, 40)``, ``logsnr`` schedule), and
    the interior log-SNR points are fitted in three stages:

    0. the named schedules ``logsnr``, ``edm``, ``quadratic``, ``uniform``: the best is the start;
    1. golden-section search, with half of the calls left, over the warp ``a`` in [-6, 6] of the start's
       log-SNR fractions ``u_i -> (e^{a u_i} - 1) / (e^a - 1)`` (``a < 0`` moves the steps towards the data);
    2. coordinate descent on each interior point's position between its neighbours (in logit coordinates,
       halving the move when a sweep gains nothing), until the next solve would exceed ``max_calls``.

    Every score call counts, the reference's included: the fit costs at most ``max_calls`` (default
    ``max(300, 30 nfe)``) calls on ``pilot_rows`` rows. ``solver`` is a registered sampler name or class, built
    with ``options``; it must be deterministic (a stochastic one is refused, found by running it with two noise
    seeds, which costs ``nfe`` calls). Returns the ``n + 1`` float times as a list, to be passed back as
    ``schedule=[...]``; with ``return_info`` also a dict with ``calls`` (the cost), ``pilot_error`` (the fitted
    times' error on the pilot rows), ``start_schedule`` and ``start_error`` (the best named schedule and its
    error there), ``reference_nfe`` and ``pilot_rows``.

    Fitting to the pilot's error means fitting to the model: on an isotropic Gaussian the error of a linear
    solver is one scalar function of the times, which the fit can drive far below what other data allow.
    """
    from .base import SAMPLERS  # the samplers import this module
    cls = SAMPLERS.get(solver) if isinstance(solver, str) else solver
    if pilot_rows is None:  # at least PILOT_NUMBERS numbers, at most 512 rows: small data need more rows
        pilot_rows = min(512, max(PILOT_ROWS, -(-PILOT_NUMBERS // max(1, math.prod(tuple(shape)[1:])))))
    if max_calls is None:
        max_calls = max(300, 30 * nfe) if isinstance(nfe, int) else 300
    for name, value in (("nfe", nfe), ("pilot_rows", pilot_rows), ("max_calls", max_calls), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    eps = float(sde.default_eps if eps is None else eps)
    pilot_shape = (pilot_rows, *tuple(shape)[1:])
    options = {k: v for k, v in options.items() if k not in ("schedule", "nfe", "denoise")}
    probe = cls(sde=sde, shape=pilot_shape, eps=eps, nfe=nfe, schedule="logsnr", denoise=False, **options)
    n = probe.n_steps
    reference_nfe = max(4 * nfe, 40) if reference_nfe is None else reference_nfe
    if isinstance(reference_nfe, bool) or not isinstance(reference_nfe, int) or reference_nfe < 3:
        raise ValueError(f"reference_nfe must be an integer >= 3, got {reference_nfe!r}")
    if reference_nfe + 6 * nfe > max_calls:
        raise ValueError(f"max_calls={max_calls} leaves no room for the fit: it must be at least reference_nfe + "
                         f"6 nfe = {reference_nfe + 6 * nfe}")
    x = sde.prior_sampling(pilot_shape, generator=torch.Generator().manual_seed(seed), dtype=probe.dtype,
                           device=probe.device)
    calls = 0

    def solve(sampler, seed_noise=0):
        nonlocal calls
        y, used = sampler(score_fn, x_init=x, generator=torch.Generator(device=x.device).manual_seed(seed_noise))
        calls += used
        return y

    reference = solve(SAMPLERS.get("unipc")(sde=sde, shape=pilot_shape, eps=eps, nfe=reference_nfe,
                                            schedule="logsnr", denoise=False, order=3, dtype=probe.dtype,
                                            device=probe.device))
    scale = float(torch.linalg.vector_norm(reference))

    def to_times(lam: Tensor) -> list:
        t = sde.t_from_log_snr(lam)
        t[0], t[-1] = sde.T, eps
        return t.tolist()

    def error(lam: Tensor, seed_noise=0) -> float:
        sampler = cls(sde=sde, shape=pilot_shape, eps=eps, schedule=to_times(lam), denoise=False, **options)
        return float(torch.linalg.vector_norm(solve(sampler, seed_noise) - reference)) / scale

    named = {name: sde.log_snr(get_timesteps(name, sde, n, eps)) for name in ("logsnr", "edm", "quadratic",
                                                                            "uniform")}
    named_errors = {"logsnr": error(named["logsnr"])}
    if error(named["logsnr"], seed_noise=1) != named_errors["logsnr"]:
        raise ValueError(f"schedule='optimized' fits the times of a deterministic solver; {cls.__name__} with "
                         f"{options} draws noise: fit the times with its deterministic form and pass them as "
                         "schedule=[...]")
    for name in ("edm", "quadratic", "uniform"):
        named_errors[name] = error(named[name])
    start_name = min(named_errors, key=named_errors.get)
    best, base = named_errors[start_name], named[start_name]
    best_lam = base

    def budget_left() -> bool:
        return calls + nfe <= max_calls

    # stage 1: golden-section search over the warp a in [-6, 6] of the best named schedule
    lo, hi = -6.0, 6.0
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    memo = {}

    def warp_error(a):
        if a not in memo:
            memo[a] = error(_warped(base, a))
        return memo[a]

    c, d = hi - golden * (hi - lo), lo + golden * (hi - lo)
    stage_1_end = calls + (max_calls - calls) // 2  # half of what is left after the reference
    while hi - lo > 0.25 and calls + 2 * nfe <= stage_1_end:
        if warp_error(c) < warp_error(d):
            hi, d = d, c
            c = hi - golden * (hi - lo)
        else:
            lo, c = c, d
            d = lo + golden * (hi - lo)
    for a, value in memo.items():
        if value < best:
            best, best_lam = value, _warped(base, a)

    # stage 2: coordinate descent on the interior points, each between its neighbours (logit of its position)
    step = 0.5
    while n > 1 and budget_left() and step > 1e-3:
        improved = False
        for i in range(1, n):
            left, right = float(best_lam[i - 1]), float(best_lam[i + 1])
            p = (float(best_lam[i]) - left) / (right - left)
            logit = math.log(p / (1.0 - p))
            for direction in (1.0, -1.0):
                if not budget_left():
                    break
                q = 1.0 / (1.0 + math.exp(-(logit + direction * step)))
                trial = best_lam.clone()
                trial[i] = left + q * (right - left)
                value = error(trial)
                if value < best:
                    best, best_lam, improved = value, trial, True
                    break
        if not improved:
            step /= 2.0
    times = to_times(best_lam)
    if return_info:
        return times, {"calls": calls, "pilot_error": best, "start_error": named_errors[start_name],
                       "start_schedule": start_name, "reference_nfe": reference_nfe, "pilot_rows": pilot_rows}
    return times


def fit_schedule(sampler, score_fn) -> Tuple[Tensor, dict]:
    """The times of ``schedule="optimized"`` for a fast-solver ``sampler``: :func:`optimize_schedule` with its
    defaults for ``sampler``'s class, options and budget (denoising excluded), as a float64 tensor, and the
    fit's report (see :func:`optimize_schedule`), which is also logged."""
    skip = ("nfe", "schedule", "denoise", "tolerance", "pilot_rows", "max_nfe")  # the budget's, not the solver's
    options = {k: getattr(sampler, k) for k in sampler.options if k not in skip}
    times, info = optimize_schedule(sampler.sde, score_fn, shape=sampler.shape, solver=type(sampler),
                                    nfe=sampler.nfe - int(sampler.denoise), eps=sampler.eps, return_info=True,
                                    **options)
    logger.info("schedule='optimized' for %s at nfe=%d: %d score calls on %d pilot rows, pilot error %.2e "
                "(%s: %.2e); times %s", type(sampler).__name__, sampler.nfe, info["calls"], info["pilot_rows"],
                info["pilot_error"], info["start_schedule"], info["start_error"], [float(f"{t:.6g}") for t in times])
    return torch.tensor(times, dtype=torch.float64), info


__all__ = ["SCHEDULES", "OPTIMIZED", "list_schedules", "check_schedule", "get_timesteps", "optimize_schedule",
           "fit_schedule"]
