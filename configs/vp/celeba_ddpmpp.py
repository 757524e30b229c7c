"""DDPM++ continuous (VP SDE) on CelebA 64x64: the CIFAR-10 network of ``vp/cifar10.py`` on the
CelebA defaults (the paper reports CelebA with NCSN++/VE; this is its VP counterpart)."""
from configs.common import vp_ddpmpp_continuous
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.centered = True
    vp_ddpmpp_continuous(config)
    return config
