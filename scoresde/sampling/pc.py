"""Predictor-corrector sampling (Song et al. 2021, Alg. 1) and ancestral sampling (DDPM / SMLD, eq. 47).

Time grids (``t`` runs from ``T`` down, one predictor step and ``n_steps`` corrector steps per point):
- a continuous predictor (``euler_maruyama``) steps between consecutive points of ``linspace(T, eps, N + 1)``, so
  its last step lands exactly on ``eps`` (the paper's code steps ``dt = -1/N`` from ``eps`` and overshoots);
- a discrete predictor (``reverse_diffusion``, ``ancestral_sampling``) and corrector-only sampling visit the
  levels ``i = N-1, ..., 0`` at ``t_i = i T / (N - 1)``, where ``sde.step_index(t_i) == i`` exactly, so each step
  uses the coefficients of its own level. The score is never asked below ``eps``: level 0 (``t = 0``) is scored
  at ``eps``.
``denoise`` returns the noise-free mean of the last step. With ``observation=`` both samplers replace the
observed part by a forward-noised copy of ``y`` after every predictor and corrector step (App. I).
A ``callback`` sees each of the ``N`` time points after its predictor (and corrector) step, with ``t`` the time
the predictor moved to (a corrector-only run: the point's own time; the discrete chains' last step, level 0,
reports ``t = 0`` as the step before it) and ``denoised`` None.
"""
import copy
from typing import Tuple

import torch

from ..noise import RowNoise
from ..progress import progress_bar
from .base import ScoreFn, Sampler, register_sampler
from .correctors import NORMS, NoneCorrector, get_corrector, list_correctors
from .predictors import NonePredictor, get_predictor, list_predictors

Tensor = torch.Tensor


class _ScoreAtLeast:
    """``score_fn(x, max(t, eps))``: the score as the network was trained, on ``[eps, T]``."""

    def __init__(self, score_fn: ScoreFn, eps: float):
        self.score_fn = score_fn
        self.eps = eps

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.score_fn(x, t.clamp(min=self.eps))


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    return progress_bar(iterable, desc=desc)


@register_sampler("pc")
class PCSampler(Sampler):
    """Predictor-corrector sampler.

    Options: ``predictor`` (``euler_maruyama``, ``reverse_diffusion``, ``ancestral_sampling``, ``none``),
    ``corrector`` (``langevin``, ``ald``, ``none``), ``snr`` (the corrector's signal-to-noise ratio), ``n_steps``
    (corrector steps per time), ``probability_flow`` (predict along the probability-flow ODE), ``N`` (number of
    time points; default ``sde.N``; discrete predictors need ``N == sde.N``), ``denoise``, ``corrector_norm``:
    how the ``langevin`` step takes the norms of noise and score, ``"batch"`` (their batch means, the paper's
    code), ``"sample"`` (per sample) or ``"auto"`` (default: per sample with ``seeds=``, so that a sample does not
    depend on its batch; the batch means otherwise).
    """

    options = {**Sampler.options, "predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16,
               "n_steps": 1, "probability_flow": False, "N": None, "corrector_norm": "auto"}

    def check_options(self) -> None:
        if self.N is None:
            self.N = self.sde.N
        if isinstance(self.N, bool) or not isinstance(self.N, int) or self.N < 1:
            raise ValueError(f"N must be a positive integer (number of time steps), got {self.N!r}")
        if not isinstance(self.probability_flow, bool):
            raise ValueError(f"probability_flow must be True or False, got {self.probability_flow!r}")
        for option, names in (("predictor", list_predictors()), ("corrector", list_correctors())):
            if getattr(self, option) not in names:
                raise ValueError(f"unknown {option} {getattr(self, option)!r}; available: {', '.join(names)}")
        if self.corrector_norm not in ("auto", *NORMS):
            raise ValueError(f"corrector_norm must be one of {('auto', *NORMS)}, got {self.corrector_norm!r}")
        self.predictor_step = get_predictor(self.predictor)(self.sde, self.probability_flow)
        self.corrector_step = get_corrector(self.corrector)(self.sde, self.snr, self.n_steps,
                                                            "batch" if self.corrector_norm == "auto" else
                                                            self.corrector_norm)
        needs_levels = self.predictor_step.discrete and not isinstance(self.predictor_step, NonePredictor)
        if needs_levels and self.N != self.sde.N:
            raise ValueError(f"predictor {self.predictor!r} steps through the SDE's own N={self.sde.N} levels, "
                             f"so N must equal sde.N; got N={self.N} (build the SDE with N={self.N} instead)")

    def corrector_for(self, generator):
        """The corrector step, taking its norms per sample when ``corrector_norm="auto"`` meets per-row noise."""
        if self.corrector_norm == "auto" and isinstance(generator, RowNoise):
            corrector = copy.copy(self.corrector_step)
            corrector.norm = "sample"
            return corrector
        return self.corrector_step

    def grid(self) -> Tensor:
        """The ``N + 1`` float64 times: step ``k`` goes from ``grid[k]`` to ``grid[k + 1]``."""
        if self.predictor_step.discrete:
            grid = torch.linspace(self.sde.T, 0.0, self.N, dtype=torch.float64)
            return torch.cat([grid, grid.new_zeros(1)])
        return torch.linspace(self.sde.T, self.eps, self.N + 1, dtype=torch.float64)

    def time_grid(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(times, next_times)``, each ``[N, B]`` on ``x``'s device and dtype: row ``k`` is step ``k``."""
        grid = self.grid().to(device=x.device, dtype=x.dtype)[:, None].expand(-1, x.shape[0])
        return grid[:-1], grid[1:]

    def _sample(self, score_fn, x, *, generator, progress, replace):
        times, next_times = self.time_grid(x)
        if self.predictor_step.discrete:
            score_fn = _ScoreAtLeast(score_fn, self.eps)
        predict = None if isinstance(self.predictor_step, NonePredictor) else self.predictor_step.update
        correct = None if isinstance(self.corrector_step, NoneCorrector) else self.corrector_for(generator).update
        # the time each step leaves x at, for the callback (a corrector-only step stays at its time)
        after = self.grid().tolist()[1 if predict is not None else 0:][:self.N]
        x_mean = x
        for k in _progress(range(self.N), progress, type(self).__name__):
            t = times[k]
            if correct is not None:
                x, x_mean = correct(score_fn, x, t, generator)
                x = replace(x, t)
            if predict is not None:
                x, x_mean = predict(score_fn, x, t, next_times[k], generator)
                x = replace(x, next_times[k])
            replace.report(k, after[k], x)
        return x_mean if self.denoise else x


@register_sampler("ancestral")
class AncestralSampler(PCSampler):
    """Ancestral sampling through the SDE's levels ``i = N-1, ..., 0``: DDPM (Ho et al. 2020, Alg. 2; eq. 47)
    for ``VPSDE``, SMLD for ``VESDE``, and for other SDEs (subVP) the DDPM rule applied to ``sde.discretize``
    (see :class:`~scoresde.sampling.predictors.AncestralSamplingPredictor`). Options: ``denoise``."""

    options = dict(Sampler.options)

    def check_options(self) -> None:
        self.predictor, self.corrector, self.probability_flow = "ancestral_sampling", "none", False
        self.snr, self.n_steps, self.N = PCSampler.options["snr"], 1, self.sde.N
        self.corrector_norm = "auto"
        super().check_options()


__all__ = ["PCSampler", "AncestralSampler"]
