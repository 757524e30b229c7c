"""Sampling by the probability-flow ODE (Song et al. 2021, eq. 13) with ``scipy.integrate.solve_ivp``.

``dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)`` is integrated from ``T`` down to ``eps`` in float64 (the state that
scipy sees is the flattened batch); the score is evaluated in the sampler's dtype and device. ``denoise``
finishes with Tweedie's formula at ``eps`` (one more score evaluation). The steps are scipy's accepted steps
(``solve_ivp``'s loop, run here so that a ``callback`` sees each: ``t`` the step's end, ``denoised`` None); the
result is the state at ``eps`` where the last step ends.
"""
import contextlib
import math

import numpy as np
import torch
from scipy import integrate

from ..sde_lib import SDE
from ..utils import batch_broadcast
from .base import ScoreFn, Sampler, register_sampler, tweedie_denoise

Tensor = torch.Tensor

SOLVE_IVP_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


class _FlatDrift:
    """``fun(t, y)`` for ``solve_ivp``: the probability-flow drift on a flat float64 numpy state.

    The state is copied once per call into a reused buffer in the score's dtype and device; the drift goes back
    as a new float64 array (scipy keeps references to the arrays ``fun`` returns, so they cannot be reused).
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, like: Tensor):
        self.sde, self.score_fn = sde, score_fn
        self.x = torch.empty_like(like)
        self.t = torch.empty(like.shape[0], dtype=like.dtype, device=like.device)
        self.first_call = True

    def __call__(self, t: float, y: np.ndarray) -> np.ndarray:
        self.x.copy_(torch.from_numpy(y).view(self.x.shape))
        self.t.fill_(t)
        f, g = self.sde.sde(self.x, self.t)
        drift = torch.addcmul(f, self.score_fn(self.x, self.t), batch_broadcast(-0.5 * g ** 2, f))  # eq. 13
        # scipy picks its first step from the first drift and loops forever on NaN there (later NaNs make it
        # fail with "step size too small"), so one check suffices
        if self.first_call:
            self.first_call = False
            if not torch.isfinite(drift).all():
                raise FloatingPointError(f"the probability-flow drift is not finite at t={t}; check score_fn and x")
        return drift.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()


@register_sampler("ode")
class ODESampler(Sampler):
    """Probability-flow ODE sampler. Options: ``method`` (any ``solve_ivp`` method: RK45, RK23, DOP853, Radau,
    BDF, LSODA; the implicit ones estimate a Jacobian by finite differences, so they suit small problems only),
    ``rtol``, ``atol`` (positive), ``denoise``."""

    options = {**Sampler.options, "method": "RK45", "rtol": 1e-5, "atol": 1e-5}
    replacement = False
    no_replacement = ("scipy integrates the whole trajectory in one adaptive solve, with no step to replace the "
                      "observed part after; use 'pc', 'ancestral' or a fast solver (ddim, dpmpp_2m, ...) with "
                      "observation=, posterior_guidance(...) with this sampler, or the 'smc' sampler")

    def check_options(self) -> None:
        if self.method not in SOLVE_IVP_METHODS:
            raise ValueError(f"unknown method {self.method!r}; available: {', '.join(SOLVE_IVP_METHODS)}")
        check_tolerances(rtol=self.rtol, atol=self.atol)

    def _sample(self, score_fn, x, *, generator, progress, replace):
        fun = _FlatDrift(self.sde, score_fn, x)
        y0 = x.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
        # solve_ivp's own loop over the method's accepted steps, so that each can be reported to the callback
        solver = getattr(integrate, self.method)(fun, self.sde.T, y0, self.eps, rtol=self.rtol, atol=self.atol)
        step = 0
        with _single_threaded_blas():
            while solver.status == "running":
                message = solver.step()
                if solver.status == "failed":
                    raise RuntimeError(f"solve_ivp ({self.method}) failed: {message}")
                if replace.callback is not None:
                    replace.report(step, solver.t, torch.from_numpy(solver.y).view(x.shape).to(x.device, x.dtype))
                step += 1
        x = torch.from_numpy(solver.y).view(x.shape).to(device=x.device, dtype=x.dtype)
        if self.denoise:
            x = tweedie_denoise(self.sde, score_fn, x, torch.full_like(fun.t, self.eps))
        return x


def _single_threaded_blas():
    """Run scipy's solver steps with one BLAS thread, when ``threadpoolctl`` is installed.

    An explicit RK step is a few memory-bound ``gemv``/``axpy`` passes over the flat state; OpenBLAS threads
    gain nothing there and, next to torch's own threads, made each step about 4x slower on a 2-core machine.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def check_tolerances(**tolerances) -> None:
    """``ValueError`` naming the first tolerance that is not a finite positive number."""
    for name, value in tolerances.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


__all__ = ["ODESampler", "SOLVE_IVP_METHODS", "check_tolerances"]
