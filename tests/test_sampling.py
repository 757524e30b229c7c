"""Samplers against closed-form ground truth (scoresde.analytic): exact flow maps, 2-D mixtures, orders."""
import math

import pytest
import torch

from scoresde import analytic, sde_lib
from scoresde.sampling import (get_corrector, get_predictor, get_sampler, list_correctors, list_predictors,
                               list_samplers)

pytestmark = pytest.mark.usefixtures("one_thread")


def make_sde(name, N=1000):
    return {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}[name](N=N)


SDE_NAMES = ["vp", "subvp", "ve"]
MEAN = torch.tensor([0.5, -0.3, 0.2, 1.0])


def gaussian(kind):
    if kind == "diagonal":
        return analytic.Gaussian.diagonal(MEAN, torch.tensor([0.3, 1.0, 0.5, 0.1]))
    A = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return analytic.Gaussian.from_covariance(MEAN, A @ A.T / 4 + 0.05 * torch.eye(4, dtype=torch.float64))


def prior(sde, shape, seed=1, dtype=torch.float64):
    return sde.prior_sampling(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel_rms(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- exact probability-flow map
@pytest.mark.parametrize("kind", ["diagonal", "rotated"])
@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_ode_reproduces_exact_flow_map(sde_name, kind):
    sde, g = make_sde(sde_name), gaussian(kind)
    sampler = get_sampler("ode", sde=sde, shape=(64, 4), denoise=False, dtype=torch.float64)
    x_init = prior(sde, (64, 4))
    x, nfe = sampler(g.score_fn(sde), x_init=x_init)
    assert rel_rms(x, g.flow_map(sde, x_init, sde.T, sampler.eps)) < 5e-4
    assert 10 < nfe < 400


def test_ode_float32_and_other_methods():
    sde, g = make_sde("vp"), gaussian("rotated")
    x_init = prior(sde, (32, 4))
    ref = g.flow_map(sde, x_init, sde.T, sde.default_eps)
    for method in ["RK23", "DOP853", "LSODA"]:
        x, _ = get_sampler("ode", sde=sde, shape=(32, 4), denoise=False, method=method)(g.score_fn(sde),
                                                                                         x_init=x_init.float())
        assert x.dtype == torch.float32
        assert rel_rms(x, ref) < 5e-4, method


def test_ode_denoise_is_tweedie():
    sde, g = make_sde("vp"), gaussian("diagonal")
    x_init = prior(sde, (16, 4))
    x_eps, nfe0 = get_sampler("ode", sde=sde, shape=(16, 4), denoise=False, dtype=torch.float64)(
        g.score_fn(sde), x_init=x_init)
    x0, nfe1 = get_sampler("ode", sde=sde, shape=(16, 4), dtype=torch.float64)(g.score_fn(sde), x_init=x_init)
    t = torch.full((16,), sde.default_eps, dtype=torch.float64)
    alpha, sigma = sde.marginal_coeffs(t)
    expected = (x_eps + sigma[:, None] ** 2 * g.score(sde, x_eps, t)) / alpha[:, None]
    assert nfe1 == nfe0 + 1
    assert torch.allclose(x0, expected, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- 2-D mixture, every sampler
MIXTURE = analytic.GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), torch.tensor([0.2, 0.2]))
N_MIX = 500          # SDE steps for the mixture runs
N_SAMPLES = 4000

# every predictor and every corrector appears with every SDE
MIXTURE_RUNS = [
    ("pc", dict(predictor="euler_maruyama", corrector="langevin")),
    ("pc", dict(predictor="reverse_diffusion", corrector="ald")),
    ("pc", dict(predictor="ancestral_sampling", corrector="none")),
    # corrector-only sampling has no predictor to carry the mass: it needs longer Langevin runs
    ("pc", dict(predictor="none", corrector="langevin", n_steps=2, snr=0.3)),
    ("ancestral", {}),
    ("sde", dict(method="euler")),
]


def check_mixture(sde, x):
    resp = MIXTURE.responsibilities(sde, x, torch.zeros(x.shape[0]))
    weights = resp.mean(0)
    assert (weights - MIXTURE.weights).abs().max() < 0.02, weights
    labels = resp.argmax(1)
    for k in range(2):
        mean = x[labels == k].double().mean(0)
        assert (mean - MIXTURE.means[k]).abs().max() < 0.03, (k, mean)


@pytest.mark.parametrize("sampler_name,options", MIXTURE_RUNS,
                         ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in MIXTURE_RUNS])
@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_samplers_reproduce_mixture(sde_name, sampler_name, options):
    sde = make_sde(sde_name, N_MIX)
    sampler = get_sampler(sampler_name, sde=sde, shape=(N_SAMPLES, 2), **options)
    x, nfe = sampler(MIXTURE.score_fn(sde), generator=gen(0))
    assert x.shape == (N_SAMPLES, 2) and x.dtype == torch.float32
    check_mixture(sde, x)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_more_pc_combinations_reproduce_mixture(sde_name):
    sde = make_sde(sde_name, N_MIX)
    for predictor, corrector in [("euler_maruyama", "none"), ("reverse_diffusion", "langevin"),
                                 ("ancestral_sampling", "ald")]:
        sampler = get_sampler("pc", sde=sde, shape=(N_SAMPLES, 2), predictor=predictor, corrector=corrector)
        check_mixture(sde, sampler(MIXTURE.score_fn(sde), generator=gen(1))[0])
    check_mixture(sde, get_sampler("ode", sde=sde, shape=(N_SAMPLES, 2))(MIXTURE.score_fn(sde), generator=gen(1))[0])


# ---------------------------------------------------------------- time grids
class Clock(sde_lib.SDE):
    """``dx = 1 dt``: Euler-Maruyama integrates it exactly, so ``x_end - x_init`` is the time travelled."""

    def sde(self, x, t):
        return torch.ones_like(x), torch.zeros_like(t)

    def marginal_coeffs(self, t):
        t = t.to(torch.float64)
        return torch.ones_like(t), torch.ones_like(t)

    def prior_sampling(self, shape, *, generator=None, device=None, dtype=torch.float32):
        return torch.zeros(shape, device=device, dtype=dtype)

    def prior_logp(self, z):
        return torch.zeros(z.shape[0], dtype=z.dtype)


class Recorder:
    def __init__(self, score_fn=None):
        self.times, self.score_fn = [], score_fn

    def __call__(self, x, t):
        self.times.append(t.double().clone())
        return torch.zeros_like(x) if self.score_fn is None else self.score_fn(x, t)


@pytest.mark.parametrize("denoise", [True, False])
def test_euler_maruyama_lands_exactly_on_eps(denoise):
    sde, eps, N = Clock(N=10), 0.05, 10
    rec = Recorder()
    x, nfe = get_sampler("pc", sde=sde, shape=(3, 2), eps=eps, predictor="euler_maruyama", corrector="none",
                         denoise=denoise, dtype=torch.float64)(rec)
    assert torch.allclose(x, torch.full_like(x, -(sde.T - eps)), rtol=0, atol=1e-14)
    called = torch.stack(rec.times)
    expected = torch.linspace(sde.T, eps, N + 1, dtype=torch.float64)[:-1]
    assert nfe == N and torch.equal(called, expected[:, None].expand(-1, 3))


def test_discrete_grid_has_exact_step_indices_and_never_scores_below_eps():
    for sde in [make_sde("vp", 100), make_sde("ve", 100)]:
        sampler = get_sampler("ancestral", sde=sde, shape=(2, 2))
        times, _ = sampler.time_grid(torch.zeros(2, 2, dtype=torch.float64))
        assert torch.equal(sde.step_index(times[:, 0]), torch.arange(99, -1, -1))
        rec = Recorder(MIXTURE.score_fn(sde))
        _, nfe = sampler(rec, generator=gen())
        called = torch.stack(rec.times)[:, 0]
        assert nfe == 100 and called.min() >= sampler.eps - 1e-9 and called[-1] == pytest.approx(sampler.eps)


# ---------------------------------------------------------------- one step against its equation
def _step_inputs(sde, seed=0):
    x = prior(sde, (5, 3), seed)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    return x, t, MIXTURE_3D.score_fn(sde)


MIXTURE_3D = analytic.GaussianMixture([0.5, 0.5], torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.5, 0.0]]), [0.3, 0.4])


def test_ancestral_step_is_ddpm_eq47():
    sde = make_sde("vp", 50)
    x, t, score = _step_inputs(sde)
    i = sde.step_index(t)
    beta = sde.discrete_betas[i][:, None]
    mean = (x + beta * score(x, t)) / torch.sqrt(1 - beta)
    new, x_mean = get_predictor("ancestral_sampling")(sde).update(score, x, t, t - 0.02, gen(3))
    z = torch.randn(x.shape, generator=gen(3), dtype=x.dtype)
    assert torch.allclose(x_mean, mean) and torch.allclose(new, mean + torch.sqrt(beta) * z)


def test_ancestral_step_is_smld():
    sde = make_sde("ve", 50)
    x, t, score = _step_inputs(sde)
    i = sde.step_index(t)
    s, s_prev = sde.discrete_sigmas[i][:, None], sde.discrete_sigmas[i - 1][:, None]
    mean = x + (s ** 2 - s_prev ** 2) * score(x, t)
    std = torch.sqrt(s_prev ** 2 * (s ** 2 - s_prev ** 2) / s ** 2)
    new, x_mean = get_predictor("ancestral_sampling")(sde).update(score, x, t, t - 0.02, gen(3))
    z = torch.randn(x.shape, generator=gen(3), dtype=x.dtype)
    assert torch.allclose(x_mean, mean) and torch.allclose(new, mean + std * z)


def test_ancestral_generic_form_reduces_to_eq47():
    """The subVP (generic) rule applied to a VP whose discretize is the DDPM step gives eq. 47 exactly."""

    class VPAsGeneric(sde_lib.VPSDE):
        def discretize(self, x, t):
            return sde_lib.VPSDE.discretize(self, x, t)

    vp, generic = make_sde("vp", 50), VPAsGeneric(N=50)
    x, t, score = _step_inputs(vp)
    a = get_predictor("ancestral_sampling")(vp).update(score, x, t, t, gen(1))
    b = get_predictor("ancestral_sampling")(generic).update(score, x, t, t, gen(1))
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_reverse_diffusion_step_is_eq46():
    for name in SDE_NAMES:
        sde = make_sde(name, 50)
        x, t, score = _step_inputs(sde)
        f, G = sde.discretize(x, t)
        mean = x - f + G[:, None] ** 2 * score(x, t)
        new, x_mean = get_predictor("reverse_diffusion")(sde).update(score, x, t, t - 0.02, gen(3))
        z = torch.randn(x.shape, generator=gen(3), dtype=x.dtype)
        assert torch.allclose(x_mean, mean) and torch.allclose(new, mean + G[:, None] * z)
        _, ode_mean = get_predictor("reverse_diffusion")(sde, probability_flow=True).update(score, x, t, t, gen(3))
        assert torch.allclose(ode_mean, x - f + G[:, None] ** 2 * score(x, t) / 2)


def test_euler_maruyama_step():
    for name in SDE_NAMES:
        sde = make_sde(name)
        x, t, score = _step_inputs(sde)
        t_next = t - 0.01
        drift, g = sde.sde(x, t)
        mean = x - 0.01 * (drift - g[:, None] ** 2 * score(x, t))
        new, x_mean = get_predictor("euler_maruyama")(sde).update(score, x, t, t_next, gen(3))
        z = torch.randn(x.shape, generator=gen(3), dtype=x.dtype)
        assert torch.allclose(x_mean, mean) and torch.allclose(new, mean + g[:, None] * math.sqrt(0.01) * z)


@pytest.mark.parametrize("name", ["langevin", "ald"])
def test_corrector_step_is_algorithm_4_5(name):
    for sde_name in SDE_NAMES:
        sde = make_sde(sde_name, 50)
        x, t, score = _step_inputs(sde)
        snr = 0.2
        z = torch.randn(x.shape, generator=gen(3), dtype=x.dtype)
        s = score(x, t)
        alpha = sde.alphas[sde.step_index(t)] if sde_name != "ve" else torch.ones(5, dtype=torch.float64)
        if name == "langevin":
            ratio = z.norm(dim=1).mean() / s.norm(dim=1).mean()
            step = 2 * alpha * (snr * ratio) ** 2
        else:
            step = 2 * alpha * (snr * sde.marginal_coeffs(t)[1]) ** 2
        new, x_mean = get_corrector(name)(sde, snr, 1).update(score, x, t, gen(3))
        assert torch.allclose(x_mean, x + step[:, None] * s)
        assert torch.allclose(new, x_mean + torch.sqrt(2 * step)[:, None] * z)


# ---------------------------------------------------------------- convergence orders
def _order(errors, steps):
    return [math.log(errors[i] / errors[i + 1]) / math.log(steps[i + 1] / steps[i]) for i in range(len(errors) - 1)]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_pc_probability_flow_euler_is_first_order(sde_name):
    sde, g = make_sde(sde_name), gaussian("rotated")
    x_init = prior(sde, (64, 4))
    ref = g.flow_map(sde, x_init, sde.T, sde.default_eps)
    steps = [50, 100, 200, 400]
    errors = []
    for N in steps:
        sampler = get_sampler("pc", sde=sde, shape=(64, 4), predictor="euler_maruyama", corrector="none",
                              probability_flow=True, N=N, dtype=torch.float64)
        errors.append(rel_rms(sampler(g.score_fn(sde), x_init=x_init)[0], ref))
    orders = _order(errors, steps)
    assert all(0.85 < p < 1.15 for p in orders), (errors, orders)


def test_torchsde_strong_orders():
    """Additive noise: Euler-Maruyama (= Milstein) has strong order 1, SRK 1.5; the same seed gives the same
    Brownian path at every dt, so the error against a fine SRK solution measures the strong order."""
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=5.0)
    g = analytic.Gaussian.diagonal(torch.tensor([0.5, -0.5]), torch.tensor([0.5, 1.0]))
    x_init = prior(sde, (128, 2))

    def run(method, n):
        sampler = get_sampler("sde", sde=sde, shape=(128, 2), method=method, dt=(sde.T - 1e-3) / n, eps=1e-3,
                              denoise=False, dtype=torch.float64)
        x, nfe = sampler(g.score_fn(sde), x_init=x_init, generator=gen(3))
        return x

    ref = run("srk", 256)
    steps = [8, 16, 32]
    for method, low, high in [("euler", 0.85, 1.2), ("milstein", 0.85, 1.2), ("heun", 0.85, 1.2),
                              ("srk", 1.4, 2.2)]:
        errors = [(run(method, n) - ref).norm(dim=1).mean().item() for n in steps]
        orders = _order(errors, steps)
        assert all(low < p < high for p in orders), (method, errors, orders)


# ---------------------------------------------------------------- nfe, determinism, x_init
ALL_SAMPLERS = [("pc", dict(predictor="reverse_diffusion", corrector="langevin", n_steps=2)),
                ("pc", dict(predictor="none", corrector="ald")),
                ("ancestral", {}), ("ode", {}), ("sde", dict(method="srk", dt=0.1)),
                ("sde", dict(method="euler", adaptive=True, rtol=5e-2, atol=5e-2))]


@pytest.mark.parametrize("name,options", ALL_SAMPLERS)
def test_nfe_counts_calls_and_seed_determines_samples(name, options):
    sde = make_sde("ve", 20)
    rec = Recorder(MIXTURE.score_fn(sde))
    sampler = get_sampler(name, sde=sde, shape=(16, 2), **options)
    x1, nfe = sampler(rec, generator=gen(5))
    assert nfe == len(rec.times) > 0
    x2, _ = sampler(MIXTURE.score_fn(sde), generator=gen(5))
    x3, _ = sampler(MIXTURE.score_fn(sde), generator=gen(6))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)


def test_pc_nfe_by_options():
    sde = make_sde("vp", 30)
    for predictor, corrector, n_steps, expected in [("euler_maruyama", "none", 1, 30), ("reverse_diffusion",
                                                    "langevin", 3, 120), ("none", "ald", 2, 60)]:
        rec = Recorder(MIXTURE.score_fn(sde))
        _, nfe = get_sampler("pc", sde=sde, shape=(4, 2), predictor=predictor, corrector=corrector,
                             n_steps=n_steps)(rec)
        assert nfe == len(rec.times) == expected


@pytest.mark.parametrize("name,options", [("pc", {}), ("ancestral", {}), ("ode", {}), ("sde", dict(dt=0.1))])
def test_x_init_replaces_prior_draw(name, options):
    sde = make_sde("vp", 30)
    sampler = get_sampler(name, sde=sde, shape=(8, 2), **options)
    x_init = prior(sde, (8, 2), seed=11, dtype=torch.float32)
    a, _ = sampler(MIXTURE.score_fn(sde), x_init=x_init, generator=gen(1))
    b, _ = sampler(MIXTURE.score_fn(sde), x_init=x_init, generator=gen(1))
    c, _ = sampler(MIXTURE.score_fn(sde), generator=gen(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_images_of_any_rank():
    sde = make_sde("vp", 30)
    g = analytic.Gaussian.diagonal(torch.zeros(2, 3, 4, 5), torch.full((2, 3, 4, 5), 0.5))
    for name, options in [("pc", {}), ("ode", {}), ("sde", dict(dt=0.1)), ("ancestral", {})]:
        x, _ = get_sampler(name, sde=sde, shape=(3, 2, 3, 4, 5), **options)(g.score_fn(sde), generator=gen())
        assert x.shape == (3, 2, 3, 4, 5)


def test_registries_list_names():
    assert set(list_samplers()) >= {"pc", "ancestral", "ode", "sde"}
    assert list_predictors() == ["ancestral_sampling", "euler_maruyama", "none", "reverse_diffusion"]
    assert list_correctors() == ["ald", "langevin", "none"]


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("name,options,match", [
    ("pc", dict(predictor="heun"), "available: ancestral_sampling, euler_maruyama, none, reverse_diffusion"),
    ("pc", dict(corrector="hmc"), "available: ald, langevin, none"),
    ("pc", dict(snr=-1.0), "snr"),
    ("pc", dict(n_steps=0), "n_steps"),
    ("pc", dict(N=0), "N must"),
    ("pc", dict(N=10, predictor="reverse_diffusion"), "N must equal sde.N"),
    ("pc", dict(predictor="ancestral_sampling", probability_flow=True), "probability-flow"),
    ("ancestral", dict(), "N > beta_max"),
    ("pc", dict(probability_flow="yes"), "probability_flow"),
    ("pc", dict(method="RK45"), "unknown option"),
    ("ancestral", dict(corrector="langevin"), "unknown option"),
    ("ode", dict(rtol=-1e-5), "rtol"),
    ("ode", dict(atol=0.0), "atol"),
    ("ode", dict(method="rk4"), "available: RK45"),
    ("ode", dict(snr=0.1), "unknown option"),
    ("sde", dict(rtol=-1.0), "rtol"),
    ("sde", dict(atol=-1.0), "atol"),
    ("sde", dict(dt=-0.1), "dt"),
    ("sde", dict(dt=2.0), "dt must be at most"),
    ("sde", dict(method="rk4"), "available: euler"),
    ("sde", dict(adaptive=1), "adaptive"),
])
def test_bad_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_sampler(name, sde=make_sde("vp", 20 if name == "ancestral" else 100), shape=(4, 2), **options)


@pytest.mark.parametrize("name", ["pc", "ancestral", "ode", "sde"])
def test_bad_eps_x_init_and_score(name):
    sde = make_sde("ve", 10)
    for eps in [1.0, 2.0, 0.0, -0.1]:
        with pytest.raises(ValueError, match="eps"):
            get_sampler(name, sde=sde, shape=(4, 2), eps=eps)
    sampler = get_sampler(name, sde=sde, shape=(4, 2))
    with pytest.raises(ValueError, match="x_init"):
        sampler(MIXTURE.score_fn(sde), x_init=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="score_fn must return"):
        sampler(lambda x, t: x[:, :1])
    with pytest.raises(FloatingPointError):
        sampler(lambda x, t: torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler(name + "x", sde=sde, shape=(4, 2))


def test_step_rejects_time_of_wrong_shape():
    sde = make_sde("vp", 30)
    x = torch.zeros(4, 2)
    score = MIXTURE.score_fn(sde)
    for name in ["euler_maruyama", "reverse_diffusion", "ancestral_sampling"]:
        with pytest.raises(ValueError, match=r"shape \[B\]"):
            get_predictor(name)(sde).update(score, x, torch.full((3,), 0.5), torch.full((4,), 0.4))
        with pytest.raises(ValueError, match=r"shape \[B\]"):
            get_predictor(name)(sde).update(score, x, torch.tensor(0.5), torch.full((4,), 0.4))
    with pytest.raises(ValueError, match=r"t_next must have shape \[B\]"):
        get_predictor("euler_maruyama")(sde).update(score, x, torch.full((4,), 0.5), torch.tensor(0.4))
    for name in ["langevin", "ald"]:
        with pytest.raises(ValueError, match=r"shape \[B\]"):
            get_corrector(name)(sde, 0.16, 1).update(score, x, torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="unknown predictor 'heun'; available"):
        get_predictor("heun")
    with pytest.raises(ValueError, match="unknown corrector 'hmc'; available"):
        get_corrector("hmc")


def test_progress_bar_does_not_change_samples():
    sde = make_sde("vp", 30)
    sampler = get_sampler("pc", sde=sde, shape=(4, 2))
    a, _ = sampler(MIXTURE.score_fn(sde), generator=gen(2), progress=True)
    b, _ = sampler(MIXTURE.score_fn(sde), generator=gen(2))
    assert torch.equal(a, b)
