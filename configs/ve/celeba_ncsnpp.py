"""NCSN++ on CelebA 64x64 with the SMLD (discrete VE) loss: the paper's ``ve/celeba_ncsnpp``."""
from configs.common import ncsnpp_model
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = "vesde"
    config.training.continuous = False
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    # the discrete network is fed the noise-level index, hence the positional embedding
    config.model.update(ncsnpp_model(embedding_type="positional"))
    return config
