"""Exact likelihood through the probability-flow ODE, and the bits/dim bookkeeping for 8-bit images.

The probability-flow ODE ``dx/dt = f~(x, t) = f(x, t) - g(t)^2 / 2 * score(x, t)`` (Song et al. 2021, eq. 13)
transports ``p_eps`` to ``p_T``. By the instantaneous change of variables (App. D.2, eq. 39)

    log p_eps(x) = log p_T(z) + int_eps^T div f~(x(t), t) dt,    z = x(T),

which is integrated jointly with the ODE by ``scipy.integrate.solve_ivp`` in float64. The drift is linear,
``f(x, t) = a(t) x``, so ``div f~ = D a(t) - g(t)^2 / 2 div s``; the score's divergence is the Hutchinson-Skilling
estimate ``div s = E_v[v^T (ds/dx) v]`` with one noise vector ``v`` per solve (one vector-Jacobian product per
evaluation), or, for small ``D``, the exact trace of the Jacobian.

Bits per dimension: ``bpd = -log p(x) / (D ln 2) + offset`` with ``D`` the number of dimensions of one
sample; ``offset`` converts a continuous density on the model's scale into bits of 8-bit data
(see :func:`bpd_offset`).
"""
import contextlib
import math
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
from scipy.integrate import solve_ivp

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it BLAS keeps its own thread count
    threadpool_limits = None

from . import noise
from .sampling.base import CountingScore
from .sde_lib import SDE
from .utils import batch_broadcast, check_data, check_generator

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

HUTCHINSON_TYPES = ("rademacher", "gaussian", "exact")
ODE_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


# -- divergence of a vector field -------------------------------------------------------------------------

def hutchinson_divergence(fn: ScoreFn, x: Tensor, t: Tensor, noise: Tensor) -> Tuple[Tensor, Tensor]:
    """``(F(x, t), v^T (dF/dx) v)``: the field and its Hutchinson-Skilling divergence estimate ``[B]``,
    with one vector-Jacobian product ``v^T dF/dx``. Unbiased when ``E[v v^T] = I``."""
    B = x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x, t)
        if not out.requires_grad:  # a field that does not depend on x
            return out, out.new_zeros(B)
        # v^T dF/dx as the gradient of the scalar <F, v>: the same numbers as grad_outputs=v, but an explicit
        # grad_outputs makes autograd import torch's symbolic-shapes machinery (and sympy) on first use,
        # 0.3-1 s of the first likelihood call in a process
        (vjp,) = torch.autograd.grad(torch.dot(out.reshape(-1), noise.reshape(-1).to(out.dtype)), x)
    return out.detach(), torch.linalg.vecdot(vjp.reshape(B, -1), noise.reshape(B, -1))


def exact_divergence(fn: ScoreFn, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
    """``(F(x, t), tr(dF/dx))``: the field and the exact trace of its Jacobian ``[B]``, by ``D`` backward
    passes through one forward pass (samples of the batch must not interact, as for any score network)."""
    B, D = x.shape[0], x[0].numel()
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x, t)
        flat = out.reshape(B, D)
        div = torch.zeros(B, device=x.device, dtype=x.dtype)
        for i in range(D if out.requires_grad else 0):
            (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < D - 1)
            div += grad.reshape(B, D)[:, i]
    return out.detach(), div


def hutchinson_noise(x: Tensor, kind: str, generator: Optional[torch.Generator] = None) -> Tensor:
    """A noise vector shaped like ``x`` with ``E[v v^T] = I``: Rademacher (+-1) or standard normal."""
    if kind == "rademacher":
        v = noise.randint(0, 2, x.shape, generator, device=x.device, dtype=x.dtype)
        return v.mul_(2).sub_(1)
    if kind == "gaussian":
        return noise.randn(x.shape, generator, device=x.device, dtype=x.dtype)
    raise ValueError(f"hutchinson_type must be one of {HUTCHINSON_TYPES[:2]} for a noise vector, got {kind!r}")


def single_threaded_blas():
    """Limit BLAS (NumPy/SciPy's OpenBLAS) to one thread inside the block, if ``threadpoolctl`` is installed.

    scipy's Runge-Kutta stage sums are matrix-vector products ``K^T a`` over the whole ``B x D`` state:
    memory-bound, so extra BLAS threads only add synchronisation, which on a busy 2-core machine made each
    evaluation 8x slower (17 ms vs 2 ms for ``64 x 3072``). torch's own intra-op threads are left alone.
    """
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# -- the likelihood ---------------------------------------------------------------------------------------

class LikelihoodFn:
    """``likelihood_fn(score_fn, x, *, generator=None) -> (bpd, z, nfe)``; built by :func:`get_likelihood_fn`.

    ``bpd`` is float64 ``[B]`` on ``x``'s device; ``z = x(T)`` is shaped, typed and placed like ``x``;
    ``nfe`` counts the calls to ``score_fn``. The score network runs in ``x``'s dtype and device; only
    the ODE state (``x`` flattened, then ``B`` log-density increments) lives in float64 NumPy.
    """

    def __init__(self, sde: SDE, *, hutchinson_type: str = "rademacher", rtol: float = 1e-5,
                 atol: float = 1e-5, method: str = "RK45", eps: float = 1e-5, offset: float = 0.0):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an scoresde.sde_lib.SDE, got {type(sde).__name__}")
        if hutchinson_type not in HUTCHINSON_TYPES:
            raise ValueError(f"hutchinson_type must be one of {HUTCHINSON_TYPES}, got {hutchinson_type!r}")
        if method not in ODE_METHODS:
            raise ValueError(f"method must be one of the scipy solve_ivp methods {ODE_METHODS}, got {method!r}")
        for name, value in (("rtol", rtol), ("atol", atol)):
            if not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(eps, (int, float)) or not (0 < eps < sde.T):
            raise ValueError(f"eps must satisfy 0 < eps < T = {sde.T}, got {eps!r}")
        if not isinstance(offset, (int, float)) or not math.isfinite(offset):
            raise ValueError(f"offset must be a finite number, got {offset!r}")
        self.sde = sde
        self.hutchinson_type = hutchinson_type
        self.rtol, self.atol = float(rtol), float(atol)
        self.method = method
        self.eps = float(eps)
        self.offset = float(offset)

    def __call__(self, score_fn: ScoreFn, x: Tensor, *,
                 generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, int]:
        if torch.is_tensor(x) and not (x.is_floating_point() or x.is_complex()):
            raise ValueError(f"x must be a floating-point tensor of shape [B, ...], got a {x.dtype} tensor of shape "
                             f"{tuple(x.shape)}; for 8-bit data use scoresde.likelihood.uniform_dequantize first")
        check_data(x, "x")
        check_generator(generator)
        self._check_linear_drift(x)
        counted = CountingScore(score_fn)
        shape, B, D = x.shape, x.shape[0], x[0].numel()
        n = B * D
        if self.hutchinson_type == "exact":
            divergence = exact_divergence
        else:
            noise = hutchinson_noise(x, self.hutchinson_type, generator)
            divergence = lambda f, xt, t: hutchinson_divergence(f, xt, t, noise)  # noqa: E731

        def ode_func(t: float, y: np.ndarray) -> np.ndarray:
            xt = torch.from_numpy(y[:n]).view(shape).to(device=x.device, dtype=x.dtype)
            tt = torch.full((B,), t, device=x.device, dtype=x.dtype)
            # f(x, t) = a(t) x for every SDE here (the contract behind marginal_coeffs), so only the score
            # needs autograd: f~ = a x - g^2/2 s and div f~ = D a - g^2/2 div s
            a, g = self.sde.sde(xt.new_ones(B, 1), tt)
            score, div_score = divergence(counted, xt, tt)
            drift = torch.addcmul(batch_broadcast(a[:, 0], xt) * xt, batch_broadcast(-0.5 * g ** 2, xt), score)
            div = D * a[:, 0].double() - 0.5 * g.double() ** 2 * div_score.double()
            # scipy keeps the returned array (RK stages), so each call needs a fresh one
            out = np.empty(n + B)
            torch.from_numpy(out[:n]).copy_(drift.reshape(n))
            torch.from_numpy(out[n:]).copy_(div)
            if not math.isfinite(out.sum()):   # scipy's step control can loop forever on NaN
                raise FloatingPointError(f"non-finite drift or divergence at t={t:.6g} after {counted.nfe} "
                                         "score evaluations; check score_fn for NaN/inf")
            return out

        y0 = np.empty(n + B)
        torch.from_numpy(y0[:n]).copy_(x.detach().reshape(n))
        y0[n:] = 0.0
        with single_threaded_blas():
            sol = solve_ivp(ode_func, (self.eps, self.sde.T), y0, method=self.method, rtol=self.rtol,
                            atol=self.atol, t_eval=(self.sde.T,))
        if sol.status != 0:
            raise FloatingPointError(f"the probability-flow ODE solve failed after {counted.nfe} score "
                                     f"evaluations: {sol.message}")
        y_T = torch.from_numpy(sol.y[:, -1])
        z = y_T[:n].view(shape)
        log_p = self.sde.prior_logp(z) + y_T[n:]
        bpd = -log_p / (D * math.log(2)) + self.offset
        if not torch.isfinite(bpd).all():
            raise FloatingPointError(f"non-finite log-likelihood after {counted.nfe} score evaluations; "
                                     "check score_fn for NaN/inf")
        return bpd.to(x.device), z.to(device=x.device, dtype=x.dtype), counted.nfe

    def _check_linear_drift(self, x: Tensor) -> None:
        """The solver takes ``f(x, t) = a(t) x`` with ``a(t) = f(1, t)``; check it once at ``x`` and ``eps``."""
        t = torch.full((x.shape[0],), self.eps, device=x.device, dtype=x.dtype)
        drift = self.sde.sde(x, t)[0]
        a = self.sde.sde(x.new_ones(x.shape[0], 1), t)[0][:, 0]
        if not torch.allclose(drift, batch_broadcast(a, x) * x, rtol=1e-4, atol=1e-6):
            raise ValueError(f"the likelihood needs an SDE whose drift is linear in x, f(x, t) = a(t) x; "
                             f"{type(self.sde).__name__}.sde is not")

    def __repr__(self) -> str:
        return (f"LikelihoodFn(sde={type(self.sde).__name__}, hutchinson_type={self.hutchinson_type!r}, "
                f"rtol={self.rtol}, atol={self.atol}, method={self.method!r}, eps={self.eps}, offset={self.offset})")


def get_likelihood_fn(sde: SDE, *, hutchinson_type: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                      method: str = "RK45", eps: float = 1e-5, offset: float = 0.0) -> LikelihoodFn:
    """The bits/dim of data under the probability-flow ODE of ``sde`` with a given score.

    Returns ``likelihood_fn(score_fn, x, *, generator=None) -> (bpd, z, nfe)`` with
    ``bpd = -(log p_T(z) + int_eps^T div f~ dt) / (D ln 2) + offset``, integrated from ``eps`` to ``T`` by
    ``solve_ivp(method, rtol, atol)``. ``hutchinson_type``: ``"rademacher"`` or ``"gaussian"`` noise for the
    Hutchinson-Skilling estimator of the score's divergence (one draw from ``generator`` per call, fixed along
    the solve), or ``"exact"`` for the exact divergence (``D`` backward passes per evaluation: small ``D`` only).
    The drift of ``sde`` must be linear, ``f(x, t) = a(t) x`` (true of every SDE in ``sde_lib``; checked): its
    divergence ``D a(t)`` is then exact and only the score is differentiated, one vector-Jacobian product per NFE.
    """
    return LikelihoodFn(sde, hutchinson_type=hutchinson_type, rtol=rtol, atol=atol, method=method,
                        eps=eps, offset=offset)


# -- 8-bit data: dequantisation and the bits/dim offset ---------------------------------------------------

def uniform_dequantize(x: Tensor, generator: Optional[torch.Generator] = None, *, num_bits: int = 8,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """``u = (x + U) / 2^num_bits`` with ``U ~ U[0, 1)`` per entry: integer data in ``{0, ..., 255}`` mapped
    to ``[0, 1)`` so that a continuous density on ``u`` bounds the discrete likelihood (see :func:`bpd_offset`)."""
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a tensor of integers, got {type(x).__name__}")
    levels = 2 ** int(num_bits)
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"x must hold integers in [0, {levels - 1}], got dtype {x.dtype}")
    if x.is_floating_point() and not torch.equal(x, torch.round(x)):
        raise ValueError("x must hold integers (e.g. uint8 pixels); got non-integral floating-point values. "
                         "Pass the raw 8-bit data, not data already scaled to [0, 1]")
    if x.numel() and (x.min() < 0 or x.max() > levels - 1):
        raise ValueError(f"x must lie in [0, {levels - 1}] for num_bits={num_bits}, "
                         f"got values in [{x.min().item()}, {x.max().item()}]")
    u = noise.rand(x.shape, generator, device=x.device, dtype=dtype)
    return (x.to(dtype) + u) / levels


def bpd_offset(scale: Union[float, Callable[[Tensor], Tensor]] = 2.0, *, num_bits: int = 8) -> float:
    """Per-dimension bits to add to ``-log2 p_y(y) / D`` to report bits/dim of ``num_bits``-bit data.

    ``scale`` is ``a`` in the affine map ``y = a u + b`` from dequantised data ``u = (x + U) / 256`` in
    ``[0, 1)`` to what the model sees, or that map itself (a data scaler, e.g. ``lambda u: 2 * u - 1``).

    Derivation. The discrete probability of ``x`` is the mass of its cell, ``P(x) = int_{[0,1)^D} q(x + w) dw``
    with ``q`` the density of ``x + U``; by Jensen, ``log P(x) >= E_U[log q(x + U)]``. Changing variables
    ``x + U = 256 u`` and ``u = (y - b) / a`` gives ``q(x + U) = p_u(u) / 256^D = p_y(y) a^D / 256^D``, so

        -log2 P(x) / D <= E_U[-log2 p_y(y) / D] - log2(a) + log2(256),

    i.e. ``offset = num_bits - log2(a)``: 8 for data in ``[0, 1]`` (``a = 1``) and 7 for data centred to
    ``[-1, 1]`` (``a = 2``), the 7 that the paper's code adds for centred data.
    """
    if callable(scale):
        u = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
        y = torch.as_tensor(scale(u), dtype=torch.float64)
        if y.shape != u.shape or not math.isclose(float(y[1]), float(y[0] + y[2]) / 2, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError("scale must be a number or an affine data scaler u -> a * u + b")
        scale = float(y[2] - y[0])
    if not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
        raise ValueError(f"scale must be a positive finite number (the slope a of y = a u + b), got {scale!r}")
    if not isinstance(num_bits, int) or num_bits < 1:
        raise ValueError(f"num_bits must be a positive integer, got {num_bits!r}")
    return num_bits - math.log2(scale)


__all__ = ["get_likelihood_fn", "LikelihoodFn", "hutchinson_divergence", "exact_divergence",
           "hutchinson_noise", "uniform_dequantize", "bpd_offset", "HUTCHINSON_TYPES", "ODE_METHODS"]
