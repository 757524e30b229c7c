"""Sequential Monte Carlo with twisted proposals: posterior sampling that is exact as the particles grow
(the Twisted Diffusion Sampler of Wu et al. 2023, "Practical and asymptotically exact conditional sampling in
diffusion models").

Target. The unconditional chain is the ancestral (DDPM-posterior) step on a grid ``T = t_0 > ... > t_N = eps``:
with ``x0_hat = (x + sigma_s^2 s(x, s)) / alpha_s`` (Tweedie),

    ``p(x_t | x_s) = N(alpha_t x0_hat + sigma_t e^{-h} (x_s - alpha_s x0_hat) / sigma_s, c^2 I)``,
    ``c = sigma_t sqrt(1 - e^{-2h})``, ``h = lambda_t - lambda_s`` (DDIM with ``eta = 1``, written for any SDE).

The sampler targets that chain's output ``x_out`` (``x0_hat`` at ``eps`` with ``denoise``, else ``x_eps``)
re-weighted by the likelihood: ``p_chain(x_out) p(y | x_out)``. Its bias against the true posterior is the
chain's own discretisation error, which vanishes as ``N`` grows.

Algorithm. ``K`` particles per output row. A twist ``p~_t(y | x_t)`` approximates ``p_t(y | x_t)``:
``log p~_t = -1/2 r^T (r_t^2 A A^T + s^2 I)^{-1} r``, ``r = y - A x0_hat(x_t)``, ``s`` the observation's
``noise_std`` and ``r_t^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2)`` (``twist='pigdm'``, the Pi-GDM variance) or
``r_t = 0`` (``twist='tweedie'``, Wu et al.'s ``p(y | x0_hat)``). Each step proposes from the chain's step with
the twisted score ``s + grad log p~_t``, i.e. its mean moves by ``b grad log p~_t``, and multiplies the weight by

    ``p(x_t | x_s) p~_t(y | x_t) / (q(x_t | x_s) p~_s(y | x_s))``;

at ``eps`` the twist is the exact likelihood ``p(y | x_out)`` (``r = 0``), so the weighted particles are a
consistent approximation of the target whatever the twist. Particles are resampled (systematic) when the
effective sample size falls below ``resample_threshold * K``; one particle per row is finally drawn by its
weight. Cost: ``N + 1`` score calls on ``B K`` rows, each with a backward pass (for ``grad log p~``).

Observations: any :class:`~scoresde.guidance.Observation` with ``noise_std > 0`` (the likelihood must be a
density). With ``noise_std = 0`` (exact inpainting, colourisation, super-resolution) it is refused: use a small
``noise_std``, which approximates the noiseless posterior as it shrinks.
"""
import math
from typing import List, Optional

import torch

from .. import noise
from ..progress import progress_bar
from ..utils import flat_sum, randn_like
from .base import Sampler, register_sampler
from .fast import DataPrediction, Point
from .schedules import check_schedule, get_timesteps

Tensor = torch.Tensor
TWISTS = ("pigdm", "tweedie")


@register_sampler("smc")
class TwistedSMCSampler(Sampler):
    """Twisted SMC posterior sampler; called with ``observation=`` (required). Options: ``particles`` (``K``,
    16), ``N`` (steps; default ``sde.N``), ``schedule`` (``logsnr``; any name of :mod:`.schedules` or a list of
    times), ``twist`` (``pigdm`` or ``tweedie``), ``resample_threshold`` (0.5: resample below ``K/2`` effective
    particles), ``denoise``. ``x_init``, if given, holds the ``B K`` starting particles ``[B K, ...]``; so do ``x``
    and ``denoised`` of a ``callback`` (the particles after each step, before any resampling of the next)."""

    options = {**Sampler.options, "particles": 16, "N": None, "schedule": "logsnr", "twist": "pigdm",
               "resample_threshold": 0.5}
    replacement = False

    def check_options(self) -> None:
        if isinstance(self.particles, bool) or not isinstance(self.particles, int) or self.particles < 1:
            raise ValueError(f"particles must be a positive integer, got {self.particles!r}")
        if self.N is None:
            self.N = self.sde.N
        if isinstance(self.N, bool) or not isinstance(self.N, int) or self.N < 1:
            raise ValueError(f"N must be a positive integer (number of steps), got {self.N!r}")
        check_schedule(self.schedule)
        if not isinstance(self.schedule, str):
            self.N = len(self.schedule) - 1
        if self.twist not in TWISTS:
            raise ValueError(f"twist must be one of {TWISTS}, got {self.twist!r}")
        threshold = self.resample_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"resample_threshold must be in [0, 1], got {threshold!r}")
        if not isinstance(self.denoise, bool):
            raise ValueError(f"denoise must be True or False, got {self.denoise!r}")
        self.timesteps = get_timesteps(self.schedule, self.sde, self.N, self.eps)

    @property
    def particle_shape(self):
        return (self.shape[0] * self.particles, *self.shape[1:])

    def check_observation(self, observation) -> None:
        from ..guidance import Observation
        if not isinstance(observation, Observation):
            raise TypeError(f"observation must be a scoresde.guidance.Observation, got {type(observation).__name__}")
        if observation.noise_std <= 0:
            raise ValueError(f"sampler 'smc' weights particles by the likelihood p(y | x_0), which needs "
                             f"{type(observation).__name__}(..., noise_std > 0); with noise_std=0 it is not a "
                             "density. Use a small noise_std (it approximates the noiseless posterior), or "
                             "replacement with 'pc'/'ancestral'/a fast solver")
        observation.check_samples(self.shape)

    def __call__(self, score_fn, *, generator=None, seeds=None, x_init=None, progress=False, observation=None,
                 callback=None):
        if observation is None:
            raise ValueError("sampler 'smc' samples a posterior p(x | y): call it with observation=... "
                             "(a scoresde.guidance.Observation with noise_std > 0)")
        return super().__call__(score_fn, generator=generator, seeds=seeds, x_init=x_init, progress=progress,
                                observation=observation, callback=callback)

    def init_state(self, x_init, generator):
        if x_init is None:
            device = self.device if self.device is not None else (generator.device if generator is not None else None)
            return self.sde.prior_sampling(self.particle_shape, generator=generator, device=device, dtype=self.dtype)
        if not torch.is_tensor(x_init) or tuple(x_init.shape) != self.particle_shape:
            got = tuple(x_init.shape) if torch.is_tensor(x_init) else type(x_init).__name__
            raise ValueError(f"x_init of 'smc' holds the starting particles, shape [B K, ...] = "
                             f"{self.particle_shape}, got {got}")
        return x_init

    # -------------------------------------------------------------------------------------------- pieces
    def _twist(self, score_fn, obs, x: Tensor, p: Point, final: bool, need_grad: bool):
        """At ``x`` (time ``p.t``): score, ``x0_hat``, ``log p~(y | x)`` ``[BK]`` (float64) and its gradient."""
        t = torch.full((x.shape[0],), p.t, device=x.device, dtype=x.dtype)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(need_grad)
            score = score_fn(x_in, t)
            x0 = (x_in + p.sigma ** 2 * score) / p.alpha
            observed = x_in if final and not self.denoise else x0
            residual = obs.residual(observed).detach()
            r2 = 0.0 if final or self.twist == "tweedie" else p.sigma ** 2 / (p.alpha ** 2 + p.sigma ** 2)
            weight = obs.gram_solve(residual, torch.full_like(t, r2, dtype=torch.float64), obs.noise_std ** 2)
            log_twist = -0.5 * flat_sum((residual * weight).double())
            grad = None
            if need_grad:
                (grad,) = torch.autograd.grad((obs.forward(observed) * weight).sum(), x_in)
        return score.detach(), x0.detach(), log_twist, grad

    @staticmethod
    def _normalised(log_w: Tensor) -> Tensor:
        return torch.softmax(log_w, dim=1)

    def _resample(self, log_w: Tensor, generator) -> Optional[Tensor]:
        """Systematic resampling of the rows whose effective sample size is below the threshold: the flat
        particle indices ``[B K]`` to keep, or ``None`` when no row needs it. Resets those rows' weights."""
        B, K = log_w.shape
        w = self._normalised(log_w)
        ess = 1.0 / (w ** 2).sum(dim=1)
        low = ess < self.resample_threshold * K
        # drawn whether or not a row needs it, so that a row's stream does not depend on the other rows
        u = _uniforms(generator, B, w.device)
        if not bool(low.any()):
            return None
        picked = _inverse_cdf(w, (u + torch.arange(K, dtype=torch.float64, device=w.device)) / K)
        keep = torch.where(low[:, None], picked, torch.arange(K, device=w.device).expand(B, K))
        log_w[low] = 0.0
        return (keep + K * torch.arange(B, device=w.device)[:, None]).reshape(-1)

    def _sample(self, score_fn, x, *, generator, progress, replace):
        obs = replace.observation.repeat_interleave(self.particles)
        B, K = self.shape[0], self.particles
        data = DataPrediction(self.sde, score_fn)
        points: List[Point] = [data.point(t) for t in self.timesteps.tolist()]
        score, x0, log_twist, grad = self._twist(score_fn, obs, x, points[0], final=False, need_grad=True)
        log_w = log_twist.reshape(B, K).clone()
        steps = range(len(points) - 1)
        if progress:
            steps = progress_bar(steps, desc="smc")
        for i in steps:
            s, t = points[i], points[i + 1]
            keep = self._resample(log_w, generator)
            if keep is not None:
                x, score, x0, log_twist, grad = (v[keep] for v in (x, score, x0, log_twist, grad))
            h = t.lam - s.lam
            c = t.sigma * math.sqrt(-math.expm1(-2.0 * h))
            b = t.alpha * s.sigma ** 2 / s.alpha - s.alpha * t.sigma ** 2 / t.alpha   # d mean / d score
            mean_p = (t.alpha / s.alpha) * x + b * score                              # the chain's step
            z = randn_like(x, generator)
            x = mean_p + b * grad + c * z                                             # proposal: twisted score
            # log p(x | x_s) - log q(x | x_s) = (|x - mu_q|^2 - |x - mu_p|^2) / (2 c^2), x - mu_q = c z
            log_ratio = -(2.0 * c * b * flat_sum((z * grad).double()) + b ** 2 * flat_sum(grad.double() ** 2)) \
                / (2.0 * c ** 2)
            final = i == len(points) - 2
            score, x0, new_twist, grad = self._twist(score_fn, obs, x, t, final=final, need_grad=not final)
            log_w += (log_ratio + new_twist - log_twist).reshape(B, K)
            log_twist = new_twist
            if not bool(torch.isfinite(log_w).all()):
                raise FloatingPointError(
                    f"smc: particle weights became non-finite at t={t.t:.4g} (step {i + 1} of {len(points) - 1}): "
                    "the twist's gradient overflowed; check score_fn for NaN/inf, or use a larger noise_std, "
                    "more steps N, or twist='pigdm'")
            replace.report(i, t.t, x, x0)
        w = self._normalised(log_w)
        pick = _inverse_cdf(w, _uniforms(generator, B, w.device)).reshape(B)       # one particle per row
        flat = pick + K * torch.arange(B, device=w.device)
        out = x0 if self.denoise else x
        return out[flat]


def _uniforms(generator, rows: int, device) -> Tensor:
    """``[rows, 1]`` float64 uniforms, one per output row (from that row's stream with a ``RowNoise``)."""
    gen_device = getattr(generator, "device", None) or "cpu"
    return noise.rand((rows, 1), generator, dtype=torch.float64, device=gen_device).to(device)


def _inverse_cdf(w: Tensor, u: Tensor) -> Tensor:
    """Per row of the weights ``w`` ``[B, K]``, the particle index in ``[0, K)`` of each uniform in ``u``
    ``[B, m]``: ``P(index = k) = w[b, k]``."""
    cdf = torch.cumsum(w, dim=1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf, u).clamp(max=w.shape[1] - 1)


__all__ = ["TwistedSMCSampler", "TWISTS"]
