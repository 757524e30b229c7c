"""Defaults shared by every CIFAR-10 config (the paper's ``configs/default_cifar10_configs.py``).

A config file under ``configs/<sde>/`` starts from ``get_default_configs()`` and sets the SDE,
the sampler and the network. Load one with ml-collections, e.g.
``--config configs/vp/cifar10.py``.
"""
import ml_collections
import torch

from configs.common import add_run_fields


def get_default_configs():
    config = ml_collections.ConfigDict()

    # training
    config.training = training = ml_collections.ConfigDict()
    training.sde = "vpsde"
    training.batch_size = 128
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    # extra checkpoints to resume from after preemption
    training.snapshot_freq_for_preemption = 10000
    # draw samples at each snapshot
    training.snapshot_sampling = True
    training.likelihood_weighting = False
    training.continuous = True
    training.reduce_mean = False

    # sampling
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16

    # evaluation
    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = 9
    evaluate.end_ckpt = 26
    evaluate.batch_size = 1024
    evaluate.enable_sampling = True        # the paper's FID protocol: 50,000 samples a checkpoint, shared out
    evaluate.num_samples = 50000           # over the ranks; the sampler and its NFE go into the results JSON
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = "test"

    # data
    config.data = data = ml_collections.ConfigDict()
    data.dataset = "CIFAR10"
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3

    # model: the SDE's parameters and the options every network reads
    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.embedding_type = "fourier"
    # > 0: class-conditional network (a label embedding added to the time embedding)
    model.num_classes = 0

    # optimization
    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.0

    config.seed = 42
    config.device = "cuda:0" if torch.cuda.is_available() else "cpu"
    # this project's fields (data root, mixed precision, sampler options, eval outputs): configs/common.py
    return add_run_fields(config)
