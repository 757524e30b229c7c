"""A small DDPM++ (VP SDE, continuous DSM) on scikit-learn's digits at 16x16, trained in about ten minutes on
two CPU cores: the first run before ``configs/edm/digits.py``, and the base of the tests' tiny configs."""
from configs.common import vp_ddpmpp_continuous
from configs.default_digits_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.sampling.options.pc.N = 200  # 200 Euler-Maruyama steps for the grids instead of the SDE's 1000
    vp_ddpmpp_continuous(config, nf=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                         resblock_type="ddpm", dropout=0.0, ema_rate=0.999)
    return config
