"""The probability-flow likelihood against closed-form Gaussian ground truth, and the bits/dim helpers.

For Gaussian data the Jacobian of the probability-flow drift is ``a(t) I + g(t)^2 / 2 C(t)^{-1}`` (``a`` the
linear drift coefficient, ``d log alpha / dt``), symmetric with the eigenvectors ``U`` of the data covariance, so
its integral from ``eps`` to ``T`` is ``M = U diag(m) U^T`` with ``m_i = log(c_i(T) / c_i(eps)) / 2`` (``c_i`` the
eigenvalues of the marginal covariance). The exact divergence integrates to ``tr M`` (the log-det of
``analytic.ode_log_likelihood``). The estimator takes the linear part exactly and Hutchinson's estimate of the
score part only, so with noise ``v`` it integrates to ``D A + v^T (M - A I) v`` with ``A = log(alpha(T) /
alpha(eps))``, with variance ``2 ||S||_F^2`` (Gaussian ``v``) or ``2 (||S||_F^2 - sum_i S_ii^2)`` (Rademacher
``v``) for ``S = M - A I``: zero for a diagonal covariance with Rademacher noise.
"""
import math

import pytest
import torch

from scoresde import analytic, sde_lib
from scoresde.likelihood import bpd_offset, get_likelihood_fn, hutchinson_noise, uniform_dequantize

EPS = 1e-5
SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}


def bits(log_p, D):
    return -log_p / (D * math.log(2))


class CountingCalls:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def image_gaussian():
    g = torch.Generator().manual_seed(0)
    mean = 0.3 * torch.randn(3, 32, 32, generator=g)
    std = 0.1 + 0.5 * torch.rand(3, 32, 32, generator=g)
    return analytic.Gaussian.diagonal(mean, std)


def rotated_gaussian(D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = A @ A.T / D + 0.05 * torch.eye(D, dtype=torch.float64)
    return analytic.Gaussian.from_covariance(torch.randn(D, generator=g, dtype=torch.float64), cov)


def integrated_jacobians(gauss, sde, eps=EPS):
    """``A = int_eps^T a dt`` (linear drift) and ``S = int_eps^T (d f~/dx - a I) dt`` (score part) for Gaussian
    data (see the module docstring): a float and a ``[D, D]`` float64 matrix."""
    def coeffs(t):
        alpha, sigma = sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
        return alpha, alpha ** 2 * gauss.eigvals + sigma ** 2
    (alpha_T, c_T), (alpha_eps, c_eps) = coeffs(sde.T), coeffs(eps)
    A = torch.log(alpha_T / alpha_eps).item()
    M = gauss.U @ torch.diag(0.5 * torch.log(c_T / c_eps)) @ gauss.U.T
    return A, M - A * torch.eye(gauss.dim, dtype=torch.float64)


def relative_rms(a, b):
    return ((a.double() - b.double()).pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("name", list(SDES))
def test_d3072_diagonal_gaussian_rademacher_matches_exact_likelihood_and_flow(name):
    sde, gauss = SDES[name](), image_gaussian()
    x = gauss.sample(4, torch.Generator().manual_seed(1)).float()
    score = CountingCalls(gauss.score_fn(sde))
    bpd, z, nfe = get_likelihood_fn(sde, hutchinson_type="rademacher", eps=EPS)(
        score, x, generator=torch.Generator().manual_seed(2))
    exact = bits(gauss.ode_log_likelihood(sde, x, EPS), gauss.dim)
    assert bpd.shape == (4,) and bpd.dtype == torch.float64
    # Rademacher noise is exact on a diagonal Jacobian, so every sample (not just the mean) must agree
    assert (bpd - exact).abs().max().item() < 5e-4
    assert z.shape == x.shape and z.dtype == x.dtype
    assert relative_rms(z, gauss.flow_map(sde, x.double(), EPS, sde.T)) < 5e-4
    assert nfe == score.calls > 0


@pytest.mark.parametrize("name", list(SDES))
def test_rotated_gaussian_exact_divergence_matches_exact_likelihood(name):
    sde, gauss = SDES[name](), rotated_gaussian()
    x = gauss.sample(8, torch.Generator().manual_seed(3))
    score = CountingCalls(gauss.score_fn(sde))
    bpd, z, nfe = get_likelihood_fn(sde, hutchinson_type="exact", eps=EPS)(score, x)
    assert (bpd - bits(gauss.ode_log_likelihood(sde, x, EPS), gauss.dim)).abs().max().item() < 5e-4
    assert relative_rms(z, gauss.flow_map(sde, x, EPS, sde.T)) < 5e-4
    assert nfe == score.calls


@pytest.mark.parametrize("method", ["DOP853", "LSODA"])
def test_other_scipy_methods_and_offset(method):
    sde, gauss = sde_lib.VPSDE(), rotated_gaussian()
    x = gauss.sample(4, torch.Generator().manual_seed(4))
    bpd, _, _ = get_likelihood_fn(sde, hutchinson_type="exact", method=method, offset=7.0)(gauss.score_fn(sde), x)
    assert (bpd - 7.0 - bits(gauss.ode_log_likelihood(sde, x, EPS), gauss.dim)).abs().max().item() < 5e-4


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_hutchinson_estimate_is_the_closed_form_of_its_noise(kind, name):
    """With the noise drawn from the generator, the estimate is ``D A + v^T S v`` sample by sample."""
    sde, gauss = SDES[name](), rotated_gaussian()
    x = gauss.sample(16, torch.Generator().manual_seed(5))
    bpd, z, _ = get_likelihood_fn(sde, hutchinson_type=kind)(gauss.score_fn(sde), x,
                                                              generator=torch.Generator().manual_seed(6))
    v = hutchinson_noise(x, kind, torch.Generator().manual_seed(6))
    A, S = integrated_jacobians(gauss, sde)
    estimate = gauss.dim * A + torch.einsum("bi,ij,bj->b", v, S, v)
    expected = bits(sde.prior_logp(gauss.flow_map(sde, x, EPS, sde.T)) + estimate, gauss.dim)
    assert (bpd - expected).abs().max().item() < 5e-4


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_the_closed_form_variance(kind):
    """Over 512 samples the mean error against the exact likelihood is zero within 4 standard errors,
    and the spread matches the closed-form variance of the estimator; Gaussian and Rademacher agree."""
    sde, gauss = sde_lib.VPSDE(), rotated_gaussian()
    B, D = 512, gauss.dim
    x = gauss.sample(B, torch.Generator().manual_seed(7))
    bpd, _, _ = get_likelihood_fn(sde, hutchinson_type=kind)(gauss.score_fn(sde), x,
                                                              generator=torch.Generator().manual_seed(8))
    err_nats = -(bpd - bits(gauss.ode_log_likelihood(sde, x, EPS), D)) * D * math.log(2)   # v^T S v - tr S
    S = integrated_jacobians(gauss, sde)[1]
    var = 2 * (S.pow(2).sum() - (S.diagonal().pow(2).sum() if kind == "rademacher" else 0.0)).item()
    assert abs(err_nats.mean().item()) < 4 * math.sqrt(var / B)
    assert 0.6 < err_nats.var().item() / var < 1.6


def test_generator_reproducibility():
    sde, gauss = sde_lib.VESDE(), rotated_gaussian()
    x = gauss.sample(4, torch.Generator().manual_seed(9))
    likelihood_fn = get_likelihood_fn(sde, hutchinson_type="gaussian")
    runs = [likelihood_fn(gauss.score_fn(sde), x, generator=torch.Generator().manual_seed(s))[0]
            for s in (10, 10, 11)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_any_rank_no_parameter_gradients_and_grad_mode_kept():
    """Data of rank 3; a linear score network gets no ``.grad`` (the VJP is taken w.r.t. x only)."""
    sde = sde_lib.VPSDE()
    net = torch.nn.Linear(6, 6, dtype=torch.float64)
    score = lambda x, t: net(x.reshape(x.shape[0], -1)).reshape(x.shape)  # noqa: E731
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        bpd, z, nfe = get_likelihood_fn(sde, hutchinson_type="exact")(score, x)
    assert bpd.shape == (3,) and z.shape == x.shape and torch.isfinite(bpd).all()
    assert all(p.grad is None for p in net.parameters())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("kwargs, name", [
    ({"hutchinson_type": "normal"}, "hutchinson_type"),
    ({"method": "Euler"}, "method"),
    ({"rtol": 0.0}, "rtol"),
    ({"atol": -1e-5}, "atol"),
    ({"eps": 0.0}, "eps"),
    ({"eps": 1.0}, "eps"),
    ({"offset": float("nan")}, "offset"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        get_likelihood_fn(sde_lib.VPSDE(), **kwargs)


def test_bad_inputs():
    sde = sde_lib.VPSDE()
    likelihood_fn = get_likelihood_fn(sde)
    with pytest.raises(TypeError, match="sde"):
        get_likelihood_fn("vpsde")

    class CubicSDE(sde_lib.VPSDE):
        def sde(self, x, t):
            return -x ** 3, torch.ones_like(t)

    with pytest.raises(ValueError, match="linear"):
        get_likelihood_fn(CubicSDE())(lambda x, t: -x, torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"\[B, \.\.\.\]"):
        likelihood_fn(lambda x, t: -x, torch.randn(5))
    with pytest.raises(ValueError, match=r"\[B, \.\.\.\]"):
        likelihood_fn(lambda x, t: -x, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="shaped like x"):
        likelihood_fn(lambda x, t: x[:, :1], torch.randn(2, 3))
    with pytest.raises(FloatingPointError):
        likelihood_fn(lambda x, t: torch.full_like(x, float("nan")), torch.randn(2, 3))


def test_bpd_offset_hand_values():
    assert bpd_offset(2.0) == 7.0                                   # centred data in [-1, 1]
    assert bpd_offset(1.0) == 8.0                                   # data in [0, 1]
    assert bpd_offset(lambda u: 2 * u - 1) == pytest.approx(7.0)    # a data scaler
    assert bpd_offset(lambda u: u) == pytest.approx(8.0)
    assert bpd_offset(255.0) == pytest.approx(8 - math.log2(255))   # data in [0, 255]
    assert bpd_offset(1.0, num_bits=5) == 5.0
    for bad in (0.0, -2.0, float("inf")):
        with pytest.raises(ValueError, match="scale"):
            bpd_offset(bad)
    with pytest.raises(ValueError, match="affine"):
        bpd_offset(lambda u: u ** 2)
    with pytest.raises(ValueError, match="num_bits"):
        bpd_offset(2.0, num_bits=0)


def test_bpd_offset_is_exact_for_uniform_data():
    """The uniform density on [-1, 1]^D is 2^-D: 1 bit/dim, plus the offset 7, is the 8 bits/dim of uniform
    8-bit data, with equality in the Jensen bound because the density is constant on every cell."""
    D = 3072
    assert bits(torch.tensor(-D * math.log(2.0)), D).item() + bpd_offset(2.0) == pytest.approx(8.0)


def test_uniform_dequantize():
    x = torch.arange(256, dtype=torch.uint8).repeat(40)
    u = uniform_dequantize(x, torch.Generator().manual_seed(0))
    assert u.dtype == torch.float32 and u.shape == x.shape
    lower = x.float() / 256
    assert (u >= lower).all() and (u < lower + 1 / 256).all()
    assert torch.equal(u, uniform_dequantize(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(u, uniform_dequantize(x, torch.Generator().manual_seed(1)))
    assert (u * 256 - x.float()).mean().item() == pytest.approx(0.5, abs=0.02)
    assert uniform_dequantize(torch.tensor([[0.0, 255.0]]), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        uniform_dequantize(torch.tensor([256]))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        uniform_dequantize(torch.tensor([-1]))
    with pytest.raises(ValueError, match="integers"):
        uniform_dequantize(torch.tensor([0.5]))
    with pytest.raises(TypeError):
        uniform_dequantize([1, 2])


@pytest.mark.parametrize("kind", ["rademacher", "exact"])
def test_zero_score_under_ve_is_the_prior(kind):
    """A score that does not depend on x (here 0) is allowed; under VE the flow is then the identity and
    the likelihood is the prior's at x."""
    sde = sde_lib.VESDE()
    x = 3.0 * torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    bpd, z, nfe = get_likelihood_fn(sde, hutchinson_type=kind)(lambda x, t: torch.zeros_like(x), x)
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(bpd, bits(sde.prior_logp(x), 6))


def test_hutchinson_divergence_matches_grad_outputs_form():
    """The vector-Jacobian product taken as the gradient of <F, v> equals autograd's grad_outputs=v exactly."""
    from scoresde.likelihood import hutchinson_divergence
    g = torch.Generator().manual_seed(3)
    x, W = torch.randn(5, 3, 4, generator=g), torch.randn(12, 12, generator=g)
    fn = lambda y, t: torch.tanh(y.reshape(5, 12) @ W).reshape(y.shape) * t[:, None, None]  # noqa: E731
    t, v = torch.rand(5, generator=g), hutchinson_noise(x, "rademacher", g)
    out, div = hutchinson_divergence(fn, x, t, v)
    y = x.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(fn(y, t), y, grad_outputs=v)
    assert torch.equal(out, fn(x, t))
    assert torch.equal(div, torch.linalg.vecdot(vjp.reshape(5, -1), v.reshape(5, -1)))


def test_first_likelihood_call_imports_no_symbolic_shapes():
    """A fresh process's first likelihood call must not pull in torch's symbolic-shapes machinery (sympy), which
    an explicit ``grad_outputs`` does on first use and which cost 0.3-1 s."""
    import subprocess
    import sys
    code = (
        "import sys, torch\n"
        "from scoresde import analytic, sde_lib\n"
        "from scoresde.likelihood import get_likelihood_fn\n"
        "sde = sde_lib.VPSDE()\n"
        "data = analytic.Gaussian.diagonal(torch.zeros(3), torch.ones(3))\n"
        "before = {m for m in ('torch.fx.experimental.symbolic_shapes', 'sympy') if m in sys.modules}\n"
        "get_likelihood_fn(sde)(data.score_fn(sde), torch.randn(4, 3), generator=torch.Generator().manual_seed(0))\n"
        "print(sorted(before), sorted(m for m in ('torch.fx.experimental.symbolic_shapes', 'sympy') "
        "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[] []"
