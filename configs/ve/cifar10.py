"""NCSN++ continuous (VE SDE) on CIFAR-10: the paper's ``ve/cifar10_ncsnpp_continuous``."""
from configs.common import ncsnpp_model
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    # training
    training = config.training
    training.sde = "vesde"
    training.continuous = True

    # sampling
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"

    # model: the paper's network, field by field (configs/common.py)
    config.model.update(ncsnpp_model())

    return config
