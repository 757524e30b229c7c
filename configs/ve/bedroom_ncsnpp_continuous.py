"""NCSN++ continuous (VE SDE) on LSUN bedroom 256x256: the paper's ``ve/bedroom_ncsnpp_continuous``."""
from configs.common import ncsnpp_model
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vesde"
    config.training.continuous = True
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    config.data.category = "bedroom"
    config.model.update(ncsnpp_model(ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, progressive="output_skip",
                                     progressive_input="input_skip"))
    return config
