"""DDPM++ continuous (VP SDE) on MNIST 32x32: a smaller DDPM++ (64 channels, three resolutions)."""
from configs.common import ddpmpp_model
from configs.default_mnist_configs import get_default_configs


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
    config.model.update(ddpmpp_model(nf=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                                     ema_rate=0.999))
    return config
