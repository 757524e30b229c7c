"""Defaults for 2-D toy distributions (``data.toy_name``: eight_gaussians, checkerboard, swiss_roll, ...)
with the small MLP score network (``model.name = 'mlp'``)."""
from configs.default_cifar10_configs import get_default_configs as cifar10_defaults


def get_default_configs():
    config = cifar10_defaults()
    training = config.training
    training.batch_size = 256
    training.n_iters = 5001
    training.snapshot_freq = 2500
    training.snapshot_freq_for_preemption = 500
    training.log_freq = 100
    training.eval_freq = 250
    training.snapshot_num_samples = 1024
    training.reduce_mean = True
    evaluate = config.eval
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 2
    evaluate.batch_size = 1000
    evaluate.enable_bpd = False  # bits/dim is for 8-bit images; toys report the loss
    evaluate.enable_sampling = True
    evaluate.num_samples = 1024
    evaluate.metrics = ()
    data = config.data
    data.dataset = "TOY"
    data.toy_name = "eight_gaussians"
    data.num_toy_points = 10000
    data.shape = (2,)
    data.image_size = 0
    data.num_channels = 0
    data.random_flip = False
    data.centered = True
    data.uniform_dequantization = False
    model = config.model
    model.name = "mlp"
    model.nf = 128
    model.num_layers = 3
    model.nonlinearity = "swish"
    model.embedding_type = "positional"
    model.fourier_scale = 16.0
    model.scale_by_sigma = False
    model.ema_rate = 0.999
    model.dropout = 0.0
    model.sigma_max = 8.0
    model.num_scales = 1000
    config.optim.lr = 1e-3
    config.optim.warmup = 100
    return config
