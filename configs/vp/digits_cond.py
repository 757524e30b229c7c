"""Class-conditional digits (the controllable-generation demo): ``configs/vp/digits.py`` with a label
embedding (``model.num_classes = 10``; label 10 is the null label) and label dropout, so one network
gives both scores of classifier-free guidance.

At the digits' own 8x8 resolution (``data.image_size = 8``: the 16x16 digits of ``digits.py`` are these
pixels doubled, so nothing is lost), which makes a step about three times cheaper and buys the steps the
class conditioning needs within a few minutes on two CPU cores.
"""
from configs.vp import digits


def get_config():
    config = digits.get_config()
    config.data.image_size = 8
    config.model.num_classes = 10
    training = config.training
    training.label_dropout = 0.15
    training.n_iters = 3000
    training.snapshot_freq = 1000
    training.snapshot_freq_for_preemption = 500
    config.eval.begin_ckpt = config.eval.end_ckpt = 3  # the final network (step 3000)
    return config
