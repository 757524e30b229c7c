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
"""
import math
from typing import Sequence, Union

import torch

from ..registry import Registry
from ..sde_lib import SDE

Tensor = torch.Tensor

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


__all__ = ["SCHEDULES", "list_schedules", "check_schedule", "get_timesteps"]
