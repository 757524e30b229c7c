"""Defaults for FFHQ at 256x256: the paper trains FFHQ 256 on its LSUN defaults with FFHQ's data and
sigma_max = 348 (``configs/ve/ffhq_256_ncsnpp_continuous.py`` of the paper's code)."""
from configs.default_lsun_configs import get_default_configs as lsun_defaults


def get_default_configs():
    config = lsun_defaults()
    config.data.dataset = "FFHQ"
    config.data.image_size = 256
    config.model.sigma_max = 348.0
    return config
