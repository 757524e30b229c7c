"""The twisted SMC sampler against exact posteriors: a correlated Gaussian prior with noisy random linear
measurements (Gaussian posterior) and a two-component mixture observed on half its coordinates (mixture
posterior). The approximate methods (replacement, DPS, Pi-GDM) are shown biased on the same problems."""
import pytest
import torch

from scoresde import analytic, guidance, sde_lib
from scoresde.guidance.problems import gaussian_linear_problem, mixture_inpainting_problem
from scoresde.sampling import get_sampler

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.slow
def test_smc_converges_to_the_gaussian_posterior():
    B, sde = 2000, sde_lib.VPSDE()
    problem = gaussian_linear_problem(B)
    obs, score = problem.observation, problem.prior.score_fn(sde)
    err, var_ratio = {}, {}
    for K in (1, 4, 16):
        sampler = get_sampler("smc", sde=sde, shape=(B, 4), dtype=F64, particles=K, N=400)
        x, nfe = sampler(score, generator=gen(K), observation=obs)
        assert nfe == 401 and x.shape == (B, 4)
        err[K], var_ratio[K] = problem.standardised_error(x), problem.variance_ratio(x)
    # measured: 15.0, 3.8, 2.5 standard errors; variance ratios 1.05-1.28 (K=1), 0.98-1.00 (K=16)
    assert err[1] > 8 and err[16] < err[1] / 3
    assert err[16] < 3.7                      # the 99th percentile of a chi with 4 degrees of freedom
    assert ((var_ratio[16] - 1).abs() < 0.07).all(), var_ratio[16]
    # the approximations on the same problem (pc, Euler-Maruyama, 200 steps): far outside the noise
    pc = get_sampler("pc", sde=sde, shape=(B, 4), dtype=F64, predictor="euler_maruyama", corrector="none", N=200)
    biased = {"replacement": pc(score, generator=gen(1), observation=obs)[0],
              "dps": pc(guidance.posterior_guidance(score, sde, obs, "dps", scale=0.3), generator=gen(1))[0],
              "pigdm": pc(guidance.posterior_guidance(score, sde, obs, "pigdm"), generator=gen(1))[0]}
    for name, x in biased.items():   # measured: 39, 72, 8 standard errors
        assert problem.standardised_error(x) > 6, name


@pytest.mark.slow
def test_smc_converges_to_the_mixture_posterior():
    B, sde = 2000, sde_lib.VPSDE()
    problem = mixture_inpainting_problem(B)
    exact, obs, score = problem.unknown_mean, problem.observation, problem.prior.score_fn(sde)
    assert abs(exact - 0.3766) < 1e-4
    errors = {}
    for K in (1, 16):
        x, _ = get_sampler("smc", sde=sde, shape=(B, 8), dtype=F64, particles=K, N=100)(score, generator=gen(K),
                                                                                        observation=obs)
        mean, se = problem.estimate(x)
        errors[K] = abs(mean - exact) / se
    # measured: K=1 0.248 (6.8 standard errors off), K=16 0.389 (0.6)
    assert errors[1] > 4 and errors[16] < 3.5, errors
    pc = get_sampler("pc", sde=sde, shape=(B, 8), dtype=F64, predictor="euler_maruyama", corrector="none", N=200)
    for name, x in (("replacement", pc(score, generator=gen(1), observation=obs)[0]),       # measured 0.115
                    ("pigdm", pc(guidance.posterior_guidance(score, sde, obs, "pigdm"), generator=gen(1))[0])):  # 0.248
        mean, se = problem.estimate(x)
        assert exact - mean > 4 * se, name


def test_smc_on_images_returns_one_draw_per_row_and_is_reproducible():
    sde = sde_lib.VPSDE()
    prior = analytic.Gaussian.diagonal(torch.zeros(1, 4, 4), 0.5 * torch.ones(1, 4, 4))
    y = torch.randn(3, 1, 4, 4, generator=gen(0), dtype=F64)
    obs = guidance.Inpainting(y, guidance.half_mask((3, 1, 4, 4)).double(), noise_std=0.05)
    sampler = get_sampler("smc", sde=sde, shape=(3, 1, 4, 4), dtype=F64, particles=5, N=20)
    x, nfe = sampler(prior.score_fn(sde), generator=gen(1), observation=obs)
    assert x.shape == (3, 1, 4, 4) and nfe == 21
    x2, _ = sampler(prior.score_fn(sde), generator=gen(1), observation=obs)
    assert torch.equal(x, x2)
    # observed pixels close to y (posterior with std 0.05 likelihood and a 0.5-variance prior)
    top = obs.mask.bool().expand_as(y)
    assert (x[top] - y[top]).abs().max() < 0.3
    x_init = sde.prior_sampling((15, 1, 4, 4), generator=gen(2), dtype=F64)
    x3, _ = sampler(prior.score_fn(sde), generator=gen(1), observation=obs, x_init=x_init)
    assert x3.shape == (3, 1, 4, 4)


def test_smc_refuses_what_it_cannot_do():
    sde = sde_lib.VPSDE()
    score = lambda x, t: -x  # noqa: E731
    sampler = get_sampler("smc", sde=sde, shape=(2, 3), particles=4, N=10)
    with pytest.raises(ValueError, match="call it with observation="):
        sampler(score)
    noiseless = guidance.Inpainting(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0]]))
    with pytest.raises(ValueError, match="noise_std > 0"):
        sampler(score, observation=noiseless)
    obs = guidance.Inpainting(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0]]), noise_std=0.1)
    with pytest.raises(ValueError, match="x_init of 'smc' holds the starting particles, shape \\[B K, ...\\] = \\(8, 3\\)"):
        sampler(score, observation=obs, x_init=torch.zeros(2, 3))
    for bad in ({"particles": 0}, {"N": 0}, {"twist": "exact"}, {"resample_threshold": 1.5}, {"schedule": "nope"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            get_sampler("smc", sde=sde, shape=(2, 3), **bad)


def test_smc_names_non_finite_weights():
    sde = sde_lib.VPSDE()
    obs = guidance.Inpainting(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0]]), noise_std=0.1)

    def score_fn(x, t):  # finite at first, then NaN
        return torch.where(t[:, None] > 0.5, -x, torch.full_like(x, float("nan")))

    with pytest.raises(FloatingPointError, match="smc: particle weights became non-finite at t="):
        get_sampler("smc", sde=sde, shape=(2, 3), particles=4, N=10)(score_fn, observation=obs)
