"""Closed-form ground truth: Gaussian data and Gaussian mixtures pushed through a linear SDE.

For data ``x_0 ~ N(mu, Sigma)`` and a kernel ``x_t = alpha(t) x_0 + sigma(t) z``, every marginal is
``p_t = N(alpha mu, C(t))`` with ``C(t) = alpha^2 Sigma + sigma^2 I``. All ``C(t)`` share the eigenvectors
``U`` of ``Sigma``, so the probability-flow ODE maps ``x_s`` to
``x_t = alpha(t) mu + C(t)^{1/2} C(s)^{-1/2} (x_s - alpha(s) mu)`` exactly, and the likelihood that the ODE
method computes (prior at ``T``, change of variables down to ``eps``) is known exactly too.
For a mixture each component moves the same way, and the marginal score is a softmax-weighted sum.

Posteriors: with linear measurements ``y = A x_0 + s n`` a Gaussian prior has a Gaussian posterior, and a
mixture prior a mixture posterior (:func:`linear_gaussian_posterior`, :meth:`Gaussian.posterior`,
:meth:`GaussianMixture.posterior`); the responsibilities ``p_t(k | x_t)`` of a mixture are its exact
noise-conditional classifier (:meth:`GaussianMixture.responsibilities`, :meth:`GaussianMixture.component`).

Data are ``[B, ...]`` with ``D = prod(...)`` flattened; these classes are for tests and benchmarks,
and for users who want to check a solver of their own.
"""
import math
from typing import Optional, Sequence

import torch

from .sde_lib import SDE

Tensor = torch.Tensor


def linear_gaussian_posterior(mean: Tensor, cov: Tensor, A: Tensor, y: Tensor, noise_std: float):
    """Prior ``N(mean, cov)`` (``[D]``, ``[D, D]``) and ``y = A x + noise_std n`` (``A`` ``[M, D]``, ``y`` ``[B, M]``):
    the posterior means ``[B, D]``, its covariance ``[D, D]`` and the evidence ``log p(y)`` ``[B]``, float64:
    ``S = A cov A^T + s^2 I``, ``m = mean + cov A^T S^{-1} (y - A mean)``, ``C = cov - cov A^T S^{-1} A cov``."""
    mean, cov, A, y = (v.to(torch.float64) for v in (mean, cov, A, y))
    S = A @ cov @ A.T + noise_std ** 2 * torch.eye(A.shape[0], dtype=torch.float64)
    L = torch.linalg.cholesky(S)
    gain = torch.cholesky_solve(A @ cov, L).T                 # cov A^T S^{-1}, [D, M]
    resid = y - mean @ A.T                                    # [B, M]
    means = mean + resid @ gain.T
    post_cov = cov - gain @ A @ cov
    white = torch.linalg.solve_triangular(L, resid.T, upper=False).T
    log_evidence = -0.5 * (white ** 2).sum(1) - torch.log(L.diagonal()).sum() - 0.5 * A.shape[0] * math.log(2 * math.pi)
    return means, 0.5 * (post_cov + post_cov.T), log_evidence


class Gaussian:
    """``N(mean, U diag(eigvals) U^T)`` on ``event_shape``; ``U=None`` means axis-aligned (diagonal)."""

    def __init__(self, mean: Tensor, eigvals: Tensor, U: Optional[Tensor] = None):
        self.event_shape = tuple(mean.shape)
        self.mean = mean.reshape(-1).to(torch.float64)
        self.eigvals = eigvals.reshape(-1).to(torch.float64)
        if self.eigvals.shape != self.mean.shape:
            raise ValueError(f"eigvals must have {self.mean.numel()} entries, got {self.eigvals.numel()}")
        if (self.eigvals <= 0).any():
            raise ValueError("eigvals must be positive")
        self.U = None if U is None else U.to(torch.float64)

    @classmethod
    def diagonal(cls, mean: Tensor, std: Tensor) -> "Gaussian":
        return cls(mean, std.reshape(-1).to(torch.float64) ** 2)

    @classmethod
    def from_covariance(cls, mean: Tensor, cov: Tensor) -> "Gaussian":
        eigvals, U = torch.linalg.eigh(cov.to(torch.float64))
        return cls(mean, eigvals, U)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    # -- coordinates: y = U^T (x - m) in the eigenbasis --------------------------------------
    def _to_eig(self, v: Tensor) -> Tensor:
        return v if self.U is None else v @ self.U.to(v.device)

    def _from_eig(self, v: Tensor) -> Tensor:
        return v if self.U is None else v @ self.U.to(v.device).T

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def _cov_eig(self, sde: SDE, t: Tensor):
        """``alpha(t)`` ``[B]`` and the eigenvalues of ``C(t)``, ``[B, D]``."""
        alpha, sigma = sde.marginal_coeffs(t)
        return alpha, alpha[:, None] ** 2 * self.eigvals.to(t.device) + sigma[:, None] ** 2

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.mean + self._from_eig(z * self.eigvals.sqrt())).reshape(n, *self.event_shape)

    def log_prob(self, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        """``log p_t(x)``, float64 ``[B]``."""
        alpha, cov = self._cov_eig(sde, t.cpu())
        y = self._to_eig(self._flat(x).cpu() - alpha[:, None] * self.mean)
        return -0.5 * (y ** 2 / cov + torch.log(2 * math.pi * cov)).sum(dim=1)

    def score(self, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        """``grad_x log p_t(x)``, shaped and typed like ``x``."""
        alpha, cov = self._cov_eig(sde, t.to(x.device))
        y = self._to_eig(self._flat(x) - alpha[:, None] * self.mean.to(x.device))
        return self._from_eig(-y / cov).reshape(x.shape).to(x.dtype)

    def score_fn(self, sde: SDE):
        """The exact ``score_fn(x, t)`` of every marginal of ``sde`` started from this distribution."""
        return lambda x, t: self.score(sde, x, t)

    @property
    def covariance(self) -> Tensor:
        """``[D, D]`` float64."""
        if self.U is None:
            return torch.diag(self.eigvals)
        return self.U @ torch.diag(self.eigvals) @ self.U.T

    def posterior(self, A: Tensor, y: Tensor, noise_std: float):
        """Exact posterior of ``x_0`` given ``y = A x_0 + noise_std n`` (``A`` ``[M, D]`` on flattened samples,
        ``y`` ``[B, M]``): means ``[B, D]`` and the shared covariance ``[D, D]``, float64."""
        means, cov, _ = linear_gaussian_posterior(self.mean, self.covariance, A, y, noise_std)
        return means, cov

    def flow_map(self, sde: SDE, x: Tensor, s: float, t: float) -> Tensor:
        """Exact solution at time ``t`` of the probability-flow ODE started from ``x`` at time ``s``."""
        B = x.shape[0]
        ts = torch.full((B,), float(s), dtype=torch.float64)
        tt = torch.full((B,), float(t), dtype=torch.float64)
        a_s, c_s = self._cov_eig(sde, ts)
        a_t, c_t = self._cov_eig(sde, tt)
        y = self._to_eig(self._flat(x).cpu() - a_s[:, None] * self.mean)
        out = a_t[:, None] * self.mean + self._from_eig(y * torch.sqrt(c_t / c_s))
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def ode_log_likelihood(self, sde: SDE, x: Tensor, eps: float) -> Tensor:
        """The exact value of what the probability-flow likelihood computes at ``x`` (time ``eps``):
        ``log p_T^{prior}(z) + log |det dz/dx|`` with ``z`` the exact flow of ``x`` to ``T``. Float64 ``[B]``."""
        z = self.flow_map(sde, x.to(torch.float64), eps, sde.T)
        B = x.shape[0]
        _, c_eps = self._cov_eig(sde, torch.full((B,), float(eps), dtype=torch.float64))
        _, c_T = self._cov_eig(sde, torch.full((B,), float(sde.T), dtype=torch.float64))
        logdet = 0.5 * (torch.log(c_T) - torch.log(c_eps)).sum(dim=1)
        return sde.prior_logp(z) + logdet


class GaussianMixture:
    """``sum_k w_k N(mean_k, diag(std_k^2))`` on ``event_shape``: exact scores for every marginal."""

    def __init__(self, weights: Sequence[float], means: Tensor, stds: Tensor):
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.dim() != 1 or (w <= 0).any():
            raise ValueError("weights must be a positive vector")
        self.weights = w / w.sum()
        K = w.numel()
        self.event_shape = tuple(means.shape[1:])
        self.means = means.reshape(K, -1).to(torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        self.vars = (stds.reshape(K, -1) * torch.ones_like(self.means)) ** 2

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[k] + z * self.vars[k].sqrt()).reshape(n, *self.event_shape)
        return (x, k) if return_labels else x

    def _components(self, sde: SDE, x: Tensor, t: Tensor):
        alpha, sigma = sde.marginal_coeffs(t.to(x.device))
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        m = alpha[:, None, None] * self.means.to(x.device)              # [B, K, D]
        v = alpha[:, None, None] ** 2 * self.vars.to(x.device) + sigma[:, None, None] ** 2
        diff = xf[:, None, :] - m
        logp = -0.5 * (diff ** 2 / v + torch.log(2 * math.pi * v)).sum(-1) + torch.log(self.weights.to(x.device))
        return diff, v, logp

    def log_prob(self, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        return torch.logsumexp(self._components(sde, x, t)[2], dim=1)

    def responsibilities(self, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        """Posterior component probabilities ``[B, K]`` under ``p_t``."""
        return torch.softmax(self._components(sde, x, t)[2], dim=1)

    def score(self, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        diff, v, logp = self._components(sde, x, t)
        r = torch.softmax(logp, dim=1)
        s = (r[:, :, None] * (-diff / v)).sum(1)
        return s.reshape(x.shape).to(x.dtype)

    def score_fn(self, sde: SDE):
        return lambda x, t: self.score(sde, x, t)

    def classifier_fn(self, sde: SDE):
        """The exact noise-conditional classifier: ``classifier_fn(x, t) -> log p_t(k | x)`` ``[B, K]`` (logits)."""
        return lambda x, t: torch.log_softmax(self._components(sde, x, t)[2], dim=1).to(x.dtype)

    def component(self, k: int) -> "GaussianMixture":
        """Component ``k`` alone, as a one-component mixture (its exact scores are ``grad log p_t(x | k)``)."""
        std = self.vars[k].sqrt().reshape(1, *self.event_shape)
        return GaussianMixture([1.0], self.means[k].reshape(1, *self.event_shape), std)

    def posterior(self, A: Tensor, y: Tensor, noise_std: float):
        """Exact posterior of ``x_0`` given ``y = A x_0 + noise_std n``: a mixture with per-row weights ``[B, K]``,
        means ``[B, K, D]`` and covariances ``[K, D, D]`` (float64)."""
        out = [linear_gaussian_posterior(self.means[k], torch.diag(self.vars[k]), A, y, noise_std)
               for k in range(self.weights.numel())]
        means = torch.stack([m for m, _, _ in out], dim=1)
        covs = torch.stack([c for _, c, _ in out])
        log_w = torch.stack([e for _, _, e in out], dim=1) + torch.log(self.weights)
        return torch.softmax(log_w, dim=1), means, covs

