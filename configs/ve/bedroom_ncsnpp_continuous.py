"""NCSN++ continuous (VE SDE) on LSUN bedroom 256x256: the paper's ``ve/bedroom_ncsnpp_continuous``."""
from configs.common import ve_ncsnpp
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.category = "bedroom"
    ve_ncsnpp(config, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, progressive="output_skip",
              progressive_input="input_skip")
    return config
