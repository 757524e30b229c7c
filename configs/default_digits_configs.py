"""Defaults for scikit-learn's 8x8 handwritten digits upsampled to 16x16 grey: the embedded data set of
the first run and the tests (no download; needs the ``digits`` extra, i.e. scikit-learn).

Sized for a CPU: small batches, frequent snapshots, a short sampler (``N`` = 100 steps) for the grid.
"""
from configs.default_cifar10_configs import get_default_configs as cifar10_defaults


def get_default_configs():
    config = cifar10_defaults()
    training = config.training
    training.batch_size = 32
    training.n_iters = 1200
    training.snapshot_freq = 600
    training.snapshot_freq_for_preemption = 200
    training.log_freq = 25
    training.eval_freq = 100
    training.snapshot_num_samples = 64
    evaluate = config.eval
    evaluate.begin_ckpt = 2  # the final network (step 1200)
    evaluate.end_ckpt = 2
    evaluate.batch_size = 128
    evaluate.enable_loss = True
    evaluate.enable_bpd = True
    evaluate.bpd_num_repeats = 1
    evaluate.bpd_num_images = 128
    evaluate.bpd_rtol = 1e-4
    evaluate.bpd_atol = 1e-4
    evaluate.enable_sampling = True
    evaluate.num_samples = 64
    evaluate.metrics = ()  # FID of 16x16 digits through Inception says little
    data = config.data
    data.dataset = "DIGITS"
    data.image_size = 16
    data.num_channels = 1
    data.random_flip = False
    data.centered = True
    data.uniform_dequantization = False
    config.model.sigma_max = 12.0  # about the largest pairwise distance of the 16x16 digits in [0, 1]
    config.optim.warmup = 100
    config.optim.lr = 2e-3
    return config
