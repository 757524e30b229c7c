"""Sampling with error control: the step sizes, or the budget, follow from a tolerance instead of a step count.

Registered samplers:

- ``dpm_adaptive``: adaptive DPM-Solver (Lu et al. 2022, Sec. 3.3 / App. C, "DPM-Solver-12" and "-23"): an
  embedded pair of single-step solvers of orders ``order - 1`` and ``order`` in the log-SNR ``lambda`` shares
  its score calls; the difference of the two is the local error estimate.
- ``sde_adaptive``: the adaptive reverse-SDE solver of Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast When
  Generating Data with Score-Based Models", Alg. 1): Euler-Maruyama and the extrapolated improved-Euler step
  on the same noise.

Both adapt the step of every row on its own (each row has its own time and step size, rows accept or reject
their steps independently, and the score is called on the rows still running), so a row's sample does not
depend on the other rows of the batch. After a call, ``sampler.last_stats`` holds:

- ``nfe``: the score calls made (as returned); ``iterations``: the passes of the batched loop;
- ``steps`` / ``rejected``: ``[B]`` int64, the accepted / rejected steps of each row;
- ``error_estimate``: ``[B]`` float64, the sum over each row's accepted steps of the RMS local error estimate
  ``||x_high - x_low|| / sqrt(D)`` (in the units of ``x``): a first-order estimate of the row's global error,
  which ignores how earlier errors grow or shrink along the flow.

Both refuse to exceed ``max_nfe``: when the next pass would, they raise ``RuntimeError`` (naming the rows left
and their time) rather than return samples that miss the tolerance.

:class:`ToleranceBudget` gives the fixed-budget multistep solvers (``dpmpp_2m``, ``dpmpp_3m``, ``unipc``) the
``tolerance=`` option: the smallest budget whose error, estimated on a pilot batch, meets the tolerance.
"""
import copy
import logging
import math

import torch

from ..progress import progress_bar
from ..utils import batch_broadcast
from .base import Replacement, Sampler, ScoreFn, randn_like, register_sampler, tweedie_denoise
from .ode import check_tolerances
from .schedules import OPTIMIZED, get_timesteps

Tensor = torch.Tensor
logger = logging.getLogger(__name__)


def _check_number(obj, name: str, low: float, high: float = math.inf) -> None:
    """``ValueError`` naming ``name`` unless the option is a finite number in ``(low, high]``."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not low < value <= high:
        raise ValueError(f"{name} must be a number in ({low}, {high}], got {value!r}")


def _check_int(obj, name: str, low: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _rms(v: Tensor) -> Tensor:
    """Per-row root mean square, float64 ``[B]`` (the scaled l2 norm ``||v||_2 / sqrt(D)``)."""
    return v.reshape(v.shape[0], -1).double().pow(2).mean(dim=1).sqrt()


def _row_norm(v: Tensor, norm: str) -> Tensor:
    return _rms(v) if norm == "l2" else v.reshape(v.shape[0], -1).double().abs().amax(dim=1)


def _scaled_error(x_high: Tensor, x_low: Tensor, x_prev: Tensor, rtol: float, atol: float, norm: str) -> Tensor:
    """``E = ||(x_high - x_low) / delta||`` per row with ``delta = max(atol, rtol max(|x_low|, |x_prev|))``
    elementwise (the mixed tolerance of both papers)."""
    delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
    return _row_norm((x_high - x_low) / delta, norm)


class _AdaptiveSampler(Sampler):
    """Shared options, checks and bookkeeping of the per-row adaptive loops."""

    options = {**Sampler.options, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "max_nfe": 1000}
    replacement = False
    no_replacement = ("its rows take steps of their own sizes at their own times, so there is no common time to "
                      "replace the observed part at; use a fast solver (dpmpp_2m, unipc, ...) or 'pc' with "
                      "observation=, or posterior_guidance(...) with this sampler")
    #: score calls one pass may make (a pass with a fresh start point takes one more)
    calls_per_pass = 2

    def check_options(self) -> None:
        if not isinstance(self.denoise, bool):
            raise ValueError(f"denoise must be True or False, got {self.denoise!r}")
        check_tolerances(rtol=self.rtol, atol=self.atol, h_init=self.h_init)
        _check_int(self, "max_nfe", self.calls_per_pass + 1 + int(self.denoise))

    def _budget_check(self, score_fn, needed: int, active: Tensor, t: Tensor) -> None:
        if score_fn.nfe + needed + int(self.denoise) > self.max_nfe:
            raise RuntimeError(
                f"{type(self).__name__} stopped at max_nfe={self.max_nfe} score calls with {int(active.numel())} "
                f"row(s) short of eps (the latest at t={float(t[active].max()):.3g}); raise max_nfe or loosen "
                f"rtol={self.rtol} / atol={self.atol}")

    def _start_stats(self, batch: int, device) -> None:
        self._reported = (0, math.inf)  # (the next callback step, the last time reported)
        self.last_stats = {"nfe": 0, "iterations": 0,
                           "steps": torch.zeros(batch, dtype=torch.int64, device=device),
                           "rejected": torch.zeros(batch, dtype=torch.int64, device=device),
                           "error_estimate": torch.zeros(batch, dtype=torch.float64, device=device)}

    def _record(self, idx: Tensor, accept: Tensor, local_error: Tensor) -> None:
        stats = self.last_stats
        stats["iterations"] += 1
        stats["steps"][idx[accept]] += 1
        stats["rejected"][idx[~accept]] += 1
        stats["error_estimate"][idx[accept]] += local_error[accept]

    def _report(self, replace, t: Tensor, x: Tensor) -> None:
        """The user's callback after a pass in which the row furthest behind moved: ``t`` is that row's time
        (rows run at their own times; the slowest one's stands for the batch, so the reported times decrease),
        ``x`` the whole state, ``denoised`` None."""
        latest = float(t.max())
        if latest < self._reported[1]:
            replace.report(self._reported[0], latest, x, None)
            self._reported = (self._reported[0] + 1, latest)

    def _progress(self, progress: bool):
        return progress_bar(total=1000, desc=type(self).__name__) if progress else None

    @staticmethod
    def _advance(bar, fraction: float) -> None:
        """Move the bar to ``fraction`` (0..1) of the way, that of the row furthest behind."""
        if bar is not None and int(1000 * fraction) > bar.n:
            bar.update(int(1000 * fraction) - bar.n)

    def _finish(self, score_fn, x: Tensor, bar) -> Tensor:
        if bar is not None:
            bar.close()
        if self.denoise:
            x = tweedie_denoise(self.sde, score_fn, x, torch.full((x.shape[0],), self.eps, dtype=x.dtype,
                                                                   device=x.device))
        self.last_stats["nfe"] = score_fn.nfe
        return x


def _score_on(score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """The score at ``x`` ``[b, ...]`` and float64 times ``t`` ``[b]`` (cast to ``x``'s dtype)."""
    return score_fn(x, t.to(x.dtype))


@register_sampler("dpm_adaptive")
class DPMAdaptiveSampler(_AdaptiveSampler):
    """Adaptive DPM-Solver (Lu et al. 2022, App. C, Alg. 4/5) on the noise prediction ``eps = -sigma_t score``.

    With ``h = lambda_t - lambda_s`` and ``s_1, s_2`` the times at ``lambda_s + r_1 h``, ``lambda_s + r_2 h``
    (eqs. 3.7-3.9, Alg. 1-2 with ``phi(h) = e^h - 1``):

    - order 1: ``x_1 = (alpha_t/alpha_s) x_s - sigma_t phi(h) eps_s``;
    - order 2 (``r_1``): ``u_1 = (alpha_{s1}/alpha_s) x_s - sigma_{s1} phi(r_1 h) eps_s``,
      ``x_2 = x_1 - sigma_t / (2 r_1) phi(h) (eps(u_1, s_1) - eps_s)``;
    - order 3 (``r_1 = 1/3``, ``r_2 = 2/3``): ``u_2 = (alpha_{s2}/alpha_s) x_s - sigma_{s2} phi(r_2 h) eps_s
      - sigma_{s2} r_2/r_1 (phi(r_2 h)/(r_2 h) - 1) D_1``, ``D_1 = eps(u_1, s_1) - eps_s``,
      ``x_3 = x_1 - sigma_t / r_2 (phi(h)/h - 1) (eps(u_2, s_2) - eps_s)``.

    ``order=2`` is DPM-Solver-12 (``x_low = x_1``, ``x_high = x_2`` with ``r_1 = 1/2``; 2 calls a step),
    ``order=3`` DPM-Solver-23 (``x_low = x_2`` with ``r_1 = 1/3``, ``x_high = x_3``; 3 calls a step). A step is
    accepted when ``E = ||(x_high - x_low) / delta||_2 / sqrt(D) <= 1``, ``delta = max(atol, rtol max(|x_low|,
    |x_prev|))`` (``x_prev`` the previous accepted ``x_low``); it moves to ``x_high``. Either way the next step
    is ``h <- min(h_max, h min(fac_max, max(fac_min, safety E^(-1/order))))``. ``eps_s`` is kept across a
    rejection, so a retried step costs ``order - 1`` calls. Works for VP, subVP and VE alike through
    ``alpha``, ``sigma``, ``lambda``.

    Options: ``order`` (3), ``rtol`` (0.05), ``atol`` (0.0078, 1/128: suits data in [-1, 1]), ``h_init`` (0.05,
    in ``lambda``), ``safety`` (0.9), ``fac_min`` (0.2), ``fac_max`` (2), ``h_max`` (1.0, in ``lambda``),
    ``max_nfe`` (1000), ``denoise``. The bounds on the step matter: on problem (a) of ``benchmarks/solvers.py``
    steps of 2-3 in ``lambda`` passed with ``E < 1`` while both solutions were 10% off (errors 0.11 at rtol
    1e-2 and 0.13 at 1e-3; with ``h_max = 1``: 1.9e-3 and 1.0e-3).
    """

    options = {**_AdaptiveSampler.options, "order": 3, "safety": 0.9, "fac_min": 0.2, "fac_max": 2.0,
               "h_max": 1.0}

    @property
    def calls_per_pass(self):
        return self.order if self.order in (2, 3) else 3

    def check_options(self) -> None:
        if self.order not in (2, 3) or isinstance(self.order, bool):
            raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {self.order!r}")
        _check_number(self, "safety", 0.0, 1.0)
        _check_number(self, "fac_min", 0.0, 1.0)
        _check_number(self, "fac_max", 1.0)
        _check_number(self, "h_max", 0.0)
        super().check_options()

    def _coeffs(self, t: Tensor):
        alpha, sigma = self.sde.marginal_coeffs(t)
        return alpha, sigma

    def _time(self, lam: Tensor, lam_end: float) -> Tensor:
        t = self.sde.t_from_log_snr(lam)
        return torch.where(lam >= lam_end, torch.full_like(t, self.eps), t)  # land on eps exactly

    def _sample(self, score_fn, x, *, generator, progress, replace):
        B = x.shape[0]
        device = x.device
        x = x.clone()  # updated in place, row by row: never the caller's x_init
        lam_T, lam_end = (float(v) for v in self.sde.log_snr(torch.tensor([self.sde.T, self.eps],
                                                                          dtype=torch.float64)))
        t = torch.full((B,), float(self.sde.T), dtype=torch.float64)
        lam = torch.full((B,), lam_T, dtype=torch.float64)
        h = torch.full((B,), float(self.h_init), dtype=torch.float64)
        done = torch.zeros(B, dtype=torch.bool)
        fresh = torch.zeros(B, dtype=torch.bool)    # whether eps_cache holds eps(x, t) of the row's current point
        eps_cache = torch.zeros_like(x)
        x_prev = x.clone()
        self._start_stats(B, "cpu")
        bar = self._progress(progress)
        k = self.order

        def noise(z, tt):
            _, sigma = self._coeffs(tt)
            return -bb(sigma, z) * _score_on(score_fn, z, tt.to(device))

        def bb(v, like):
            return batch_broadcast(v.to(like.device), like)

        while not bool(done.all()):
            idx = (~done).nonzero().squeeze(1)
            stale = idx[~fresh[idx]]
            self._budget_check(score_fn, (k - 1) + int(stale.numel() > 0), idx, t)
            if stale.numel():
                dev_stale = stale.to(device)
                eps_cache[dev_stale] = noise(x[dev_stale], t[stale])
                fresh[stale] = True
            dev_idx = idx.to(device)
            xs, es = x[dev_idx], eps_cache[dev_idx]
            lam_s, ts = lam[idx], t[idx]
            lam_t = torch.minimum(lam_s + h[idx], torch.full_like(lam_s, lam_end))
            hh = lam_t - lam_s
            t_t = self._time(lam_t, lam_end)
            a_s, s_s = self._coeffs(ts)
            a_t, s_t = self._coeffs(t_t)
            r1 = 0.5 if k == 2 else 1.0 / 3.0
            lam_1 = lam_s + r1 * hh
            t_1 = self._time(lam_1, lam_end)
            a_1, s_1 = self._coeffs(t_1)
            u_1 = bb(a_1 / a_s, xs) * xs - bb(s_1 * torch.expm1(r1 * hh), xs) * es
            d_1 = noise(u_1, t_1) - es
            x_1 = bb(a_t / a_s, xs) * xs - bb(s_t * torch.expm1(hh), xs) * es
            x_2 = x_1 - bb(s_t / (2.0 * r1) * torch.expm1(hh), xs) * d_1
            if k == 2:
                x_low, x_high = x_1, x_2
            else:
                r2 = 2.0 / 3.0
                t_2 = self._time(lam_s + r2 * hh, lam_end)
                a_2, s_2 = self._coeffs(t_2)
                phi_2 = torch.expm1(r2 * hh)
                u_2 = bb(a_2 / a_s, xs) * xs - bb(s_2 * phi_2, xs) * es \
                    - bb(s_2 * (r2 / r1) * (phi_2 / (r2 * hh) - 1.0), xs) * d_1
                d_2 = noise(u_2, t_2) - es
                x_low, x_high = x_2, x_1 - bb(s_t / r2 * (torch.expm1(hh) / hh - 1.0), xs) * d_2
            E = _scaled_error(x_high, x_low, x_prev[dev_idx], self.rtol, self.atol, "l2").cpu()
            accept = E <= 1.0
            self._record(idx, accept, _rms(x_high - x_low).cpu())
            acc, dev_acc = idx[accept], dev_idx[accept.to(device)]
            x[dev_acc] = x_high[accept.to(device)]
            x_prev[dev_acc] = x_low[accept.to(device)]
            lam[acc], t[acc] = lam_t[accept], t_t[accept]
            fresh[acc] = False
            done[acc] = lam_t[accept] >= lam_end
            factor = torch.clamp(self.safety * E.clamp_min(1e-12) ** (-1.0 / k), self.fac_min, self.fac_max)
            h[idx] = (hh * factor).clamp(max=float(self.h_max))
            self._advance(bar, float(((lam - lam_T) / (lam_end - lam_T)).min()))
            self._report(replace, t, x)
        return self._finish(score_fn, x, bar)


class _BrownianMemory:
    """Each row's Brownian increments revealed by its rejected steps, kept for its later steps ("rejection
    sampling with memory", Rackauckas and Nie 2017), so that a rejection never biases the noise.

    Redrawing the noise after a rejection (Alg. 1 of Jolicoeur-Martineau et al.) keeps the draws whose error
    estimate was small, and that estimate depends on the noise: a 2-D mixture sampled under VE came out with mode
    weights 0.26 / 0.46 / 0.29 instead of 0.2 / 0.5 / 0.3, and worse at tighter tolerances. Here every row owns
    one Brownian path, revealed piece by piece: a stack of increments ``(dt_k, dW_k)`` that cover the times just
    below the row's ``t``. A step of size ``h`` takes the increments it covers, splits the one it ends inside by
    the Brownian bridge, ``dW_a ~ N(s/dt dW, s (dt - s)/dt)`` for the first ``s`` of it, and draws
    ``N(0, h')`` for the part ``h'`` beyond the stack; an accepted step pops what it used, a rejected one keeps
    the refined stack, so the path is the same whatever the accept decisions.
    """

    def __init__(self, like: Tensor, capacity: int = 8):
        B = like.shape[0]
        self.dt = torch.zeros(B, capacity, dtype=torch.float64)     # 0: an empty slot (stacks are left-aligned)
        self.dw = like.new_zeros((B, capacity, *like.shape[1:]))
        self.width = 0                                               # the longest stack

    def increment(self, idx: Tensor, dev_idx: Tensor, h: Tensor, z_bridge: Tensor, z_fresh: Tensor):
        """The increment ``dW`` over the next ``h`` ``[b]`` of rows ``idx`` and ``commit(accept)`` to update."""
        dt, dw = self.dt[idx, :self.width], self.dw[dev_idx, :self.width]
        b, K = dt.shape
        tol = 1e-12
        cum = dt.cumsum(1)
        prev = cum - dt
        H = h[:, None]
        valid = dt > 0
        full = valid & (cum <= H + tol)
        n_valid, n_full = valid.sum(1), full.sum(1)
        total = cum[:, -1] if K else torch.zeros(b, dtype=torch.float64)
        j = n_full.clamp(max=max(K - 1, 0))
        pad = torch.zeros(b, 1, dtype=torch.float64)
        part_dt = torch.cat([dt, pad], 1).gather(1, n_full[:, None]).squeeze(1)
        prev_j = torch.cat([prev, total[:, None]], 1).gather(1, n_full[:, None]).squeeze(1)
        has_part = (n_full < n_valid) & (prev_j < h - tol)
        fresh = torch.where(n_full == n_valid, (h - total).clamp_min(0.0), torch.zeros_like(h))
        has_fresh = fresh > tol
        s = torch.where(has_part, h - prev_j, torch.zeros_like(h))
        D = torch.where(has_part, part_dt, torch.ones_like(h))
        bb = lambda v: batch_broadcast(v.to(z_fresh.device), z_fresh)  # noqa: E731
        if K:
            part_dw = dw[torch.arange(b, device=dw.device), j.to(dw.device)]
            full_dw = (dw * full.to(dw.device, dw.dtype).reshape(b, K, *([1] * (dw.dim() - 2)))).sum(1)
        else:
            part_dw = full_dw = torch.zeros_like(z_fresh)
        piece = bb(s / D) * part_dw + bb((s * (D - s) / D).clamp_min(0.0).sqrt()) * z_bridge
        piece = piece * bb(has_part.double())
        rem = (part_dw - piece) * bb(has_part.double())
        fresh_dw = bb(fresh.sqrt() * has_fresh.double()) * z_fresh
        dW = full_dw + piece + fresh_dw

        def commit(accept: Tensor) -> None:
            k = torch.arange(K + 2)[None, :]
            empty = K + 3
            jj, nv, nf = j[:, None], n_valid[:, None], n_full[:, None]
            shifted = torch.where(k - 1 < K, k - 1, torch.full_like(k, empty))
            reject_part = torch.where(k < jj, k, torch.where(k == jj, K, torch.where(k == jj + 1, K + 1, shifted)))
            reject_fresh = torch.where(k < nv, k, torch.where(k == nv, torch.full_like(k, K + 2),
                                                              torch.full_like(k, empty)))
            reject_none = torch.where(k < K, k, torch.full_like(k, empty))
            accept_part = torch.where(k == 0, torch.full_like(k, K + 1),
                                      torch.where(jj + k < K, jj + k, torch.full_like(k, empty)))
            accept_none = torch.where(nf + k < K, nf + k, torch.full_like(k, empty))
            hp, hf = has_part[:, None], has_fresh[:, None]
            on_reject = torch.where(hp, reject_part, torch.where(hf, reject_fresh, reject_none))
            on_accept = torch.where(hp, accept_part, torch.where(hf, torch.full_like(k, empty), accept_none))
            src = torch.where(accept[:, None], on_accept, on_reject)
            ext_dt = torch.cat([dt, s[:, None], (D - s).mul(has_part.double())[:, None], fresh[:, None] *
                                has_fresh.double()[:, None], pad], 1)
            ext_dw = torch.cat([dw, piece[:, None], rem[:, None], fresh_dw[:, None],
                                torch.zeros_like(piece)[:, None]], 1)
            new_dt = ext_dt.gather(1, src)
            dev_src = src.to(dw.device).reshape(b, K + 2, *([1] * (dw.dim() - 2))).expand(b, K + 2, *dw.shape[2:])
            new_dw = ext_dw.gather(1, dev_src)
            if K + 2 > self.dt.shape[1]:  # grow the slots (doubling), zero-filled
                grow = K + 2
                self.dt = torch.cat([self.dt, self.dt.new_zeros((self.dt.shape[0], grow))], 1)
                self.dw = torch.cat([self.dw, self.dw.new_zeros((self.dw.shape[0], grow, *self.dw.shape[2:]))], 1)
            self.dt[idx, :K + 2] = new_dt
            self.dw[dev_idx, :K + 2] = new_dw
            self.width = int((self.dt[:, :K + 2] > 0).sum(1).max())

        return dW, commit


@register_sampler("sde_adaptive")
class SDEAdaptiveSampler(_AdaptiveSampler):
    """The adaptive reverse-SDE solver of Jolicoeur-Martineau et al. 2021, Alg. 1 (with extrapolation).

    The reverse SDE ``dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dw`` is stepped from ``t`` to ``t - h`` with
    one Brownian increment ``dW`` (``sqrt(h) z`` in the paper): ``K_1 = -h [f - g^2 score](x, t) + g(t) dW``
    (Euler-Maruyama, ``x' = x + K_1``), ``K_2 = -h [f - g^2 score](x', t - h) + g(t - h) dW`` and the
    improved-Euler ``x'' = x + (K_1 + K_2) / 2``; two calls a step. The error ``E = ||(x' - x'') / delta||``
    with ``delta = max(atol, rtol max(|x'|, |x'_prev|))`` is the scaled l2 norm (``norm='l2'``, ``/ sqrt(D)``)
    or the max norm (``'linf'``) of each row; a row with ``E <= 1`` accepts ``x''`` (extrapolation) and keeps
    ``x'_prev = x'``. Every row then sets ``h <- min(t - eps, theta h E^(-r))``. Options: ``rtol`` (0.01),
    ``atol`` (0.01), ``h_init`` (0.01, in ``t``), ``theta`` (0.9), ``r`` (0.9), ``norm`` (``l2``), ``memory``
    (True), ``max_nfe`` (1000), ``denoise`` (Tweedie's formula at ``eps``). The tolerances, ``theta`` and ``r``
    default to the paper's code.

    ``memory=True`` keeps the increments that rejected steps revealed (:class:`_BrownianMemory`): each row's
    increments then come from one Brownian path, whatever its accept decisions. ``memory=False`` redraws after a
    rejection, as Alg. 1 does, which biases the samples where ``E`` depends on the noise (low dimensions: see
    :class:`_BrownianMemory`).

    Noise and seeds: every pass draws two normals for the whole batch through ``randn_like(x, generator)`` (the
    part of a step beyond the revealed path, and the Brownian-bridge draw of a split increment) and each running
    row takes its own slabs, used or not. A row's k-th attempt therefore uses the row's k-th draws whatever the
    other rows do (rows accept and reject on their own errors only), so with ``seeds=`` (one stream per row) a
    row's sample is a function of its seed alone, the same in any batch (tested). With ``memory=False`` a
    rejection consumes its draws. With one ``generator`` a row's draws depend on its place in the batch, as
    for every sampler.
    """

    options = {**_AdaptiveSampler.options, "rtol": 0.01, "atol": 0.01, "h_init": 0.01, "theta": 0.9, "r": 0.9,
               "norm": "l2", "memory": True}

    def check_options(self) -> None:
        if not isinstance(self.memory, bool):
            raise ValueError(f"memory must be True (keep the noise of rejected steps) or False (redraw it, as the "
                             f"paper), got {self.memory!r}")
        _check_number(self, "theta", 0.0, 1.0)
        _check_number(self, "r", 0.0)
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"norm must be 'l2' (scaled by sqrt(D)) or 'linf', got {self.norm!r}")
        super().check_options()

    def _drift(self, score_fn, x: Tensor, t: Tensor):
        """The reverse drift ``f(x, t) - g(t)^2 score(x, t)`` and ``g(t)`` (``[b]``) at float64 times ``t``."""
        tt = t.to(device=x.device, dtype=x.dtype)
        f, g = self.sde.sde(x, tt)
        return f - batch_broadcast(g ** 2, x) * score_fn(x, tt), g

    def _sample(self, score_fn, x, *, generator, progress, replace):
        B = x.shape[0]
        device = x.device
        x = x.clone()  # updated in place, row by row: never the caller's x_init
        eps, T = self.eps, float(self.sde.T)
        t = torch.full((B,), T, dtype=torch.float64)
        h = torch.full((B,), min(float(self.h_init), T - eps), dtype=torch.float64)
        done = torch.zeros(B, dtype=torch.bool)
        x_prev = x.clone()
        memory = _BrownianMemory(x) if self.memory else None
        self._start_stats(B, "cpu")
        bar = self._progress(progress)

        def bb(v, like):
            return batch_broadcast(v.to(like.device), like)

        while not bool(done.all()):
            idx = (~done).nonzero().squeeze(1)
            self._budget_check(score_fn, 2, idx, t)
            z_fresh = randn_like(x, generator)  # two draws per row per pass, used or not
            z_bridge = randn_like(x, generator)
            dev_idx = idx.to(device)
            xs = x[dev_idx]
            ts = t[idx]
            last = h[idx] >= ts - eps
            hh = torch.where(last, ts - eps, h[idx])
            t_next = torch.where(last, torch.full_like(ts, eps), ts - hh)
            if memory is None:
                dW = bb(hh.sqrt(), xs) * z_fresh[dev_idx]
            else:
                dW, commit = memory.increment(idx, dev_idx, hh, z_bridge[dev_idx], z_fresh[dev_idx])
            drift, g = self._drift(score_fn, xs, ts)
            k_1 = -bb(hh, xs) * drift + bb(g, xs) * dW
            x_low = xs + k_1
            drift_2, g_2 = self._drift(score_fn, x_low, t_next)
            k_2 = -bb(hh, xs) * drift_2 + bb(g_2, xs) * dW
            x_high = xs + 0.5 * (k_1 + k_2)
            E = _scaled_error(x_high, x_low, x_prev[dev_idx], self.rtol, self.atol, self.norm).cpu()
            accept = E <= 1.0
            if memory is not None:
                commit(accept)
            self._record(idx, accept, _rms(x_high - x_low).cpu())
            acc, dev_acc = idx[accept], dev_idx[accept.to(device)]
            x[dev_acc] = x_high[accept.to(device)]
            x_prev[dev_acc] = x_low[accept.to(device)]
            t[acc] = t_next[accept]
            done[acc] = last[accept]
            h[idx] = torch.minimum(t[idx] - eps, self.theta * hh * E.clamp_min(1e-12) ** (-float(self.r)))
            self._advance(bar, float(((T - t) / (T - eps)).min()))
            self._report(replace, t, x)
        return self._finish(score_fn, x, bar)


#: the options :class:`ToleranceBudget` adds to a fast solver
TOLERANCE_OPTIONS = {"tolerance": None, "pilot_rows": 16, "max_nfe": 1000}


class ToleranceBudget:
    """Mixin for a deterministic fast solver: ``tolerance=`` picks the budget from a pilot batch.

    With ``tolerance=tol`` (and no ``nfe``), each call first solves ``pilot_rows`` prior draws (seeded, the same
    at every call, so the choice depends on the score and the options only) at budgets ``n = min_nfe, 2
    min_nfe, 4 min_nfe, ...``, estimating the error of budget ``n`` by ``||x_n - x_2n|| / ||x_2n||`` (the
    relative l2 error over the pilot batch, the measure of ``benchmarks/solvers.py``) until it meets ``tol``,
    and confirms it against ``x_4n`` (before the asymptotic range ``x_n`` and ``x_2n`` can agree while both are
    off: DPM-Solver++(2M) at 8 and 16 calls on problem (a)); then bisects between the last failing and the
    first passing budget against the reference ``x_4n``.
    The smallest passing budget (denoising call included) is used for the batch. The pilot's score calls
    (on ``pilot_rows`` rows) are counted in the returned NFE; ``sampler.last_stats`` reports them apart:
    ``nfe`` (all calls), ``nfe_chosen``, ``pilot_nfe``, ``pilot_rows``, ``error_estimate`` (the chosen budget's
    estimated relative error) and ``tolerance``; the choice is also logged (``logging.INFO``). The pilot runs at
    every call: pass ``nfe=last_stats["nfe_chosen"]`` to reuse a choice. ``max_nfe`` (1000) bounds the budgets
    tried (the reference ``4n`` included): ``RuntimeError`` if the tolerance needs more. The pilot solves the
    unconditional problem: with ``observation=`` only the batch's solve replaces the observed part.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.options = {**cls.options, **TOLERANCE_OPTIONS}

    def check_options(self) -> None:
        _check_int(self, "pilot_rows", 1)
        _check_int(self, "max_nfe", 1)
        if self.tolerance is not None:
            _check_number(self, "tolerance", 0.0)
            if self.nfe is not None:
                raise ValueError(f"give nfe or tolerance, not both (got nfe={self.nfe!r}, "
                                 f"tolerance={self.tolerance!r}): tolerance chooses the budget")
            if not isinstance(self.schedule, str) or self.schedule == OPTIMIZED:
                raise ValueError("tolerance= chooses the number of steps of a named schedule (logsnr, edm, ...); "
                                 f"got schedule={self.schedule!r}")
        super().check_options()
        if self.tolerance is not None and self.max_nfe < 4 * self.min_nfe:
            raise ValueError(f"max_nfe must be at least 4 min_nfe = {4 * self.min_nfe} for tolerance=, "
                             f"got {self.max_nfe}")

    def with_budget(self, nfe: int):
        """A copy of this sampler that spends ``nfe`` calls (denoising included), without ``tolerance``."""
        clone = copy.copy(self)
        clone.tolerance, clone.nfe = None, nfe
        clone.n_steps = clone.steps_for_budget(nfe - int(self.denoise))
        clone.timesteps = get_timesteps(self.schedule, self.sde, clone.n_steps, self.eps, rho=float(self.rho))
        return clone

    def choose_budget(self, score_fn: ScoreFn):
        """``(nfe, estimated error, pilot calls)`` for ``tolerance`` (see the class)."""
        pilot_shape = (self.pilot_rows, *self.shape[1:])
        x = self.sde.prior_sampling(pilot_shape, generator=torch.Generator().manual_seed(0), dtype=self.dtype,
                                    device=self.device)
        identity = Replacement(self.sde, None, None)
        runs, calls = {}, 0

        def run(n):
            nonlocal calls
            if n not in runs:
                start = score_fn.nfe
                runs[n] = self.with_budget(n)._sample(score_fn, x.clone(), generator=None, progress=False,
                                                      replace=identity)
                calls += score_fn.nfe - start
            return runs[n]

        def error(n, ref):
            return float(torch.linalg.vector_norm(run(n) - ref) / torch.linalg.vector_norm(ref))

        lo, n = self.min_nfe - 1, self.min_nfe   # lo fails (or is below the least budget), n is being tried
        estimate = float("nan")
        while True:
            if 4 * n > self.max_nfe:
                raise RuntimeError(f"tolerance={self.tolerance} is not met within max_nfe={self.max_nfe} (estimated "
                                   f"error {estimate:.2e} at nfe={n}); raise max_nfe or the tolerance")
            estimate = error(n, run(2 * n))
            if estimate <= self.tolerance:  # confirmed against 4n: before the asymptotic range n and 2n can agree
                ref = run(4 * n)
                estimate = error(n, ref)
                if estimate <= self.tolerance:
                    break
            lo, n = n, 2 * n
        hi = n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if error(mid, ref) <= self.tolerance:
                hi = mid
            else:
                lo = mid
        return hi, error(hi, ref), calls

    def _sample(self, score_fn, x, *, generator, progress, replace):
        if self.tolerance is None:
            return super()._sample(score_fn, x, generator=generator, progress=progress, replace=replace)
        nfe, estimate, pilot = self.choose_budget(score_fn)
        logger.info("%s tolerance=%g: chose nfe=%d (estimated relative error %.2e) from %d pilot score calls on "
                    "%d rows", type(self).__name__, self.tolerance, nfe, estimate, pilot, self.pilot_rows)
        x = self.with_budget(nfe)._sample(score_fn, x, generator=generator, progress=progress, replace=replace)
        self.last_stats = {"nfe": score_fn.nfe, "nfe_chosen": nfe, "pilot_nfe": pilot,
                           "pilot_rows": self.pilot_rows, "error_estimate": estimate, "tolerance": self.tolerance}
        return x


__all__ = ["DPMAdaptiveSampler", "SDEAdaptiveSampler", "ToleranceBudget", "TOLERANCE_OPTIONS"]
