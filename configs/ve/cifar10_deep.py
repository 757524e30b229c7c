"""NCSN++ continuous deep (VE SDE, 8 residual blocks per resolution) on CIFAR-10:
the paper's ``ve/cifar10_ncsnpp_deep_continuous``."""
from configs.ve.cifar10 import get_config as get_ve_config


def get_config():
    config = get_ve_config()
    config.model.num_res_blocks = 8
    return config
