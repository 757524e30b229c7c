"""Linear observations ``y = A x_0 + noise_std n``, ``n ~ N(0, I)``, of a sample ``x_0`` ``[B, ...]``.

Each observation knows its operator ``A`` (:meth:`~Observation.forward`), the adjoint ``A^T``, the
pseudo-inverse ``A^+``, solves with ``a A A^T + b I`` (what Pi-GDM and the SMC twist need), and its
likelihood ``log p(y | x_0)``. They live in the space the score network sees (after the data scaler).

- :class:`Inpainting` observes the pixels where ``mask`` is 1.
- :class:`Colorization` observes the grey image, the channel mean (the paper's App. I.2 decouples it from
  colour with an orthogonal colour transform; see :meth:`Colorization.project`).
- :class:`SuperResolution` observes ``factor x factor`` average pooling.
- :class:`LinearObservation` takes any ``A``: a ``[M, D]`` matrix acting on flattened samples, or a pair of
  callables ``(forward, adjoint)``.

``project(x, y) = x + A^+ (y - A x)`` is the replacement step of the paper's inpainting and colourisation
(App. I): it keeps what ``x`` says outside the observed subspace and puts ``y`` on it.
"""
import abc
import copy
import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from ..utils import batch_broadcast, flat_sum, randn_like

Tensor = torch.Tensor


def _check_tensor(value, name: str, min_dim: int = 2) -> Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have shape [B, ...] (at least {min_dim} dimensions), got {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} has non-finite values")
    return value


def _check_noise_std(noise_std) -> float:
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not 0 <= noise_std < math.inf:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    return float(noise_std)


class Observation(abc.ABC):
    """A measurement ``y = A x_0 + noise_std n`` of a batch of samples; ``y`` is ``[B, ...]``.

    Subclasses implement :meth:`forward`, :meth:`adjoint`, :meth:`pinv`, :meth:`gram_solve` and
    :meth:`check_samples`, and list in ``_batched`` the tensor attributes whose first dimension is the batch
    (so :meth:`repeat_interleave` can copy them for particles).
    """

    _batched: Tuple[str, ...] = ("y",)

    def __init__(self, y: Tensor, noise_std: float = 0.0):
        self.y = y
        self.noise_std = _check_noise_std(noise_std)

    @property
    def batch_size(self) -> int:
        return self.y.shape[0]

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``A x``: samples ``[B, ...]`` -> measurements shaped like ``y``."""

    @abc.abstractmethod
    def adjoint(self, v: Tensor) -> Tensor:
        """``A^T v``: measurements -> sample space."""

    @abc.abstractmethod
    def pinv(self, v: Tensor) -> Tensor:
        """``A^+ v``, the least-norm ``x`` with ``A x = v`` (for ``v`` in the range of ``A``)."""

    @abc.abstractmethod
    def gram_solve(self, v: Tensor, a: Tensor, b: float) -> Tensor:
        """``(a A A^T + b I)^{-1} v`` for ``v`` shaped like ``y``; ``a`` is ``[B]`` (>= 0), ``b >= 0``.
        Where ``a A A^T + b I`` is singular the result is taken on the range of ``A`` (zero elsewhere)."""

    @abc.abstractmethod
    def check_samples(self, shape: Sequence[int]) -> None:
        """``ValueError`` naming the observation unless samples of ``shape`` can be observed."""

    def project(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """``x + A^+ (y - A x)``: ``x`` with its observed part replaced by ``y`` (default ``self.y``)."""
        y = self.y if y is None else y
        return x + self.pinv(y.to(x.dtype) - self.forward(x))

    def residual(self, x0: Tensor) -> Tensor:
        """``y - A x_0``, shaped like ``y``."""
        return self.y.to(x0.dtype) - self.forward(x0)

    def num_observed(self) -> int:
        """The number of measured values per sample (``M``)."""
        return self.y[0].numel()

    def log_likelihood(self, x0: Tensor) -> Tensor:
        """``log p(y | x_0) = log N(y; A x_0, noise_std^2 I)``, ``[B]``. Needs ``noise_std > 0``."""
        if self.noise_std <= 0:
            raise ValueError(f"{type(self).__name__} with noise_std=0 has no likelihood density (y is a "
                             "deterministic function of x_0); give noise_std > 0")
        s2 = self.noise_std ** 2
        return -0.5 * flat_sum(self.residual(x0) ** 2) / s2 - 0.5 * self.num_observed() * math.log(2 * math.pi * s2)

    def noised(self, x_like: Tensor, alpha: Tensor, sigma: Tensor,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """A draw of ``A x_t`` for ``x_t = alpha x_0 + sigma z`` given ``A x_0 = y``: ``alpha y + sigma A z``
        (``alpha``, ``sigma``: ``[B]``; ``z`` drawn like ``x_like`` from ``generator``)."""
        z = randn_like(x_like, generator)
        y = self.y.to(x_like.dtype)
        return batch_broadcast(alpha, y) * y + batch_broadcast(sigma, y) * self.forward(z)

    def repeat_interleave(self, k: int) -> "Observation":
        """The same observation of ``k`` copies of every sample (rows ``b k, ..., b k + k - 1`` observe row
        ``b``): what a sampler with ``k`` particles per output row needs."""
        out = copy.copy(self)
        batch = self.batch_size
        for name in self._batched:
            value = getattr(self, name)
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
                setattr(out, name, value.repeat_interleave(k, dim=0))
        return out

    def _check_batch_and_rest(self, shape, expected_rest, what: str) -> None:
        shape = tuple(shape)
        if shape[0] != self.batch_size or tuple(shape[1:]) != tuple(expected_rest):
            raise ValueError(f"{type(self).__name__}: {what} of shape {tuple(self.y.shape)} needs samples of "
                             f"shape {(self.batch_size, *expected_rest)}, but the sampler draws {shape}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(y={tuple(self.y.shape)}, noise_std={self.noise_std})"


class Inpainting(Observation):
    """The pixels where ``mask`` is 1: ``A x = mask * x`` (the unobserved entries of ``y`` are ignored).

    ``y`` is shaped like the samples ``[B, ...]``; ``mask`` holds 0/1 and broadcasts to ``y``.
    """

    _batched = ("y", "mask")

    def __init__(self, y: Tensor, mask: Tensor, noise_std: float = 0.0):
        _check_tensor(y, "y")
        if not torch.is_tensor(mask):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        try:
            torch.broadcast_shapes(mask.shape, y.shape)
            if torch.broadcast_shapes(mask.shape, y.shape) != y.shape:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to y of shape "
                             f"{tuple(y.shape)}") from None
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold only 0 (unobserved) and 1 (observed)")
        super().__init__(y, noise_std)
        self.mask = mask.to(device=y.device, dtype=y.dtype)
        self._num_observed = int(torch.broadcast_to(self.mask, y.shape)[0].sum()) if y.shape[0] else 0

    def forward(self, x):
        return self.mask.to(x.dtype) * x

    def adjoint(self, v):
        return self.mask.to(v.dtype) * v

    def pinv(self, v):
        return self.mask.to(v.dtype) * v

    def residual(self, x0):
        return self.mask.to(x0.dtype) * (self.y.to(x0.dtype) - x0)

    def gram_solve(self, v, a, b):
        denom = batch_broadcast(a, v) + b
        return self.mask.to(v.dtype) * v / torch.where(denom > 0, denom, torch.ones_like(denom))

    def num_observed(self) -> int:
        return self._num_observed

    def check_samples(self, shape):
        self._check_batch_and_rest(shape, self.y.shape[1:], "y")


class Colorization(Observation):
    """The grey image ``gray = mean over channels of x``, ``[B, 1, H, W]``, of colour samples ``[B, C, H, W]``
    (``C = 3`` for RGB).

    The paper (App. I.2) maps colours with an orthogonal ``C x C`` matrix ``M`` whose first column is
    ``(1, ..., 1) / sqrt(C)``, so that the first decoupled channel is ``sqrt(C) gray`` and the others carry
    colour only; replacement sets that channel. :meth:`project` does exactly that, which equals
    ``x + A^+ (gray - A x)`` (``A^+ v`` repeats ``v`` over the channels).
    """

    def __init__(self, gray: Tensor, noise_std: float = 0.0, num_channels: int = 3):
        _check_tensor(gray, "gray", min_dim=4)
        if gray.dim() != 4 or gray.shape[1] != 1:
            raise ValueError(f"gray must have shape [B, 1, H, W], got {tuple(gray.shape)}")
        if not isinstance(num_channels, int) or num_channels < 2:
            raise ValueError(f"num_channels must be an integer >= 2, got {num_channels!r}")
        super().__init__(gray, noise_std)
        self.num_channels = num_channels
        self.M = self.decoupling_matrix(num_channels).to(device=gray.device)

    @staticmethod
    def decoupling_matrix(c: int) -> Tensor:
        """An orthogonal ``c x c`` float64 matrix whose first column is ``(1, ..., 1) / sqrt(c)``."""
        basis = torch.eye(c, dtype=torch.float64)
        basis[:, 0] = 1.0
        q, r = torch.linalg.qr(basis)
        return q * torch.sign(r.diagonal())  # first column positive

    def decouple(self, x: Tensor) -> Tensor:
        return torch.einsum("bihw,ij->bjhw", x, self.M.to(x.dtype))

    def couple(self, z: Tensor) -> Tensor:
        return torch.einsum("bjhw,ij->bihw", z, self.M.to(z.dtype))

    def forward(self, x):
        return x.mean(dim=1, keepdim=True)

    def adjoint(self, v):
        return v.expand(-1, self.num_channels, -1, -1) / self.num_channels

    def pinv(self, v):
        return v.expand(-1, self.num_channels, -1, -1)

    def project(self, x, y=None):
        y = self.y if y is None else y
        z = self.decouple(x)
        luminance = math.sqrt(self.num_channels) * y.to(x.dtype)
        return self.couple(torch.cat([luminance, z[:, 1:]], dim=1))

    def gram_solve(self, v, a, b):
        denom = batch_broadcast(a, v) / self.num_channels + b   # A A^T = I / C
        return v / torch.where(denom > 0, denom, torch.ones_like(denom))

    def check_samples(self, shape):
        self._check_batch_and_rest(shape, (self.num_channels, *self.y.shape[2:]), "gray")


class SuperResolution(Observation):
    """``factor x factor`` average pooling: ``y_low`` ``[B, C, H / factor, W / factor]`` of samples
    ``[B, C, H, W]``. ``A A^T = I / factor^2``, so ``A^+ v`` is the nearest-neighbour enlargement of ``v``."""

    def __init__(self, y_low: Tensor, factor: int, noise_std: float = 0.0):
        _check_tensor(y_low, "y_low", min_dim=4)
        if y_low.dim() != 4:
            raise ValueError(f"y_low must have shape [B, C, h, w], got {tuple(y_low.shape)}")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        super().__init__(y_low, noise_std)
        self.factor = factor

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, self.factor)

    def pinv(self, v):
        return v.repeat_interleave(self.factor, dim=2).repeat_interleave(self.factor, dim=3)

    def adjoint(self, v):
        return self.pinv(v) / self.factor ** 2

    def gram_solve(self, v, a, b):
        denom = batch_broadcast(a, v) / self.factor ** 2 + b
        return v / torch.where(denom > 0, denom, torch.ones_like(denom))

    def check_samples(self, shape):
        c, h, w = self.y.shape[1:]
        self._check_batch_and_rest(shape, (c, h * self.factor, w * self.factor), "y_low")


Operator = Union[Tensor, Tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]]


class LinearObservation(Observation):
    """``y = A x_0 + noise_std n`` with ``y`` ``[B, M]`` and ``A`` a ``[M, D]`` matrix acting on the flattened
    samples, or a pair ``(forward, adjoint)`` of callables ``[B, ...] -> [B, M]`` and ``[B, M] -> [B, ...]``.

    With a matrix, ``A^+`` and the solves with ``a A A^T + b I`` use the eigendecomposition of ``A A^T``
    (eigenvalues below ``rcond`` times the largest count as zero); with callables they use conjugate
    gradients (``cg_iters`` iterations at most, ``cg_tol`` relative residual).
    """

    def __init__(self, A: Operator, y: Tensor, noise_std: float, *, rcond: float = 1e-10,
                 cg_iters: int = 100, cg_tol: float = 1e-8):
        _check_tensor(y, "y")
        if y.dim() != 2:
            raise ValueError(f"y must have shape [B, M], got {tuple(y.shape)}")
        super().__init__(y, noise_std)
        self.cg_iters, self.cg_tol = int(cg_iters), float(cg_tol)
        if torch.is_tensor(A):
            if A.dim() != 2 or A.shape[0] != y.shape[1] or not A.is_floating_point():
                raise ValueError(f"A must be a floating-point [M, D] matrix with M = {y.shape[1]} (the width "
                                 f"of y), got {A.dtype} {tuple(A.shape)}")
            self.A = A.to(device=y.device)
            evals, U = torch.linalg.eigh(self.A.double() @ self.A.double().T)
            keep = evals > rcond * evals.max().clamp_min(0)
            self._evals = torch.where(keep, evals, torch.zeros_like(evals))
            self._U = U
            self._keep = keep
            self._forward = self._adjoint = None
        elif isinstance(A, (tuple, list)) and len(A) == 2 and all(callable(f) for f in A):
            self.A = None
            self._forward, self._adjoint = A
        else:
            raise TypeError("A must be a [M, D] tensor or a pair of callables (forward, adjoint)")

    @property
    def dim(self) -> Optional[int]:
        return None if self.A is None else self.A.shape[1]

    def forward(self, x):
        if self.A is None:
            return self._forward(x)
        return x.reshape(x.shape[0], -1) @ self.A.to(x.dtype).T

    def adjoint(self, v):
        if self.A is None:
            return self._adjoint(v)
        return v @ self.A.to(v.dtype)

    def _eig_apply(self, v: Tensor, scale: Tensor) -> Tensor:
        """``U diag(scale) U^T v`` with ``scale`` ``[B, M]`` (or ``[M]``), in float64."""
        U = self._U.to(v.device)
        return ((v.double() @ U) * scale) @ U.T

    def pinv(self, v):
        if self.A is None:
            return self._adjoint(self._cg(v, lambda u: self._forward(self._adjoint(u))))
        inv = torch.where(self._keep, 1.0 / torch.where(self._keep, self._evals, torch.ones_like(self._evals)),
                          torch.zeros_like(self._evals)).to(v.device)
        return self.adjoint(self._eig_apply(v, inv).to(v.dtype))

    def gram_solve(self, v, a, b):
        a = a.to(device=v.device, dtype=torch.float64)
        if self.A is None:
            return self._cg(v, lambda u: a.to(u.dtype)[:, None] * self._forward(self._adjoint(u)) + b * u)
        denom = a[:, None] * self._evals.to(v.device) + b
        inv = torch.where(denom > 0, 1.0 / torch.where(denom > 0, denom, torch.ones_like(denom)),
                          torch.zeros_like(denom))
        return self._eig_apply(v, inv).to(v.dtype)

    def _cg(self, v: Tensor, apply: Callable[[Tensor], Tensor]) -> Tensor:
        """Solve ``apply(u) = v`` row by row (``apply`` symmetric positive semi-definite) by conjugate gradients."""
        u = torch.zeros_like(v)
        r = v.clone()
        p = r.clone()
        rr = (r * r).sum(dim=1)
        stop = self.cg_tol ** 2 * rr.clamp_min(torch.finfo(v.dtype).tiny)
        for _ in range(self.cg_iters):
            if bool((rr <= stop).all()):
                break
            Ap = apply(p)
            pAp = (p * Ap).sum(dim=1)
            step = torch.where(rr > stop, rr / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), torch.zeros_like(rr))
            u = u + step[:, None] * p
            r = r - step[:, None] * Ap
            rr_new = (r * r).sum(dim=1)
            p = r + (rr_new / rr.clamp_min(torch.finfo(v.dtype).tiny))[:, None] * p
            rr = rr_new
        return u

    def check_samples(self, shape):
        shape = tuple(shape)
        if shape[0] != self.batch_size:
            raise ValueError(f"LinearObservation: y has {self.batch_size} rows, but the sampler draws {shape[0]} "
                             "samples")
        if self.A is not None and math.prod(shape[1:]) != self.A.shape[1]:
            raise ValueError(f"LinearObservation: A is {tuple(self.A.shape)}, so samples must have "
                             f"{self.A.shape[1]} values each; the sampler draws {shape}")


__all__ = ["Observation", "Inpainting", "Colorization", "SuperResolution", "LinearObservation"]
