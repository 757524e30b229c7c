"""``sampler(..., callback=fn)``: every registered sampler calls ``fn(step, t, x, denoised)`` once per step of its
grid, and the samples are bit for bit those drawn without a callback."""
import pytest
import torch
from scipy import integrate

from scoresde import analytic, guidance, sde_lib
from scoresde.sampling import get_sampler, list_samplers
from scoresde.sampling.fast import FastSampler
from scoresde.sampling.ode import _FlatDrift

pytestmark = pytest.mark.usefixtures("one_thread")

MIXTURE = analytic.GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), torch.tensor([0.3, 0.4]))
SHAPE = (6, 2)
#: options per sampler where the defaults would be slow or need more (``smc`` needs an observation)
OPTIONS = {"ode": {"rtol": 1e-4, "atol": 1e-4}, "sde": {"method": "heun"}, "smc": {"particles": 3, "N": 12}}


class Recorder:
    """A callback that keeps clones of what it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, step, t, x, denoised):
        self.calls.append((step, t, x.clone(), None if denoised is None else denoised.clone()))


def draw(name, callback=None, seed=0, **extra):
    sde = sde_lib.VPSDE(N=30)
    sampler = get_sampler(name, sde=sde, shape=SHAPE, **{**OPTIONS.get(name, {}), **extra})
    observation = guidance.Inpainting(torch.zeros(SHAPE), torch.tensor([[1.0, 0.0]]), noise_std=0.1) \
        if name == "smc" else None
    x, nfe = sampler(MIXTURE.score_fn(sde), generator=torch.Generator().manual_seed(seed), observation=observation,
                     callback=callback)
    return sampler, x, nfe


def expected_steps(name, sampler):
    """The steps of the sampler's grid, or None where the grid is the solver's own choice (checked elsewhere)."""
    if isinstance(sampler, FastSampler):
        return sampler.n_steps
    if name in ("pc", "ancestral", "smc"):
        return sampler.N
    if name == "sde":
        return round((sampler.sde.T - sampler.eps) / sampler.dt)
    return None


@pytest.mark.parametrize("name", list_samplers())
def test_a_callback_sees_every_step_and_changes_nothing(name):
    plain, x, nfe = draw(name)
    record = Recorder()
    sampler, y, nfe_cb = draw(name, callback=record)
    assert torch.equal(x, y) and nfe == nfe_cb
    steps = [c[0] for c in record.calls]
    times = [c[1] for c in record.calls]
    assert steps == list(range(len(steps))) and len(steps) > 0
    assert all(isinstance(t, float) for t in times)
    # time runs from T down; the discrete chains' last step (level 0, to the data) reports t = 0 as the one before
    assert all(a > b or (name in ("pc", "ancestral") and a == b == 0.0) for a, b in zip(times, times[1:]))
    expected = expected_steps(name, sampler)
    if expected is not None:
        assert len(steps) == expected
    if name == "sde" or isinstance(sampler, FastSampler):
        assert times[-1] == sampler.eps
    if isinstance(sampler, FastSampler):
        assert all(d is not None and d.shape == SHAPE for *_, d in record.calls)
    state_shape = (SHAPE[0] * 3, *SHAPE[1:]) if name == "smc" else SHAPE
    assert all(c[2].shape == state_shape for c in record.calls)


@pytest.mark.parametrize("name,options", [("ddim", {"eta": 1.0}), ("unipc", {}), ("heun", {"s_churn": 5.0}),
                                         ("dpmpp_2m_sde", {}), ("dpmpp_sde", {}), ("lms", {})])
def test_the_last_state_is_the_sample_and_denoised_is_the_data_prediction(name, options):
    """Without the final denoising call the last reported ``x`` is the sample; ``denoised`` of the last step of
    a one-call-a-step solver is Tweedie's ``x0`` at a state of that step (here: its start)."""
    record = Recorder()
    sampler, x, _ = draw(name, callback=record, denoise=False, nfe=7, **options)
    assert torch.equal(record.calls[-1][2], x)
    if name in ("ddim", "lms"):
        sde = sampler.sde
        step, t, _, denoised = record.calls[-1]
        start = record.calls[-2][2]
        t_start = torch.full((SHAPE[0],), record.calls[-2][1])
        alpha, sigma = sde.marginal_coeffs(t_start)
        x0 = (start + sigma[:, None] ** 2 * MIXTURE.score_fn(sde)(start, t_start)) / alpha[:, None]
        assert torch.allclose(denoised.double(), x0.double(), atol=1e-5)


def test_pc_reports_its_time_points_and_a_corrector_only_run_stays_at_each():
    record = Recorder()
    sampler, _, _ = draw("pc", callback=record, predictor="euler_maruyama", corrector="none")
    grid = torch.linspace(1.0, sampler.eps, 31, dtype=torch.float64).tolist()
    assert [c[1] for c in record.calls] == grid[1:]
    record = Recorder()
    draw("pc", callback=record, predictor="none", corrector="ald", N=5)
    assert [c[1] for c in record.calls] == torch.linspace(1.0, 0.0, 5, dtype=torch.float64).tolist()


def test_ode_reports_scipys_accepted_steps():
    """The ``ode`` sampler runs ``solve_ivp``'s own loop: its steps are those ``solve_ivp`` accepts."""
    record = Recorder()
    sampler, x, _ = draw("ode", callback=record, dtype=torch.float64, denoise=False)
    x0 = sampler.init_state(None, torch.Generator().manual_seed(0)).double()
    fun = _FlatDrift(sampler.sde, MIXTURE.score_fn(sampler.sde), x0)
    solution = integrate.solve_ivp(fun, (1.0, sampler.eps), x0.reshape(-1).numpy(), rtol=1e-4, atol=1e-4)
    assert [c[1] for c in record.calls] == solution.t[1:].tolist()
    assert torch.allclose(x.reshape(-1), torch.from_numpy(solution.y[:, -1]), rtol=0, atol=1e-12)


def test_a_callback_can_stop_sampling_early():
    class Enough(Exception):
        pass

    calls = []

    def score(x, t):
        calls.append(1)
        return MIXTURE.score_fn(sde_lib.VPSDE())(x, t)

    def stop(step, t, x, denoised):
        if step == 2:
            raise Enough(x)

    sampler = get_sampler("dpmpp_2m", sde=sde_lib.VPSDE(), shape=SHAPE, nfe=10)
    with pytest.raises(Enough):
        sampler(score, callback=stop)
    assert len(calls) == 3


def test_bad_callbacks_are_refused():
    with pytest.raises(TypeError, match=r"^callback must be callable as callback\(step, t, x, denoised\), got int 3"):
        draw("ddim", callback=3)
    with pytest.raises(ValueError, match="callback= needs adaptive=False with the 'sde' sampler"):
        draw("sde", callback=Recorder(), adaptive=True)
    with pytest.raises(ValueError, match="callback= does not work with method='reversible_heun'"):
        draw("sde", callback=Recorder(), method="reversible_heun")


@pytest.mark.parametrize("name,options", [("sde", {"dt": 0.1}), ("dpmpp_sde", {"noise": "brownian", "nfe": 9}),
                                          ("dpmpp_3m_sde", {"nfe": 9}), ("pc", {})])
def test_a_callback_changes_nothing_with_per_row_seeds(name, options):
    sde = sde_lib.VPSDE(N=30)
    sampler = get_sampler(name, sde=sde, shape=SHAPE, **options)
    seeds = list(range(10, 10 + SHAPE[0]))
    x, _ = sampler(MIXTURE.score_fn(sde), seeds=seeds)
    record = Recorder()
    y, _ = sampler(MIXTURE.score_fn(sde), seeds=seeds, callback=record)
    assert torch.equal(x, y) and len(record.calls) > 0
