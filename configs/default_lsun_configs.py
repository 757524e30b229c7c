"""Defaults for LSUN 256x256 (the paper's ``configs/default_lsun_configs.py``): batch 64, 2000 noise
scales, no dropout, sigma_max 378 (bedroom; the church config sets 380)."""
from configs.default_cifar10_configs import get_default_configs as cifar10_defaults


def get_default_configs():
    config = cifar10_defaults()
    training = config.training
    training.batch_size = 64
    training.n_iters = 2400001
    training.snapshot_freq = 50000
    training.snapshot_freq_for_preemption = 5000
    config.sampling.snr = 0.075
    evaluate = config.eval
    evaluate.begin_ckpt = 50
    evaluate.end_ckpt = 96
    evaluate.batch_size = 512
    evaluate.enable_sampling = True
    data = config.data
    data.dataset = "LSUN"
    data.category = "bedroom"
    data.image_size = 256
    data.random_flip = True
    data.centered = False
    data.num_channels = 3
    model = config.model
    model.sigma_max = 378.0
    model.num_scales = 2000
    model.dropout = 0.0
    return config
