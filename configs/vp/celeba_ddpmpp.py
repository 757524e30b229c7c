"""DDPM++ continuous (VP SDE) on CelebA 64x64: the CIFAR-10 network of ``vp/cifar10.py`` on the
CelebA defaults (the paper reports CelebA with NCSN++/VE; this is its VP counterpart)."""
from configs.common import ddpmpp_model
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vpsde"
    training.continuous = True
    training.reduce_mean = True
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    config.data.centered = True
    config.model.update(ddpmpp_model())
    return config
