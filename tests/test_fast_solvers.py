"""Fast solvers against closed-form truth: exact flow maps, exact NFE, order of convergence, mode weights."""
import math

import pytest
import torch

import scoresde.sampling.fast  # noqa: F401  (registers the solvers until scoresde.sampling imports it)
from scoresde import analytic, sde_lib
from scoresde.sampling import get_sampler, list_samplers

DETERMINISTIC = ["ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"]
STOCHASTIC = [("ddim", {"eta": 1.0}), ("euler", {"s_churn": 10.0}), ("heun", {"s_churn": 10.0}),
              ("dpmpp_2m_sde", {})]
ALL = DETERMINISTIC + ["dpmpp_2m_sde"]
#: the least nfe each solver takes with denoise=False
MIN_NFE = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp_2m": 2, "dpmpp_3m": 3, "dpmpp_2m_sde": 2, "unipc": 3}
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE()}


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_error(x, ref):
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref))


def map_error(name, sde, data, nfe, schedule="logsnr", batch=64, **options):
    """Relative error of ``name`` against the exact probability-flow map from T to the sampler's eps."""
    x = sde.prior_sampling((batch, data.dim), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = get_sampler(name, sde=sde, shape=x.shape, nfe=nfe, schedule=schedule, denoise=False,
                          dtype=torch.float64, **options)
    y, used = sampler(data.score_fn(sde), x_init=x)
    assert used == nfe
    return rel_error(y, data.flow_map(sde, x, sde.T, sampler.eps))


def test_solvers_are_registered():
    assert set(ALL) <= set(list_samplers())


DIAGONAL = analytic.Gaussian.diagonal(torch.linspace(-0.5, 0.5, 8), torch.linspace(0.05, 0.5, 8))


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("name,options,nfe,tol", [
    ("ddim", {}, 200, 3e-2), ("euler", {}, 200, 3e-2), ("heun", {}, 100, 2e-2), ("dpmpp_2m", {}, 50, 1e-2),
    ("dpmpp_3m", {}, 50, 1e-3), ("unipc", {"order": 2}, 50, 5e-3), ("unipc", {"order": 3}, 50, 5e-4)])
def test_reproduces_the_exact_flow_map(sde_name, name, options, nfe, tol):
    assert map_error(name, SDES[sde_name], DIAGONAL, nfe, **options) < tol


# problem (a) of the benchmark: N(0, 0.5^2 I), VE from sigma 80 to 0.002
EDM_VE = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)
ISOTROPIC = analytic.Gaussian.diagonal(torch.zeros(16), torch.full((16,), 0.5))


@pytest.mark.parametrize("name,options,order", [
    ("ddim", {}, 1), ("euler", {}, 1), ("heun", {}, 2), ("dpmpp_2m", {}, 2), ("dpmpp_3m", {}, 3),
    ("unipc", {"order": 1}, 2), ("unipc", {"order": 2}, 3), ("unipc", {"order": 3}, 4)])
def test_convergence_order(name, options, order):
    """Error ratio between NFE 40 and 80 on problem (a) with the EDM (rho = 7) schedule: the asymptotic
    range for all of them (below ~20 NFE the warm-up and the lower-order final steps dominate).
    UniPC's order is its predictor's plus one from the corrector."""
    coarse = map_error(name, EDM_VE, ISOTROPIC, 40, schedule="edm", **options)
    fine = map_error(name, EDM_VE, ISOTROPIC, 80, schedule="edm", **options)
    assert coarse / fine >= 0.7 * 2 ** order, (coarse, fine)


def assert_spends_exactly_the_budget(name: str, least: int, denoise: bool, below: int) -> None:
    """``name`` makes exactly ``nfe`` score calls for every budget from its least (``least`` + denoising) up to
    ``below``, on two schedules (shared with tests/test_fast_solvers_more.py)."""
    sde = SDES["vp"]
    for nfe in range(least + int(denoise), below):
        for schedule in ("uniform", "edm"):
            sampler = get_sampler(name, sde=sde, shape=(4, 2), nfe=nfe, schedule=schedule, denoise=denoise)
            _, used = sampler(lambda x, t: -x, generator=torch.Generator().manual_seed(0))
            assert used == nfe == sampler.nfe


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("denoise", [False, True])
def test_spends_exactly_the_budget(name, denoise):
    assert_spends_exactly_the_budget(name, MIN_NFE[name], denoise, 12)


def test_budget_from_a_list_of_times():
    sde = SDES["vp"]
    times = [1.0, 0.5, 0.2, 0.05, sde.default_eps]
    assert get_sampler("heun", sde=sde, shape=(2, 2), schedule=times).nfe == 2 * 4 + 1
    sampler = get_sampler("unipc", sde=sde, shape=(2, 2), schedule=times, denoise=False)
    assert sampler(lambda x, t: -x)[1] == 4
    with pytest.raises(ValueError, match="nfe=7 does not match"):
        get_sampler("ddim", sde=sde, shape=(2, 2), schedule=times, nfe=7)
    with pytest.raises(ValueError, match="from T"):
        get_sampler("ddim", sde=sde, shape=(2, 2), schedule=[0.9, 0.5, sde.default_eps])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("denoise", [False, True])
def test_rejects_a_budget_below_what_the_order_needs(name, denoise):
    least = MIN_NFE[name] + int(denoise)
    with pytest.raises(ValueError, match=rf"nfe must be an integer >= {least}"):
        get_sampler(name, sde=SDES["vp"], shape=(2, 2), nfe=least - 1, denoise=denoise)
    with pytest.raises(ValueError, match="nfe"):
        get_sampler(name, sde=SDES["vp"], shape=(2, 2), nfe=10.0)


def test_rejects_unknown_schedules_and_bad_options():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="unknown schedule 'cosine'; available: .*edm.*logsnr.*uniform"):
        get_sampler("dpmpp_2m", sde=sde, shape=(2, 2), schedule="cosine")
    bad = [("ddim", {"eta": -1.0}, "eta"), ("heun", {"s_churn": -1.0}, "s_churn"),
           ("euler", {"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmin"), ("unipc", {"order": 4}, "order"),
           ("unipc", {"variant": "bh3"}, "variant"), ("dpmpp_3m", {"lower_order_final": 1}, "lower_order_final"),
           ("dpmpp_2m", {"rho": 0.0}, "rho"), ("dpmpp_2m", {"solver": "x"}, "unknown option")]
    for name, options, message in bad:
        with pytest.raises(ValueError, match=message):
            get_sampler(name, sde=sde, shape=(2, 2), **options)


ISOTROPIC_3 = analytic.Gaussian.diagonal(torch.zeros(3), torch.full((3,), 0.5))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_solvers_are_deterministic(name):
    sde = SDES["ve"]
    sampler = get_sampler(name, sde=sde, shape=(8, 3), nfe=7)
    score = ISOTROPIC_3.score_fn(sde)
    x = sde.prior_sampling((8, 3), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    a = sampler(score, x_init=x)[0]
    torch.manual_seed(1)
    b = sampler(score, x_init=x)[0]
    assert torch.equal(a, b)



@pytest.mark.parametrize("name,options", STOCHASTIC)
def test_stochastic_solvers_are_reproducible_from_a_generator(name, options):
    sde = SDES["vp"]
    sampler = get_sampler(name, sde=sde, shape=(8, 3), nfe=8, **options)
    score = ISOTROPIC_3.score_fn(sde)
    a = sampler(score, generator=torch.Generator().manual_seed(5))[0]
    b = sampler(score, generator=torch.Generator().manual_seed(5))[0]
    x = sampler.init_state(None, torch.Generator().manual_seed(5))
    c = sampler(score, generator=torch.Generator().manual_seed(6), x_init=x)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # the same start, other noise: the path differs


# a well-separated 2-D mixture: three modes with weights 0.2 / 0.5 / 0.3
MIXTURE = analytic.GaussianMixture([0.2, 0.5, 0.3], torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]),
                                   torch.tensor([0.3, 0.3, 0.3]))


@pytest.mark.parametrize("sde_name,name,options,nfe",
                         [(sde, n, {}, 20) for sde in SDES for n in ALL]
                         + [(sde, *s, 50) for sde in SDES for s in STOCHASTIC[:3]])
def test_samples_the_mixture_with_the_right_mode_weights(sde_name, name, options, nfe):
    """At 20 NFE for the ODE solvers and SDE-DPM-Solver++(2M) on every SDE; the first-order stochastic ones
    (DDIM eta = 1, Euler/Heun with churn) are still 0.03-0.04 off at 20 NFE on subVP, so they are held to it
    at 50 NFE."""
    sde = SDES[sde_name]
    n = 4000
    sampler = get_sampler(name, sde=sde, shape=(n, 2), nfe=nfe, **options)
    x, used = sampler(MIXTURE.score_fn(sde), generator=torch.Generator().manual_seed(0))
    assert used == nfe
    nearest = torch.cdist(x.double(), MIXTURE.means).argmin(dim=1)
    weights = torch.bincount(nearest, minlength=3).double() / n
    assert torch.allclose(weights, MIXTURE.weights, atol=0.03), weights


@pytest.mark.parametrize("name,options", STOCHASTIC)
def test_stochastic_solvers_sample_the_right_gaussian(name, options):
    """N(0, 0.5^2 I) under VP at 100 NFE: the sample std is 0.5 up to the solver's bias (first order: ~4%)."""
    sde = SDES["vp"]
    data = analytic.Gaussian.diagonal(torch.zeros(4), torch.full((4,), 0.5))
    x, _ = get_sampler(name, sde=sde, shape=(4000, 4), nfe=100, **options)(
        data.score_fn(sde), generator=torch.Generator().manual_seed(0))
    tol = 0.01 if name == "dpmpp_2m_sde" else 0.035
    assert abs(float(x.std()) - 0.5) < tol, float(x.std())
    assert abs(float(x.mean())) < 0.01


def test_works_in_the_input_dtype_on_images():
    sde = SDES["vp"]
    data = analytic.Gaussian.diagonal(torch.zeros(2, 4, 4), torch.full((2, 4, 4), 0.5))
    sampler = get_sampler("unipc", sde=sde, shape=(3, 2, 4, 4), nfe=10)
    x, nfe = sampler(data.score_fn(sde), generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 2, 4, 4) and x.dtype == torch.float32 and nfe == 10


def test_denoise_is_the_final_data_prediction():
    """With denoise the result is x0(x_eps, eps) = (x + sigma^2 score) / alpha of the undenoised result."""
    sde = SDES["subvp"]
    score = ISOTROPIC_3.score_fn(sde)
    x = sde.prior_sampling((5, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = get_sampler("dpmpp_2m", sde=sde, shape=(5, 3), nfe=9, denoise=False, dtype=torch.float64)
    denoised = get_sampler("dpmpp_2m", sde=sde, shape=(5, 3), nfe=10, denoise=True, dtype=torch.float64)
    y = plain(score, x_init=x)[0]
    t = torch.full((5,), plain.eps, dtype=torch.float64)
    alpha, sigma = sde.marginal_coeffs(t)
    expected = (y + sigma[:, None] ** 2 * score(y, t)) / alpha[:, None]
    assert torch.allclose(denoised(score, x_init=x)[0], expected)


def test_ddim_step_matches_the_published_formula():
    """One DDIM step on VP with eta = 0 is eq. 12 of Song et al. (2021a) in abar = alpha^2 notation."""
    sde = SDES["vp"]
    times = [1.0, 0.3]
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score = ISOTROPIC_3.score_fn(sde)
    y = get_sampler("ddim", sde=sde, shape=(4, 3), eps=0.3, schedule=times, denoise=False,
                    dtype=torch.float64)(score, x_init=x)[0]
    abar = [float(sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))[0]) ** 2 for t in times]
    eps_hat = -math.sqrt(1 - abar[0]) * score(x, torch.ones(4, dtype=torch.float64))
    x0 = (x - math.sqrt(1 - abar[0]) * eps_hat) / math.sqrt(abar[0])
    assert torch.allclose(y, math.sqrt(abar[1]) * x0 + math.sqrt(1 - abar[1]) * eps_hat)


def test_dpmpp_2m_uses_the_previous_data_prediction():
    """Second step of DPM-Solver++(2M), Lu et al. 2022b Alg. 2: ``D = (1 + 1/(2r)) m1 - 1/(2r) m0``."""
    sde = SDES["ve"]
    times = [1.0, 0.6, 0.4]
    score = ISOTROPIC_3.score_fn(sde)
    x = sde.prior_sampling((4, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = get_sampler("dpmpp_2m", sde=sde, shape=(4, 3), eps=0.4, schedule=times, denoise=False,
                    lower_order_final=False, dtype=torch.float64)(score, x_init=x)[0]
    t = torch.tensor(times, dtype=torch.float64)
    _, sig = sde.marginal_coeffs(t)
    lam = sde.log_snr(t)
    x0 = lambda z, i: z + sig[i] ** 2 * score(z, t[i].repeat(4))  # noqa: E731 (VE: alpha = 1)
    m0 = x0(x, 0)
    x1 = sig[1] / sig[0] * x - torch.expm1(-(lam[1] - lam[0])) * m0
    m1 = x0(x1, 1)
    h, r = lam[2] - lam[1], (lam[1] - lam[0]) / (lam[2] - lam[1])
    expected = sig[2] / sig[1] * x1 - torch.expm1(-h) * ((1 + 1 / (2 * r)) * m1 - 1 / (2 * r) * m0)
    assert torch.allclose(y, expected)


def test_unipc_corrector_reuses_the_call_at_the_predicted_point():
    """UniPC order 1 (Zhao et al. 2023, Alg. 2 with B(h) = e^{-h} - 1, bh2) over two steps, written out:
    predictor = DDIM, ``m1 = x0(x1_pred)``, corrector ``x1 = x_lin - alpha B(h) (m1 - m0) / 2``, then the last
    step predicts from the corrected point with ``m1``; two score calls in all."""
    sde = SDES["vp"]
    times = [1.0, 0.4, 0.05]
    score = ISOTROPIC_3.score_fn(sde)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y, nfe = get_sampler("unipc", sde=sde, shape=(4, 3), eps=0.05, schedule=times, order=1, denoise=False,
                         dtype=torch.float64)(score, x_init=x)
    t = torch.tensor(times, dtype=torch.float64)
    alpha, sigma = (v.tolist() for v in sde.marginal_coeffs(t))
    lam = sde.log_snr(t).tolist()
    x0 = lambda z, i: (z + sigma[i] ** 2 * score(z, t[i].repeat(4))) / alpha[i]  # noqa: E731
    m0 = x0(x, 0)
    b1 = math.expm1(-(lam[1] - lam[0]))
    x_lin = sigma[1] / sigma[0] * x - alpha[1] * b1 * m0
    m1 = x0(x_lin, 1)
    x1 = x_lin - alpha[1] * b1 * 0.5 * (m1 - m0)
    expected = sigma[2] / sigma[1] * x1 - alpha[2] * math.expm1(-(lam[2] - lam[1])) * m1
    assert nfe == 2
    assert torch.allclose(y, expected)


def test_progress_bar_runs():
    sampler = get_sampler("dpmpp_2m", sde=SDES["vp"], shape=(2, 2), nfe=4)
    assert sampler(lambda x, t: -x, progress=True)[1] == 4


def test_dpmpp_2m_sde_step_matches_its_formula():
    """SDE-DPM-Solver++(2M), midpoint form: ``x_t = sigma_t/sigma_s e^{-h} x + alpha_t (1 - e^{-2h}) (m1 + D/2)
    + sigma_t sqrt(1 - e^{-2h}) z`` with ``D = (m1 - m0) h / h_prev``; the noise comes from the generator."""
    sde = SDES["subvp"]
    times = [1.0, 0.5, 0.1]
    score = ISOTROPIC_3.score_fn(sde)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y, _ = get_sampler("dpmpp_2m_sde", sde=sde, shape=(4, 3), eps=0.1, schedule=times, denoise=False,
                       lower_order_final=False, dtype=torch.float64)(
        score, x_init=x, generator=torch.Generator().manual_seed(3))
    noise = torch.Generator().manual_seed(3)
    t = torch.tensor(times, dtype=torch.float64)
    alpha, sigma = (v.tolist() for v in sde.marginal_coeffs(t))
    lam = sde.log_snr(t).tolist()
    x0 = lambda z, i: (z + sigma[i] ** 2 * score(z, t[i].repeat(4))) / alpha[i]  # noqa: E731

    def step(z, i, m):
        h = lam[i + 1] - lam[i]
        return (sigma[i + 1] / sigma[i] * math.exp(-h) * z - alpha[i + 1] * math.expm1(-2 * h) * m
                + sigma[i + 1] * math.sqrt(-math.expm1(-2 * h))
                * torch.randn(4, 3, generator=noise, dtype=torch.float64))

    m0 = x0(x, 0)
    x1 = step(x, 0, m0)
    m1 = x0(x1, 1)
    expected = step(x1, 1, m1 + 0.5 * (m1 - m0) * (lam[2] - lam[1]) / (lam[1] - lam[0]))
    assert torch.allclose(y, expected)


def test_heun_step_is_karras_algorithm_1_on_the_ve_sde():
    """On VE (alpha = 1, sigma_hat = sigma) one Heun step is Alg. 1 of Karras et al. (2022), lines 4-8."""
    sde = SDES["ve"]
    score = ISOTROPIC_3.score_fn(sde)
    x = sde.prior_sampling((4, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y, nfe = get_sampler("heun", sde=sde, shape=(4, 3), eps=0.5, schedule=[1.0, 0.5], denoise=False,
                         dtype=torch.float64)(score, x_init=x)
    t = torch.tensor([1.0, 0.5], dtype=torch.float64)
    s0, s1 = sde.marginal_coeffs(t)[1].tolist()
    D = lambda z, i, s: z + s ** 2 * score(z, t[i].repeat(4))  # noqa: E731
    d = (x - D(x, 0, s0)) / s0
    x_euler = x + (s1 - s0) * d
    expected = x + (s1 - s0) * 0.5 * (d + (x_euler - D(x_euler, 1, s1)) / s1)
    assert nfe == 2 and torch.allclose(y, expected)
