"""Time-step schedules and the SDEs' inverse of the log-SNR."""
import math

import numpy as np
import pytest
import torch

from scoresde import sde_lib
from scoresde.sampling.schedules import check_schedule, get_timesteps, list_schedules

SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.subVPSDE(), "ve": sde_lib.VESDE(),
        "edm": sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0), "vp_beta0": sde_lib.VPSDE(beta_min=0.0, beta_max=5.0)}
NAMES = ["uniform", "logsnr", "edm", "karras", "quadratic"]


def test_names():
    assert set(NAMES) <= set(list_schedules())


@pytest.mark.parametrize("sde_name", SDES)
def test_t_from_log_snr_inverts_log_snr(sde_name):
    sde = SDES[sde_name]
    t = torch.tensor([1e-5, 1e-3, 0.01, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    lam = sde.log_snr(t)
    assert torch.allclose(sde.t_from_log_snr(lam), t, rtol=1e-10, atol=1e-13)
    # the closed form agrees with the base class's float64 bisection
    assert torch.allclose(sde_lib.SDE.t_from_log_snr(sde, lam), t, rtol=1e-10, atol=1e-13)
    assert sde.t_from_log_snr(lam).dtype == torch.float64


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("name", NAMES)
def test_grid_runs_from_T_to_eps_strictly_decreasing(sde_name, name):
    sde = SDES[sde_name]
    for n in (1, 2, 7, 50):
        t = get_timesteps(name, sde, n, sde.default_eps)
        assert t.dtype == torch.float64 and t.shape == (n + 1,)
        assert t[0] == sde.T and t[-1] == sde.default_eps
        assert (t[1:] < t[:-1]).all()


def _is_uniform(v):
    d = v[1:] - v[:-1]
    return torch.allclose(d, d.mean().expand_as(d), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sde_name", SDES)
def test_each_grid_is_uniform_in_its_own_variable(sde_name):
    sde, n, eps = SDES[sde_name], 10, SDES[sde_name].default_eps
    assert _is_uniform(get_timesteps("uniform", sde, n, eps))
    assert _is_uniform(sde.log_snr(get_timesteps("logsnr", sde, n, eps)))
    for rho in (1.0, 7.0):
        sigma = torch.exp(-sde.log_snr(get_timesteps("edm", sde, n, eps, rho=rho)))
        assert _is_uniform(sigma ** (1.0 / rho))
    assert _is_uniform(torch.sqrt(get_timesteps("quadratic", sde, n, eps) - eps))
    assert torch.equal(get_timesteps("edm", sde, n, eps), get_timesteps("karras", sde, n, eps))


def test_edm_schedule_is_karras_in_sigma_for_the_ve_sde():
    """On ``VESDE(0.002, 80)`` the ``edm`` grid is eq. 5 of Karras et al. (2022) for sigma 80 -> 0.002."""
    sde, n, rho = SDES["edm"], 18, 7.0
    eps = 1e-12
    sigma = sde.marginal_coeffs(get_timesteps("edm", sde, n, eps, rho=rho))[1]
    i = torch.arange(n + 1, dtype=torch.float64)
    smax, smin = 80.0, float(sde.marginal_coeffs(torch.tensor([eps], dtype=torch.float64))[1])
    karras = (smax ** (1 / rho) + i / n * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    assert torch.allclose(sigma, karras, rtol=1e-10)
    assert math.isclose(smin, 0.002, rel_tol=1e-9)


def test_given_times():
    sde = SDES["vp"]
    times = [1.0, 0.5, 0.1, 1e-3]
    assert torch.equal(get_timesteps(times, sde, 3, 1e-3), torch.tensor(times, dtype=torch.float64))
    assert torch.equal(get_timesteps(torch.tensor(times), sde, 3, 1e-3).float(), torch.tensor(times))
    with pytest.raises(ValueError, match="holds 4 times"):
        get_timesteps(times, sde, 5, 1e-3)
    with pytest.raises(ValueError, match="run from T"):
        get_timesteps([1.0, 0.5, 0.1], sde, 2, 1e-3)
    for bad in ([1.0, 0.5, 0.7, 1e-3], [1.0], [1.0, -0.1], [1.0, float("nan"), 1e-3]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            check_schedule(bad)
    assert torch.equal(get_timesteps(np.array(times), sde, 3, 1e-3), torch.tensor(times, dtype=torch.float64))
    for bad in (3, {"a": 1}, torch.ones(2, 2), [[1.0, 0.5]], "1.0 0.5"):
        with pytest.raises((TypeError, ValueError), match="schedule"):
            check_schedule(bad)


def test_bad_names_and_arguments():
    sde = SDES["vp"]
    names = "edm, karras, logsnr, quadratic, uniform"
    with pytest.raises(ValueError, match=rf"unknown schedule 'cosine'; available: {names}"):
        get_timesteps("cosine", sde, 10, 1e-3)
    with pytest.raises(ValueError, match="number of steps"):
        get_timesteps("logsnr", sde, 0, 1e-3)
    with pytest.raises(ValueError, match="eps"):
        get_timesteps("logsnr", sde, 10, 1.5)
    with pytest.raises(ValueError, match="rho"):
        get_timesteps("edm", sde, 10, 1e-3, rho=-1.0)
