"""Sampling by the reverse-time SDE (Song et al. 2021, eq. 6) with ``torchsde.sdeint``.

torchsde integrates forward in time only, so we substitute ``s = T - t``: ``y(s) = x(T - s)`` solves

    ``dy = -[f(y, T - s) - g(T - s)^2 s(y, T - s)] ds + g(T - s) dB_s``,   ``s`` from 0 to ``T - eps``,

with ``B`` a standard Brownian motion in ``s`` (the reverse-time Brownian motion of eq. 6). The state is the
batch flattened to ``[B, D]`` with diagonal noise. The noise ``g`` depends on time only (additive noise), so the
Ito and Stratonovich forms coincide and every torchsde method applies. The Brownian motion is a
``torchsde.BrownianInterval`` seeded from ``generator``, so the same generator state gives the same samples; with
``seeds=`` every row has its own interval (:class:`RowBrownian`).
``denoise`` finishes with Tweedie's formula at ``eps``. With a ``callback`` the fixed steps are taken one
``sdeint`` call at a time (the same samples; ``t = T - s`` at each step's end, ``denoised`` None); adaptive steps
and ``reversible_heun`` refuse a callback.
"""
import math
import warnings
from typing import Optional, Sequence

import torch
import torchsde
from torchsde import BaseBrownian

from ..sde_lib import SDE
from ..noise import RowNoise
from ..utils import batch_broadcast
from .base import ScoreFn, Sampler, register_sampler, tweedie_denoise
from .ode import check_tolerances

Tensor = torch.Tensor

#: torchsde method -> the SDE type it is written for (either is right here: the noise is additive)
TORCHSDE_METHODS = {"euler": "ito", "milstein": "ito", "srk": "ito", "midpoint": "stratonovich",
                    "heun": "stratonovich", "euler_heun": "stratonovich", "reversible_heun": "stratonovich"}


class _TimeReversedSDE(torch.nn.Module):
    """The reverse-time SDE in forward time ``s = T - t`` on the flat state ``[B, D]``, in torchsde's interface."""

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score_fn: ScoreFn, shape, sde_type: str):
        super().__init__()
        self.forward_sde = sde
        self.score_fn = score_fn
        self.T = sde.T
        self.shape = tuple(shape)
        self.sde_type = sde_type
        self._drift_memo = None      # (s, y, drift): torchsde's contract check evaluates f(t0, y0) before step 1
        self._diffusion_memo = None  # (s, g): the solvers ask for g at the time they just asked for f

    def _time(self, s: Tensor) -> Tensor:
        return (self.T - s).reshape(1).expand(self.shape[0])

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        """``-[f(x, t) - g(t)^2 score(x, t)]`` at ``t = T - s``."""
        memo = self._drift_memo
        if memo is not None and memo[1] is y and torch.equal(memo[0], s):
            return memo[2]
        x, t = y.view(self.shape), self._time(s)
        drift, g = self.forward_sde.sde(x, t)
        out = torch.addcmul(-drift, self.score_fn(x, t), batch_broadcast(g ** 2, x)).reshape(y.shape)
        self._drift_memo, self._diffusion_memo = (s.clone(), y, out), (s.clone(), g)
        return out

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        """``g(t)`` at ``t = T - s`` on the diagonal, shaped like ``y``."""
        memo = self._diffusion_memo
        if memo is not None and torch.equal(memo[0], s):
            g = memo[1]
        else:
            g = self.forward_sde.sde(y.view(self.shape), self._time(s))[1]
        return g[:, None].expand(y.shape)


class RowBrownian(BaseBrownian):
    """One Brownian motion per row (``seeds=``): the rows of independent ``[1, D]`` Brownian intervals, stacked,
    so that row ``i``'s path depends on its own seed only. Costs one interval query per row per step."""

    def __init__(self, rows: Sequence[torchsde.BrownianInterval]):
        self.rows = list(rows)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [row(ta, tb, return_U=return_U, return_A=return_A) for row in self.rows]
        if torch.is_tensor(parts[0]):
            return torch.cat(parts)
        return tuple(torch.cat(pieces) for pieces in zip(*parts))

    def __repr__(self):
        return f"RowBrownian({len(self.rows)} rows)"

    @property
    def dtype(self):
        return self.rows[0].dtype

    @property
    def device(self):
        return self.rows[0].device

    @property
    def shape(self):
        return torch.Size((len(self.rows), *self.rows[0].shape[1:]))

    @property
    def levy_area_approximation(self):
        return self.rows[0].levy_area_approximation


@register_sampler("sde")
class SDESampler(Sampler):
    """Reverse-time SDE sampler through ``torchsde.sdeint``. Options: ``method`` (euler, milstein, srk, midpoint,
    heun, euler_heun, reversible_heun), ``dt`` (fixed step, or the initial one if adaptive; default
    ``(T - eps) / sde.N``), ``adaptive``, ``rtol``, ``atol`` (positive; used when adaptive), ``denoise``."""

    options = {**Sampler.options, "method": "euler", "dt": None, "adaptive": False, "rtol": 1e-5, "atol": 1e-4}
    replacement = False
    no_replacement = ("torchsde.sdeint runs the whole reverse SDE in one call, with no step to replace the "
                      "observed part after; use 'pc' (predictor 'euler_maruyama' is the same Euler scheme), "
                      "'ancestral' or a fast solver with observation=, posterior_guidance(...) with this "
                      "sampler, or the 'smc' sampler")

    def check_options(self) -> None:
        if self.method not in TORCHSDE_METHODS:
            raise ValueError(f"unknown method {self.method!r}; available: {', '.join(TORCHSDE_METHODS)}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {self.adaptive!r}")
        check_tolerances(rtol=self.rtol, atol=self.atol)
        if self.dt is None:
            self.dt = (self.sde.T - self.eps) / self.sde.N
        check_tolerances(dt=self.dt)
        if self.dt > self.sde.T - self.eps:
            raise ValueError(f"dt must be at most T - eps = {self.sde.T - self.eps}, got {self.dt}")

    def step_size(self) -> float:
        """Fixed steps: ``n = ceil((T - eps) / dt)`` equal steps. torchsde adds ``dt`` up to ``T - eps`` and would
        take one more sliver of a step for a rounding error, so the step is made a hair longer; the last one is
        clipped to end exactly on ``T - eps``. Adaptive: ``dt`` is the first step tried."""
        if self.adaptive:
            return self.dt
        span = self.sde.T - self.eps
        n = math.ceil(span / self.dt - 1e-9)
        return span / n * (1.0 + 1e-10)

    def brownian_motion(self, y: Tensor, generator: Optional[torch.Generator]) -> torchsde.BrownianInterval:
        """A Brownian motion on ``[0, T - eps]`` shaped like ``y``, its entropy drawn from ``generator``.

        The dyadic (``halfway_tree``) form makes the path a function of the seed alone, not of where the solver
        queries it, so runs with different ``dt`` see the same path (this is what the strong-order tests use). The
        space-time Levy area (needed by ``srk``) is drawn for every method so that all methods share one path."""
        span = self.sde.T - self.eps

        def interval(size, seed):
            return torchsde.BrownianInterval(t0=0.0, t1=span, size=size, dtype=y.dtype, device=y.device,
                                             entropy=seed, levy_area_approximation="space-time",
                                             halfway_tree=True, tol=1e-6 * span)

        if isinstance(generator, RowNoise):
            return RowBrownian([interval((1, y.shape[1]), seed) for seed in generator.entropy()])
        seed = int(torch.randint(2 ** 62, (), generator=generator, device=generator.device if generator else "cpu"))
        return interval(y.shape, seed)

    def check_callback(self) -> None:
        """``ValueError`` for the settings under which a callback cannot see each step (see :meth:`_step_by_step`)."""
        if self.adaptive:
            raise ValueError("callback= needs adaptive=False with the 'sde' sampler: torchsde accepts or rejects "
                             "adaptive steps inside one sdeint call, out of reach of a callback")
        if self.method == "reversible_heun":
            raise ValueError("callback= does not work with method='reversible_heun' of the 'sde' sampler: "
                             "stepping it one sdeint call at a time costs an extra score call per step; use "
                             "another method (e.g. 'heun')")

    @staticmethod
    def _step_by_step(reverse, y0, ts, kwargs, replace, eps: float):
        """The fixed-step ``sdeint`` loop with one call per step, carrying the solver's state from call to call,
        so that ``replace.report`` sees every step: the same times (``min(s + dt, end)``, as torchsde computes
        them), Brownian increments and score calls as one call over ``ts``, hence the same samples."""
        s, end, dt = ts[0], ts[-1], kwargs["dt"]
        y, extra, step = y0, None, 0
        while s < end:
            nxt = min(s + dt, end)
            ys, extra = torchsde.sdeint(reverse, y, torch.stack([s, nxt]), extra=True, extra_solver_state=extra,
                                        **kwargs)
            y, s = ys[-1], nxt
            replace.report(step, eps if bool(s >= end) else reverse.T - float(s), y.view(reverse.shape))
            step += 1
        return y

    def _sample(self, score_fn, x, *, generator, progress, replace):
        y0 = x.reshape(x.shape[0], -1)
        reverse = _TimeReversedSDE(self.sde, score_fn, x.shape, TORCHSDE_METHODS[self.method])
        # float64 times: accumulating dt in float32 would add a last sliver of a step
        ts = torch.tensor([0.0, self.sde.T - self.eps], dtype=torch.float64, device=x.device)
        options = {"grad_free": True} if self.method == "milstein" else None
        if replace.callback is not None:
            self.check_callback()
        kwargs = dict(bm=self.brownian_motion(y0, generator), method=self.method, dt=self.step_size(),
                      adaptive=self.adaptive, rtol=self.rtol, atol=self.atol, options=options)
        with warnings.catch_warnings():
            # torchsde warns that adaptive Euler may not converge for non-additive noise; ours is additive
            warnings.filterwarnings("ignore", message="Numerical solution is not guaranteed to converge")
            if replace.callback is None:
                y = torchsde.sdeint(reverse, y0, ts, **kwargs)[-1]
            else:
                y = self._step_by_step(reverse, y0, ts, kwargs, replace, self.eps)
        x = y.view(x.shape)
        if self.denoise:
            eps = torch.full((x.shape[0],), self.eps, dtype=x.dtype, device=x.device)
            x = tweedie_denoise(self.sde, score_fn, x, eps)
        return x


__all__ = ["SDESampler", "RowBrownian", "TORCHSDE_METHODS"]
