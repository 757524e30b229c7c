"""DDPM++ continuous deep (VP SDE, 8 residual blocks per resolution) on CIFAR-10:
the paper's ``vp/cifar10_ddpmpp_deep_continuous``."""
from configs.vp.cifar10 import get_config as get_vp_config


def get_config():
    config = get_vp_config()
    config.training.n_iters = 950001
    config.model.num_res_blocks = 8
    return config
