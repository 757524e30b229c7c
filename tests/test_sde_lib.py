"""Forward SDEs: moments against the SDE, the DDPM/SMLD discretisations against their papers, reverses, priors."""
import math

import pytest
import torch

from scoresde import sde_lib
from scoresde.sde_lib import VESDE, VPSDE, get_sde, subVPSDE

SDES = {"vp": lambda **kw: VPSDE(**kw), "subvp": lambda **kw: subVPSDE(**kw), "ve": lambda **kw: VESDE(**kw)}


def vec(value, B=3):
    return torch.full((B,), float(value), dtype=torch.float64)


def linear_coefficients(sde, t):
    """``f(t)`` and ``g(t)`` of ``dx = f(t) x dt + g(t) dw``, read off ``sde.sde`` (``[B]`` each)."""
    ones = torch.ones(t.shape[0], 1, dtype=torch.float64)
    drift, g = sde.sde(ones, t)
    return drift[:, 0], g


@pytest.mark.parametrize("name", SDES)
def test_marginal_moments_solve_the_moment_equations(name):
    """For ``x_0 ~ N(0, v0)``: ``d alpha/dt = f alpha`` and the Lyapunov equation ``dV/dt = 2 f V + g^2`` with
    ``V = alpha^2 v0 + sigma^2``, checked by central differences at several times."""
    sde = SDES[name]()
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95], dtype=torch.float64)
    h = 1e-5
    f, g = linear_coefficients(sde, t)
    for v0 in [0.0, 0.3, 2.0]:
        def moments(s):
            alpha, sigma = sde.marginal_coeffs(s)
            return alpha, alpha ** 2 * v0 + sigma ** 2

        (a_plus, V_plus), (a_minus, V_minus), (alpha, V) = moments(t + h), moments(t - h), moments(t)
        torch.testing.assert_close((a_plus - a_minus) / (2 * h), f * alpha, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close((V_plus - V_minus) / (2 * h), 2 * f * V + g ** 2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", SDES)
def test_marginal_prob_uses_marginal_coeffs_on_any_rank(name):
    sde = SDES[name]()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    mean, std = sde.marginal_prob(x, t)
    alpha, sigma = sde.marginal_coeffs(t)
    assert mean.shape == x.shape and std.shape == (3,)
    torch.testing.assert_close(mean, alpha.reshape(3, 1, 1, 1) * x)
    torch.testing.assert_close(std, sigma)


def test_closed_forms_of_the_marginals():
    t = torch.linspace(0.01, 1.0, 7, dtype=torch.float64)
    vp, sub, ve = VPSDE(), subVPSDE(), VESDE()
    a, s = vp.marginal_coeffs(t)
    torch.testing.assert_close(a ** 2 + s ** 2, torch.ones_like(t))                  # variance preserving
    torch.testing.assert_close(a, torch.exp(-0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1))
    a2, s2 = sub.marginal_coeffs(t)
    torch.testing.assert_close(a2, a)
    torch.testing.assert_close(s2, 1 - a ** 2)                                       # sigma_sub = sigma_vp^2
    assert (s2 <= s).all()
    a3, s3 = ve.marginal_coeffs(t)
    torch.testing.assert_close(s3, 0.01 * (50 / 0.01) ** t)
    torch.testing.assert_close(a3, torch.ones_like(t))


def test_ddpm_discretization_is_ho_et_al_eq2():
    """``x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z`` with ``beta_i = b_min/N + i (b_max - b_min) / (N (N-1))``."""
    N = 1000
    sde = VPSDE(beta_min=0.1, beta_max=20.0, N=N)
    i = torch.arange(N, dtype=torch.float64)
    torch.testing.assert_close(sde.discrete_betas, 0.1 / N + i * (20.0 - 0.1) / (N * (N - 1)))
    torch.testing.assert_close(sde.alphas_cumprod, torch.cumprod(1 - sde.discrete_betas, 0))
    torch.testing.assert_close(sde.sqrt_1m_alphas_cumprod ** 2 + sde.sqrt_alphas_cumprod ** 2,
                               torch.ones(N, dtype=torch.float64))
    levels = torch.tensor([0, 1, 499, 998, 999])
    t = levels.double() / (N - 1)
    assert torch.equal(sde.step_index(t), levels)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    f, G = sde.discretize(x, t)
    beta = sde.discrete_betas[levels]
    torch.testing.assert_close(x + f, torch.sqrt(1 - beta).reshape(5, 1, 1) * x)
    torch.testing.assert_close(G, torch.sqrt(beta))


def test_smld_discretization_adds_sigma_i2_minus_sigma_im12():
    """``x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z``, ``sigma_{-1} = 0``, geometric ``sigma_i``."""
    N = 100
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=N)
    ratio = sde.discrete_sigmas[1:] / sde.discrete_sigmas[:-1]
    torch.testing.assert_close(ratio, torch.full_like(ratio, (50 / 0.01) ** (1 / (N - 1))))
    assert sde.discrete_sigmas[0] == pytest.approx(0.01) and sde.discrete_sigmas[-1] == pytest.approx(50.0)
    levels = torch.tensor([0, 1, 50, 99])
    x = torch.randn(4, 3, dtype=torch.float64)
    f, G = sde.discretize(x, levels.double() / (N - 1))
    sigma = sde.discrete_sigmas
    expected = torch.stack([sigma[0], torch.sqrt(sigma[1] ** 2 - sigma[0] ** 2),
                            torch.sqrt(sigma[50] ** 2 - sigma[49] ** 2), torch.sqrt(sigma[99] ** 2 - sigma[98] ** 2)])
    torch.testing.assert_close(G, expected)
    assert torch.equal(f, torch.zeros_like(x))


def test_subvp_discretization_is_euler_maruyama():
    sde = subVPSDE(N=200)
    x, t = torch.randn(3, 2, dtype=torch.float64), vec(0.3)
    drift, g = sde.sde(x, t)
    f, G = sde.discretize(x, t)
    torch.testing.assert_close(f, drift / 200)
    torch.testing.assert_close(G, g * math.sqrt(1 / 200))


@pytest.mark.parametrize("name", SDES)
def test_reverse_drift_and_probability_flow(name):
    sde = SDES[name]()
    x, t = torch.randn(3, 2, 2, dtype=torch.float64), vec(0.4)
    score = lambda x, t: -x * 2.0 + t.reshape(-1, 1, 1)
    drift, g = sde.sde(x, t)
    s = score(x, t)
    rev_drift, rev_g = sde.reverse(score).sde(x, t)
    torch.testing.assert_close(rev_drift, drift - g.reshape(3, 1, 1) ** 2 * s)                 # eq. 6
    torch.testing.assert_close(rev_g, g)
    ode_drift, ode_g = sde.reverse(score, probability_flow=True).sde(x, t)
    torch.testing.assert_close(ode_drift, drift - 0.5 * g.reshape(3, 1, 1) ** 2 * s)          # eq. 13
    assert torch.equal(ode_g, torch.zeros_like(g))
    f, G = sde.discretize(x, t)
    rev_f, rev_G = sde.reverse(score).discretize(x, t)
    torch.testing.assert_close(rev_f, f - G.reshape(3, 1, 1) ** 2 * s)                         # eq. 46
    torch.testing.assert_close(rev_G, G)


@pytest.mark.parametrize("name,scale", [("vp", 1.0), ("subvp", 1.0), ("ve", 50.0)])
def test_prior_logp_matches_torch_distributions(name, scale):
    sde = SDES[name]()
    z = sde.prior_sampling((4, 3, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, scale).log_prob(z).reshape(4, -1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected)
    assert z.std().item() == pytest.approx(scale, rel=0.5)


@pytest.mark.parametrize("name", SDES)
def test_prior_sampling_is_seeded_and_typed(name):
    sde = SDES[name]()
    a = sde.prior_sampling((5, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    b = sde.prior_sampling((5, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(a, b) and a.dtype == torch.float64 and a.shape == (5, 2)


def test_float32_input_keeps_its_dtype():
    for sde in [VPSDE(), subVPSDE(), VESDE()]:
        x, t = torch.randn(2, 3), torch.full((2,), 0.5)
        drift, g = sde.sde(x, t)
        f, G = sde.discretize(x, t)
        mean, std = sde.marginal_prob(x, t)
        assert {drift.dtype, g.dtype, f.dtype, G.dtype, mean.dtype, std.dtype} == {torch.float32}


def test_bad_arguments():
    with pytest.raises(ValueError, match="N must be a positive integer"):
        VPSDE(N=0)
    with pytest.raises(ValueError, match="N must be a positive integer"):
        VESDE(N=2.5)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="unknown sde 'vp'; available: vpsde, subvpsde, vesde"):
        get_sde("vp")
    assert isinstance(get_sde("VESDE", N=10), VESDE)
    sde, x = VPSDE(), torch.zeros(3, 2)
    for bad_t in [torch.zeros(2), torch.zeros(3, 1), torch.tensor(0.5)]:
        with pytest.raises(ValueError, match=r"shape \[B\]"):
            sde.sde(x, bad_t)
        with pytest.raises(ValueError, match=r"shape \[B\]"):
            sde.marginal_prob(x, bad_t)
        with pytest.raises(ValueError, match=r"shape \[B\]"):
            VESDE().discretize(x, bad_t)
    with pytest.raises(TypeError, match="torch.Tensor"):
        sde.sde(x, 0.5)
    with pytest.raises(ValueError, match="shape"):
        sde.prior_sampling((3,))
