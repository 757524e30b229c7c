"""DDPM++ continuous (sub-VP SDE) on CIFAR-10: the paper's ``subvp/cifar10_ddpmpp_continuous``."""
from configs.vp.cifar10 import get_config as get_vp_config


def get_config():
    config = get_vp_config()
    config.training.sde = "subvpsde"
    return config
