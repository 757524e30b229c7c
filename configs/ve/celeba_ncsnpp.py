"""NCSN++ on CelebA 64x64 with the SMLD (discrete VE) loss: the paper's ``ve/celeba_ncsnpp``."""
from configs.common import ve_ncsnpp
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    # the discrete network is fed the noise-level index, hence the positional embedding
    ve_ncsnpp(config, continuous=False, embedding_type="positional")
    return config
