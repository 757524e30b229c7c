"""FID, KID and Inception Score from Inception features, in float64 (numpy; torch for the linear algebra)."""
from typing import Optional, Tuple

import numpy as np
import torch


def _cholesky_with_jitter(s: torch.Tensor) -> Optional[torch.Tensor]:
    """Lower Cholesky factor of the PSD matrix ``s``; for a singular ``s`` (e.g. fewer samples than
    dimensions) of ``s + delta I`` with ``delta`` at round-off level, grown tenfold until it succeeds."""
    d = s.shape[0]
    delta = d * torch.finfo(s.dtype).eps * float(s.diagonal().abs().max().clamp_min(1e-300))
    for k in range(8):
        jitter = 0.0 if k == 0 else delta * 10 ** (k - 1)
        factor, info = torch.linalg.cholesky_ex(s + jitter * torch.eye(d, dtype=s.dtype))
        if int(info) == 0:
            return factor
    return None


def trace_sqrt_product(sigma1, sigma2) -> float:
    """``tr((sigma1 sigma2)^{1/2})`` for symmetric PSD ``sigma1``, ``sigma2`` ``[D, D]``, in float64.

    With ``sigma1 = L L^T`` (Cholesky), ``sigma1 sigma2`` is similar to the symmetric PSD
    ``M = L^T sigma2 L``, so the trace is ``sum_i sqrt(lambda_i(M))``: no complex square root, no
    ``sqrtm``. Eigenvalues of ``M`` below its round-off level (``D eps lambda_max``) are taken as 0.
    """
    s1 = torch.as_tensor(np.asarray(sigma1, np.float64))
    s2 = torch.as_tensor(np.asarray(sigma2, np.float64))
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    factor = _cholesky_with_jitter(s1)
    if factor is None:
        raise ValueError("covariance is not positive semi-definite (Cholesky failed even with jitter); "
                         "it holds NaN/inf or is not a covariance")
    ev = torch.linalg.eigvalsh(factor.T @ s2 @ factor)
    tol = s1.shape[0] * torch.finfo(ev.dtype).eps * float(ev.abs().max())
    return float(torch.where(ev > tol, ev, torch.zeros_like(ev)).sqrt().sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2):

        d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2}),

    in float64, the last term in the eigenvalue form of ``trace_sqrt_product`` (the same value as
    ``scipy.linalg.sqrtm`` where that is well-conditioned, and stable for singular covariances).
    Shapes: ``mu [D]``, ``sigma [D, D]``.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"expected mu [D] and sigma [D, D] of one D, got mu1 {mu1.shape}, sigma1 {s1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {s2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel ``k(a, b) = (a.b / D + 1)^3`` between ``x [m, D]`` and ``y [n, D]``:
    mean of k over distinct pairs within x, plus within y, minus twice the mean over x-y pairs."""
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kernel_inception_distance(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
                              seed: Optional[int] = 0) -> Tuple[float, float]:
    """KID (Bińkowski et al., 2018): the unbiased polynomial-kernel MMD^2 averaged over
    ``num_subsets`` random subsets of ``min(subset_size, N1, N2)`` rows drawn without replacement from
    each set. Returns ``(mean, std over subsets)``. Features ``[N, D]``; ``seed`` fixes the subsets."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"expected features [N1, D] and [N2, D], got {f1.shape} and {f2.shape}")
    size = min(subset_size, f1.shape[0], f2.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {f1.shape[0]} and {f2.shape[0]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2_unbiased(f1[rng.choice(f1.shape[0], size, replace=False)],
                                       f2[rng.choice(f2.shape[0], size, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits, splits: int = 10) -> Tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) from logits ``[N, C]`` (softmax over the C classes).

    The N rows are cut into ``splits`` consecutive parts of ``N // splits`` rows (the remainder is
    dropped, as in the reference code of Salimans et al.); p(y) is the mean prediction of each part.
    Returns ``(mean, std over parts)``. Bounds: 1 <= IS <= C.
    """
    if logits is None:
        raise ValueError("no logits: the Inception Score needs the 1008-class head of the network, "
                         "which the loaded weights lack (see InceptionFeatureExtractor.logits_unavailable_reason)")
    z = np.asarray(logits, np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected logits [N, C], got shape {z.shape}")
    if splits < 1 or z.shape[0] < splits:
        raise ValueError(f"need 1 <= splits <= N, got splits={splits} for N={z.shape[0]}")
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    part = z.shape[0] // splits
    scores = []
    for k in range(splits):
        lp = log_p[k * part:(k + 1) * part]
        p = np.exp(lp)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_py = np.log(p.mean(axis=0))
            # 0 log 0 = 0: where p(y|x) underflows to 0 its term vanishes, whatever log p(y) is
            kl = np.where(p > 0, p * (lp - log_py), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
