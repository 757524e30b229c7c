"""Every config loads, passes the start-up checks, keeps the paper's settings, and links the paper's
sampling fields to the sampler options."""
import importlib

import pytest

import run_lib
from scoresde.models import create_model
from scoresde.sampling.base import SAMPLERS

EXPERIMENTS = ["vp.cifar10", "subvp.cifar10", "ve.cifar10", "vp.cifar10_deep", "ve.cifar10_deep",
               "vp.ddpm.cifar10", "ve.ncsnv2.cifar10", "vp.digits", "vp.digits_cond", "vp.digits_classifier", "edm.digits",
               "vp.toy", "vp.mnist",
               "ve.celeba_ncsnpp", "vp.celeba_ddpmpp", "ve.church_ncsnpp_continuous",
               "ve.bedroom_ncsnpp_continuous", "ve.ffhq_256_ncsnpp_continuous"]


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_config_passes_the_start_up_checks(name):
    config = load(name)
    run_lib.check_config(config)
    for field in ("root", "download", "num_workers"):
        assert field in config.data
    for field in ("eval_folder", "bpd_num_repeats", "metrics", "inception_weights", "require_metrics"):
        assert field in config.eval
    assert config.training.mixed_precision == "auto"  # bf16 only on a CPU with native bf16 (scoresde.precision)
    assert set(config.sampling.options) == set(SAMPLERS.list())


@pytest.mark.parametrize("name,expected", [
    ("ve.celeba_ncsnpp", dict(sigma_max=90.0, snr=0.17, num_scales=1000, image_size=64, continuous=False)),
    ("ve.church_ncsnpp_continuous", dict(sigma_max=380.0, snr=0.075, num_scales=2000, image_size=256,
                                         batch_size=64, category="church_outdoor")),
    ("ve.bedroom_ncsnpp_continuous", dict(sigma_max=378.0, snr=0.075, num_scales=2000, image_size=256,
                                          category="bedroom")),
    ("ve.ffhq_256_ncsnpp_continuous", dict(sigma_max=348.0, snr=0.075, num_scales=2000, image_size=256,
                                           dataset="FFHQ")),
])
def test_paper_settings(name, expected):
    config = load(name)
    found = dict(sigma_max=config.model.sigma_max, snr=config.sampling.snr, num_scales=config.model.num_scales,
                 image_size=config.data.image_size, continuous=config.training.continuous,
                 batch_size=config.training.batch_size, category=config.data.get("category"),
                 dataset=config.data.dataset)
    assert {k: found[k] for k in expected} == expected
    assert config.training.sde == "vesde" and config.sampling.predictor == "reverse_diffusion"
    assert config.sampling.corrector == "langevin" and config.model.scale_by_sigma


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.endswith(("cifar10", "cifar10_deep"))])
def test_cifar10_evaluation_draws_the_papers_50000_samples(name):
    config = load(name)
    assert config.eval.enable_sampling and config.eval.num_samples == 50000


def test_checkpoint_freq_is_snapshot_freq():
    config = load("vp.cifar10")
    assert config.training.checkpoint_freq == config.training.snapshot_freq == 50000
    config.training.checkpoint_freq = 10
    assert config.training.snapshot_freq == 10


def test_paper_sampling_fields_and_sampler_options_are_one():
    config = load("ve.cifar10")
    assert config.sampling.sampler == config.sampling.method == "pc"
    assert config.sampling.options.pc.predictor == "reverse_diffusion"
    config.sampling.snr = 0.3
    config.sampling.n_steps_each = 2
    config.sampling.noise_removal = False
    pc = config.sampling.options.pc
    assert (pc.snr, pc.n_steps, pc.denoise, config.sampling.options.ode.denoise) == (0.3, 2, False, False)
    config.sampling.options.pc.corrector = "ald"
    assert config.sampling.corrector == "ald"
    config.sampling.sampler = "ode"
    assert config.sampling.method == "ode"


@pytest.mark.parametrize("name", ["vp.digits", "vp.digits_cond", "vp.digits_classifier", "edm.digits", "vp.toy", "vp.mnist"])
def test_small_networks_build(name):
    assert sum(p.numel() for p in create_model(load(name)).parameters()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ve.celeba_ncsnpp", "vp.celeba_ddpmpp", "ve.church_ncsnpp_continuous"])
def test_large_networks_build(name):
    assert sum(p.numel() for p in create_model(load(name)).parameters()) > 10_000_000
