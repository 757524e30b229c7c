"""The first run (``scripts/quickstart.sh``): a small DDPM++ on scikit-learn's digits at their own 8x8, trained
with EDM's preconditioning and loss (``training.loss = "edm"``, Karras et al. 2022) on the VP SDE, and sampled
with SDE-DPM-Solver++(2M) at 50 score evaluations.

Chosen by ``benchmarks/first_run.py`` (the table is in the README) against today's 16x16 DSM run and other
8x8 candidates: the 16x16 digits of ``configs/vp/digits.py`` are these pixels doubled, so 8x8 loses nothing
and makes a step about three times cheaper, which buys 2,400 steps in the budget; EDM's loss weighting gave
the most recognisable digits among the 8x8 candidates (3,000 steps were a little better but over the
10-minute budget with the evaluation). Its evaluation judges 1,000 samples with the digits judge
(``scoresde.metrics.digits``).
"""
from configs.vp import digits


def get_config():
    config = digits.get_config()
    config.data.image_size = 8
    training = config.training
    training.loss = "edm"
    training.n_iters = 2400
    training.snapshot_freq = 2400                 # one numbered checkpoint: the final network
    training.snapshot_freq_for_preemption = 500
    config.eval.begin_ckpt = config.eval.end_ckpt = 1
    config.eval.num_samples = 1000                # enough for the digits judge's class frequencies
    config.sampling.sampler = "dpmpp_2m_sde"
    config.sampling.options.dpmpp_2m_sde.nfe = 50
    return config
