"""VP SDE on a 2-D toy distribution (``--config.data.toy_name=checkerboard`` etc.) with the MLP
score network."""
from configs.default_toy_configs import get_default_configs


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vpsde"
    training.continuous = True
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.options.pc.N = 500
    return config
