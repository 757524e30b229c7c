"""DDPM++ continuous (VP SDE) on MNIST 32x32: a smaller DDPM++ (64 channels, three resolutions)."""
from configs.common import vp_ddpmpp_continuous
from configs.default_mnist_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.centered = True
    vp_ddpmpp_continuous(config, nf=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                         ema_rate=0.999)
    return config
