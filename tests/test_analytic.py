"""The closed-form ground truth that the other tests rely on, checked against autograd and a tight ODE solve."""
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from scoresde import sde_lib
from scoresde.analytic import Gaussian, GaussianMixture

SDES = [sde_lib.VPSDE(), sde_lib.subVPSDE(), sde_lib.VESDE()]


def rotated_gaussian(D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = A @ A.T / D + 0.1 * torch.eye(D, dtype=torch.float64)
    return Gaussian.from_covariance(torch.randn(D, generator=g, dtype=torch.float64), cov), cov


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_scores_are_gradients_of_log_prob(sde):
    gauss, _ = rotated_gaussian()
    mix = GaussianMixture([0.3, 0.7], torch.randn(2, 4, dtype=torch.float64), torch.tensor([[0.5], [0.2]]))
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(5, dtype=torch.float64)
    for dist in (gauss, mix):
        grad, = torch.autograd.grad(dist.log_prob(sde, x, t).sum(), x)
        torch.testing.assert_close(dist.score(sde, x.detach(), t), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_flow_map_solves_the_probability_flow_ode(sde):
    gauss, _ = rotated_gaussian()
    x0 = gauss.sample(3, torch.Generator().manual_seed(1))
    drift = sde.reverse(gauss.score_fn(sde), probability_flow=True)

    def f(t, y):
        x = torch.from_numpy(y).reshape(3, -1)
        return drift.sde(x, torch.full((3,), t, dtype=torch.float64))[0].reshape(-1).numpy()

    sol = solve_ivp(f, (1e-3, 1.0), x0.reshape(-1).numpy(), rtol=1e-11, atol=1e-11, method="DOP853")
    exact = gauss.flow_map(sde, x0, 1e-3, 1.0).reshape(-1).numpy()
    np.testing.assert_allclose(sol.y[:, -1], exact, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_marginal_matches_sampled_data_pushed_through_the_kernel(sde):
    gauss, cov = rotated_gaussian()
    t = torch.full((1,), 0.3, dtype=torch.float64)
    alpha, sigma = sde.marginal_coeffs(t)
    x0 = gauss.sample(200_000, torch.Generator().manual_seed(2))
    xt = alpha * x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = alpha ** 2 * cov + sigma ** 2 * torch.eye(4, dtype=torch.float64)
    scale = expected.diagonal().max()
    torch.testing.assert_close(torch.cov(xt.T) / scale, expected / scale, atol=0.02, rtol=0)


def test_ode_log_likelihood_is_log_prob_when_the_prior_is_exact():
    """For VE with data N(0, s^2 I), p_T = N(0, s^2 + sigma_max^2) differs from the prior only by s^2:
    with s tiny both agree, so the ODE likelihood must equal log p_eps."""
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0)
    gauss = Gaussian.diagonal(torch.zeros(6), torch.full((6,), 1e-6))
    x = torch.randn(4, 6, dtype=torch.float64) * 0.01
    eps = 1e-5
    exact = gauss.ode_log_likelihood(sde, x, eps)
    torch.testing.assert_close(exact, gauss.log_prob(sde, x, torch.full((4,), eps, dtype=torch.float64)),
                               rtol=1e-9, atol=1e-9)


def test_bad_arguments():
    with pytest.raises(ValueError, match="eigvals"):
        Gaussian(torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match="positive"):
        Gaussian(torch.zeros(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.5, -0.5], torch.zeros(2, 2), torch.ones(2))
