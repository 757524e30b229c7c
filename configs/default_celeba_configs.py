"""Defaults for CelebA 64x64 (the paper's ``configs/default_celeba_configs.py``): the CIFAR-10
defaults with CelebA's data, noise scale and evaluation settings."""
from configs.default_cifar10_configs import get_default_configs as cifar10_defaults


def get_default_configs():
    config = cifar10_defaults()
    config.sampling.snr = 0.17
    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 26
    evaluate.enable_sampling = True
    data = config.data
    data.dataset = "CELEBA"
    data.image_size = 64
    data.random_flip = True
    data.centered = False
    data.num_channels = 3
    config.model.sigma_max = 90.0  # Technique 1 of Song & Ermon (2020): max pairwise distance
    return config
