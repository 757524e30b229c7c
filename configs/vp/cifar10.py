"""DDPM++ continuous (VP SDE) on CIFAR-10: the paper's ``vp/cifar10_ddpmpp_continuous``."""
from configs.common import ddpmpp_model
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    # training
    training = config.training
    training.sde = "vpsde"
    training.continuous = True
    training.reduce_mean = True

    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"

    # data
    data = config.data
    data.centered = True

    # model: the paper's network, field by field (configs/common.py)
    config.model.update(ddpmpp_model())

    return config
