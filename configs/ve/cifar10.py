"""NCSN++ continuous (VE SDE) on CIFAR-10: the paper's ``ve/cifar10_ncsnpp_continuous``."""
from configs.common import ve_ncsnpp
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    ve_ncsnpp(config)  # the paper's network, field by field: configs/common.py
    return config
