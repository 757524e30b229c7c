"""NCSN++ continuous (VE SDE) on FFHQ 256x256: the paper's ``ve/ffhq_256_ncsnpp_continuous``
(sigma_max = 348 comes with the FFHQ defaults)."""
from configs.common import ve_ncsnpp
from configs.default_ffhq_configs import get_default_configs


def get_config():
    config = get_default_configs()
    ve_ncsnpp(config, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, progressive="output_skip",
              progressive_input="input_skip")
    return config
