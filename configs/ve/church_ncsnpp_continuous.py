"""NCSN++ continuous (VE SDE) on LSUN church 256x256: the paper's ``ve/church_ncsnpp_continuous``."""
from configs.common import ve_ncsnpp
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.category = "church_outdoor"
    ve_ncsnpp(config, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, progressive="output_skip",
              progressive_input="input_skip")
    config.model.sigma_max = 380.0  # the church images are a little farther apart than bedrooms (378)
    return config
