"""Defaults for MNIST, zero-padded to 32x32 grey (the paper has no MNIST config; these follow its
CIFAR-10 defaults with the data changed, no flips, and sigma_max by Technique 1 of Song & Ermon
(2020): about the largest pairwise distance of the padded images in [0, 1])."""
from configs.default_cifar10_configs import get_default_configs as cifar10_defaults


def get_default_configs():
    config = cifar10_defaults()
    training = config.training
    training.n_iters = 300001
    training.snapshot_freq = 25000
    training.snapshot_freq_for_preemption = 5000
    config.eval.begin_ckpt = 1
    config.eval.end_ckpt = 12
    data = config.data
    data.dataset = "MNIST"
    data.image_size = 32
    data.num_channels = 1
    data.random_flip = False  # digits are not mirror-symmetric
    data.centered = False
    config.model.sigma_max = 25.0
    return config
