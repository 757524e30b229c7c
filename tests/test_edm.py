"""EDM preconditioning and loss, and the eps / x0 / v / score parameterisations with min-SNR-gamma weighting:
closed-form algebra, exact scores for Gaussian data under VE, VP and sub-VP, the EDM loss's minimiser,
a ``main.py --mode train`` run with ``training.loss=edm`` sampled by two samplers, refused configs."""
import math
import os
import subprocess
import sys

import pytest
import torch

import run_lib
from configs.vp import digits
from scoresde import losses, sde_lib
from scoresde.analytic import Gaussian
from scoresde.models import EDMDenoiser, edm_coefficients, edm_loss_weight, get_score_fn

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 3
SIGMA_DATA = 0.5
SDES = {"ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
        "vp": lambda: sde_lib.VPSDE(), "subvp": lambda: sde_lib.subVPSDE()}


class Net(torch.nn.Module):
    """A stand-in network ``model(x, noise_labels, class_labels=None) = fn(x, noise_labels)`` that records its inputs."""

    def __init__(self, fn, embedding_type="positional", scale_by_sigma=False):
        super().__init__()
        self.fn, self.embedding_type, self.scale_by_sigma = fn, embedding_type, scale_by_sigma
        self.calls = []

    def forward(self, x, noise_labels, class_labels=None):
        self.calls.append((x, noise_labels))
        return self.fn(x, noise_labels)


def zero_net(**kw):
    return Net(lambda x, labels: torch.zeros_like(x), **kw)


def gaussian():
    """A diagonal Gaussian with a mean and stds other than sigma_data, so the denoiser is not c_skip x."""
    return Gaussian.diagonal(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64),
                             torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64))


def gaussian_denoiser(data, x, sigma):
    """``E[x_0 | x_0 + sigma z = x]`` of the diagonal Gaussian ``data``: ``mu + s^2 / (s^2 + sigma^2) (x - mu)``."""
    s2, mu, sig2 = data.eigvals, data.mean, sigma.to(torch.float64)[:, None] ** 2
    return mu + s2 / (s2 + sig2) * (x - mu)


# ----------------------------------------------------------------------------- the preconditioner's algebra

def test_denoiser_is_the_identity_as_sigma_goes_to_zero_when_F_is_zero():
    x = torch.randn(4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    denoiser = EDMDenoiser(zero_net(), SIGMA_DATA)
    for sigma in (1e-2, 1e-4, 1e-6):
        out = denoiser(x, torch.full((4,), sigma, dtype=torch.float64))
        # D - x = (c_skip - 1) x = -sigma^2 / (sigma^2 + sd^2) x exactly
        torch.testing.assert_close(out - x, -sigma ** 2 / (sigma ** 2 + SIGMA_DATA ** 2) * x, rtol=1e-6, atol=1e-15)
    assert (out - x).abs().max() < 1e-11


def test_coefficients_match_table_1_of_karras_et_al():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, SIGMA_DATA)
    total = sigma ** 2 + 0.25
    torch.testing.assert_close(c_skip, 0.25 / total, rtol=1e-15, atol=0)
    torch.testing.assert_close(c_out, sigma * 0.5 / total.sqrt(), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_in, 1 / total.sqrt(), rtol=1e-15, atol=0)
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4, rtol=1e-15, atol=0)
    torch.testing.assert_close(edm_loss_weight(sigma, SIGMA_DATA), 1 / c_out ** 2, rtol=1e-14, atol=0)


@pytest.mark.parametrize("sigma", [0.002, 0.5, 80.0])
def test_c_in_gives_the_network_unit_variance_input_for_data_of_variance_sigma_data_squared(sigma):
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = SIGMA_DATA * torch.randn(n, 1, dtype=torch.float64, generator=g)
    noisy = x0 + sigma * torch.randn(n, 1, dtype=torch.float64, generator=g)
    net = zero_net()
    EDMDenoiser(net, SIGMA_DATA)(noisy, torch.full((n,), sigma, dtype=torch.float64))
    seen, labels = net.calls[0]
    assert abs(seen.var().item() - 1.0) < 0.01  # 200,000 draws: standard error of the variance 0.003
    torch.testing.assert_close(labels, torch.full((n,), math.log(sigma) / 4, dtype=torch.float64))


def test_networks_that_embed_log_labels_get_sigma_to_the_quarter_and_scaled_networks_are_refused():
    net = zero_net(embedding_type="fourier")
    sigma = torch.tensor([0.1, 3.0], dtype=torch.float64)
    EDMDenoiser(net, SIGMA_DATA)(torch.zeros(2, D, dtype=torch.float64), sigma)
    torch.testing.assert_close(torch.log(net.calls[0][1]), torch.log(sigma) / 4)  # it embeds log(label) = c_noise
    with pytest.raises(ValueError, match="model.scale_by_sigma = False"):
        EDMDenoiser(zero_net(scale_by_sigma=True), SIGMA_DATA)
    with pytest.raises(ValueError, match="training.sigma_data"):
        EDMDenoiser(zero_net(), 0.0)


# ----------------------------------------------------------------------------- exact scores for Gaussian data

def exact_F(data, embedding_type="positional"):
    """The network ``F`` whose preconditioned ``D`` is the Gaussian's exact denoiser: it reads sigma from its
    label (``c_noise``, or ``sigma^(1/4)`` for a log-embedding network) and ``x`` from ``c_in x``."""
    def fn(u, labels):
        c_noise = torch.log(labels) if embedding_type == "fourier" else labels
        sigma = torch.exp(4 * c_noise.to(torch.float64))
        c_skip, c_out, c_in, _ = edm_coefficients(sigma, SIGMA_DATA)
        x = u / c_in[:, None]
        return (gaussian_denoiser(data, x, sigma) - c_skip[:, None] * x) / c_out[:, None]
    return Net(fn, embedding_type=embedding_type)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("embedding_type", ["positional", "fourier"])
def test_the_exact_denoiser_gives_the_exact_gaussian_score(name, embedding_type):
    sde, data = SDES[name](), gaussian()
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([1e-3, 0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    x = data.sample(5, generator=g) * sde.marginal_coeffs(t)[0][:, None] \
        + sde.marginal_coeffs(t)[1][:, None] * torch.randn(5, D, dtype=torch.float64, generator=g)
    score = get_score_fn(sde, exact_F(data, embedding_type), prediction="edm", sigma_data=SIGMA_DATA)(x, t)
    torch.testing.assert_close(score, data.score(sde, x, t), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", list(SDES))
def test_F_zero_is_the_exact_denoiser_of_isotropic_data_with_std_sigma_data(name):
    """``c_skip x`` is ``E[x_0 | x]`` for ``x_0 ~ N(0, sd^2 I)``: an untrained (zero-output) network already
    gives that Gaussian's exact score through the VE or VP mapping."""
    sde = SDES[name]()
    data = Gaussian.diagonal(torch.zeros(D, dtype=torch.float64), torch.full((D,), SIGMA_DATA, dtype=torch.float64))
    t = torch.tensor([1e-3, 0.2, 0.9], dtype=torch.float64)
    x = torch.randn(3, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    score = get_score_fn(sde, zero_net(), prediction="edm", sigma_data=SIGMA_DATA)(x, t)
    torch.testing.assert_close(score, data.score(sde, x, t), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_samplers_and_the_likelihood_take_the_edm_score_unchanged(name):
    """The samplers and the likelihood see only ``score_fn``: with the EDM score of the exact denoiser they
    give what the closed-form Gaussian score gives (the same draws)."""
    from scoresde import likelihood, sampling
    sde, data = SDES[name](), gaussian()
    edm_score, exact_score = get_score_fn(sde, exact_F(data), prediction="edm", sigma_data=SIGMA_DATA), data.score_fn(sde)
    for sampler_name, options in (("dpmpp_2m", {"nfe": 10}), ("pc", {"N": 20, "predictor": "euler_maruyama"})):
        sampler = sampling.get_sampler(sampler_name, sde=sde, shape=(6, D), dtype=torch.float64, **options)
        x_edm, _ = sampler(edm_score, generator=torch.Generator().manual_seed(10))
        x_exact, _ = sampler(exact_score, generator=torch.Generator().manual_seed(10))
        torch.testing.assert_close(x_edm, x_exact, rtol=1e-6, atol=1e-6)
    likelihood_fn = likelihood.get_likelihood_fn(sde, hutchinson_type="exact", rtol=1e-6, atol=1e-6)
    x = data.sample(4, generator=torch.Generator().manual_seed(11))
    bpd_edm = likelihood_fn(edm_score, x)[0]
    torch.testing.assert_close(bpd_edm, likelihood_fn(exact_score, x)[0], rtol=1e-6, atol=1e-6)
    eps = 1e-5
    torch.testing.assert_close(bpd_edm, -data.ode_log_likelihood(sde, x, eps) / (D * math.log(2)), rtol=1e-3, atol=1e-3)


def exact_prediction_net(sde, data, prediction):
    """A network that outputs the exact ``prediction`` of the Gaussian's score, reading ``t`` from its label
    (``999 t`` on VP/sub-VP, ``sigma(t)`` on VE)."""
    def fn(x, labels):
        if isinstance(sde, sde_lib.VESDE):
            t = torch.log(labels / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
        else:
            t = labels / 999.0
        alpha, sigma = (c[:, None] for c in sde.marginal_coeffs(t))
        score = data.score(sde, x, t)
        eps = -sigma * score
        x0 = (x + sigma ** 2 * score) / alpha
        return {"score": score, "eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[prediction]
    return Net(fn)


@pytest.mark.parametrize("name,prediction", [(n, p) for n in SDES for p in ("score", "eps", "x0")] + [("vp", "v")])
def test_every_parameterisation_maps_the_exact_prediction_to_the_exact_score(name, prediction):
    sde, data = SDES[name](), gaussian()
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    x = torch.randn(4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    score = get_score_fn(sde, exact_prediction_net(sde, data, prediction), prediction=prediction)(x, t)
    torch.testing.assert_close(score, data.score(sde, x, t), rtol=1e-7, atol=1e-7)


def test_auto_is_eps_on_vp_and_score_on_ve():
    x = torch.randn(2, D, dtype=torch.float64)
    t = torch.tensor([0.1, 0.6], dtype=torch.float64)
    net = Net(lambda x, labels: x * 2 + 1)
    for sde, same in ((sde_lib.VPSDE(), "eps"), (sde_lib.VESDE(), "score")):
        torch.testing.assert_close(get_score_fn(sde, net)(x, t), get_score_fn(sde, net, prediction=same)(x, t),
                                   rtol=0, atol=0)


def test_bad_predictions_are_refused_naming_the_option():
    with pytest.raises(ValueError, match=r"prediction='v' needs alpha\(t\)\^2 \+ sigma\(t\)\^2 = 1, i.e. a VPSDE"):
        get_score_fn(sde_lib.VESDE(), zero_net(), prediction="v")
    with pytest.raises(ValueError, match=r"prediction must be one of .*training.prediction.*'noise'"):
        get_score_fn(sde_lib.VPSDE(), zero_net(), prediction="noise")
    with pytest.raises(ValueError, match="set continuous=True"):
        get_score_fn(sde_lib.VPSDE(), zero_net(), prediction="x0", continuous=False)


# ----------------------------------------------------------------------------- min-SNR-gamma

def test_min_snr_weight_is_its_formula():
    sde = sde_lib.VPSDE()
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    alpha, sigma = sde.marginal_coeffs(t)
    snr = alpha ** 2 / sigma ** 2
    for gamma in (1.0, 5.0):
        torch.testing.assert_close(losses.min_snr_weight(sde, t, gamma), torch.minimum(snr, torch.tensor(gamma)) / snr)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_loss_is_the_papers_weighting_of_each_parameterisation(prediction):
    """For a network with a known prediction error, the min-SNR DSM loss is ``min(SNR, g) / SNR ||eps_hat - z||^2``,
    ``min(SNR, g) ||x0_hat - x_0||^2`` and ``min(SNR, g) / (SNR + 1) ||v_hat - v||^2`` (Hang et al. 2023)."""
    sde, gamma = sde_lib.VPSDE(), 5.0
    x = torch.randn(64, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    constant = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
    net = Net(lambda xt, labels: constant.expand_as(xt))  # predicts a constant, whatever it predicts
    got = losses.dsm_loss(get_score_fn(sde, net, prediction=prediction), sde, x, min_snr_gamma=gamma,
                          generator=torch.Generator().manual_seed(6))
    _, t, z, _ = losses.perturb(sde, x, generator=torch.Generator().manual_seed(6))  # the same draws
    alpha, sigma = (c[:, None] for c in sde.marginal_coeffs(t))
    snr = (alpha / sigma)[:, 0] ** 2
    target = {"eps": z, "x0": x, "v": alpha * z - sigma * x}[prediction]
    weight = {"eps": torch.clamp(snr, max=gamma) / snr, "x0": torch.clamp(snr, max=gamma),
              "v": torch.clamp(snr, max=gamma) / (snr + 1)}[prediction]
    torch.testing.assert_close(got, weight * 0.5 * ((constant - target) ** 2).sum(1), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- the EDM loss

@pytest.mark.parametrize("P_mean", [-1.2, 0.3])
def test_the_edm_loss_is_minimised_by_the_closed_form_denoiser(P_mean):
    """A linear ``F(u) = a u + b`` trained on Gaussian data at (nearly) one noise level ``sigma = exp(P_mean)``
    (``P_std`` tiny) converges to the Gaussian's exact denoiser ``mu + s^2 / (s^2 + sigma^2) (x - mu)``."""
    torch.manual_seed(0)
    data = gaussian()
    a = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))
    net = Net(lambda u, labels: a * u + b)
    loss_fn = losses.get_loss_fn(sde_lib.VESDE(), train=True, loss="edm", P_mean=P_mean, P_std=1e-6)
    optimizer = torch.optim.Adam([a, b], lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.3)
    g = torch.Generator().manual_seed(7)
    for _ in range(400):
        optimizer.zero_grad()
        loss_fn(net, data.sample(1024, generator=g), generator=g).backward()
        optimizer.step()
        scheduler.step()
    sigma = torch.full((2,), math.exp(P_mean), dtype=torch.float64)
    probe = torch.stack([torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)])
    with torch.no_grad():
        learned = EDMDenoiser(net, SIGMA_DATA)(probe, sigma)
    exact = gaussian_denoiser(data, probe, sigma)
    assert (learned - exact).abs().max() < 0.02, (learned, exact)
    # the untrained network (F = 0) is far from it: the test measures the training
    assert (EDMDenoiser(zero_net(), SIGMA_DATA)(probe, sigma) - exact).abs().max() > 0.1


def test_edm_loss_against_hand_computation():
    x = torch.randn(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    net = Net(lambda u, labels: 0.3 * u - labels[:, None])
    got = losses.edm_loss(EDMDenoiser(net, SIGMA_DATA), x, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(5, dtype=torch.float64, generator=g))
    z = torch.randn(5, D, dtype=torch.float64, generator=g)
    noisy = x + sigma[:, None] * z
    total = sigma ** 2 + 0.25
    denoised = 0.25 / total[:, None] * noisy + (0.5 * sigma / total.sqrt())[:, None] * (
        0.3 * noisy / total.sqrt()[:, None] - (torch.log(sigma) / 4)[:, None])
    expected = total / (0.5 * sigma) ** 2 * 0.5 * ((denoised - x) ** 2).sum(1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"loss": "score_matching"}, r"loss must be one of \['dsm', 'ddpm', 'smld', 'edm'\] \(config training.loss\)"),
    ({"loss": "ddpm"}, r"loss='ddpm' is the discrete loss of the VPSDE: set continuous=False"),
    ({"loss": "edm", "continuous": False}, r"loss='edm' trains a continuous-noise denoiser"),
    ({"loss": "edm", "prediction": "x0"}, r"leave prediction='auto' \(config training.prediction\)"),
    ({"loss": "edm", "P_std": 0.0}, r"P_std \(config training.P_std\) must be a positive finite number"),
    ({"loss": "edm", "sigma_data": -1.0}, r"training.sigma_data"),
    ({"min_snr_gamma": -1.0}, r"min_snr_gamma \(config training.min_snr_gamma; 0 = off\) must be"),
    ({"min_snr_gamma": 5.0, "likelihood_weighting": True}, r"min_snr_gamma = 5.0 weights the continuous DSM loss"),
    ({"prediction": "edm"}, r"the EDM denoiser comes with loss='edm'"),
])
def test_bad_loss_options_are_refused_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.get_loss_fn(sde_lib.VPSDE(), train=True, **kwargs)


# ----------------------------------------------------------------------------- from the config

def config_with(**changes):
    config = digits.get_config()
    config.update_from_flattened_dict(changes)
    return config


@pytest.mark.parametrize("changes,match", [
    ({"training.loss": "edmm"}, r"config.training.loss = 'edmm': must be one of \['dsm', 'ddpm', 'smld', 'edm'\]"),
    ({"training.prediction": "noise"}, r"config.training.prediction = 'noise': must be one of"),
    ({"training.loss": "smld"}, r"config.training: loss='smld' is the discrete loss of the VESDE"),
    ({"training.loss": "edm", "training.P_std": -1.0}, r"config.training: P_std \(config training.P_std\)"),
    ({"training.loss": "edm", "model.scale_by_sigma": True}, r"config.model.scale_by_sigma = True: training.loss = 'edm'"),
    ({"training.prediction": "v", "training.sde": "subvpsde"}, r"config.training: prediction='v' needs"),
    ({"training.min_snr_gamma": float("nan")}, r"config.training: min_snr_gamma"),
])
def test_bad_loss_fields_are_refused_naming_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        run_lib.check_config(config_with(**changes))


def test_the_default_config_keeps_the_papers_loss():
    config = digits.get_config()
    t = config.training
    assert (t.loss, t.prediction, t.sigma_data, t.P_mean, t.P_std, t.min_snr_gamma) == ("dsm", "auto", 0.5, -1.2, 1.2, 0.0)
    run_lib.check_config(config)


@pytest.mark.slow
def test_main_trains_with_the_edm_loss_and_its_checkpoint_samples_with_pc_and_dpmpp_2m(tmp_path):
    pytest.importorskip("sklearn")
    tiny = ["--config.model.nf=8", "--config.model.ch_mult=(1, 2)", "--config.model.num_res_blocks=1",
            "--config.training.batch_size=8", "--config.training.n_iters=4", "--config.training.snapshot_freq=4",
            "--config.training.snapshot_sampling=False", "--config.optim.warmup=1", "--config.training.loss=edm"]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--config", "configs/vp/digits.py",
                           "--workdir", str(tmp_path), "--mode", "train", *tiny], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = config_with(**{"model.nf": 8, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
                            "training.loss": "edm", "sampling.options.pc.N": 5, "sampling.options.dpmpp_2m.nfe": 5})
    run = run_lib.setup(config, str(tmp_path))
    assert run_lib.load_for_inference(run, run.checkpoints.numbered_path(1)) == 4
    for sampler in ("pc", "dpmpp_2m"):
        run.config.sampling.sampler = sampler
        x, _, nfe = run_lib.draw_samples(run, range(4), 4, step=4)
        assert x.shape == (4, 1, 16, 16) and torch.isfinite(x).all() and nfe == 5
        assert x.abs().max() < 10  # in the data range [0, 1] up to what a 4-step network leaves
    # the same checkpoint read as a DSM (noise-predicting) network is refused, naming the field
    with pytest.raises(ValueError, match=r"config.training.loss = \"dsm\" \(checkpoint: \"edm\"\)"):
        run_lib.load_for_inference(run_lib.setup(config_with(**{"model.nf": 8, "model.ch_mult": (1, 2),
                                                                 "model.num_res_blocks": 1}), str(tmp_path)),
                                   run.checkpoints.numbered_path(1))
