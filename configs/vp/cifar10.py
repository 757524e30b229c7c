"""DDPM++ continuous (VP SDE) on CIFAR-10: the paper's ``vp/cifar10_ddpmpp_continuous``."""
from configs.common import vp_ddpmpp_continuous
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.centered = True
    vp_ddpmpp_continuous(config)  # the paper's network, field by field: configs/common.py
    return config
