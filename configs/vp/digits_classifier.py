"""A noise-conditional classifier of the digits (``training.objective = 'classifier'``), for classifier
guidance of ``configs/vp/digits.py`` or ``digits_cond.py``: the encoder half of that DDPM++ network with
the same time embedding and the same VP SDE, trained by cross-entropy on noised digits.

    python main.py --config configs/vp/digits_classifier.py --workdir runs/digits_clf --mode train
"""
from configs.vp import digits


def get_config():
    config = digits.get_config()
    config.model.name = "classifier"
    config.model.num_classes = 10
    training = config.training
    training.objective = "classifier"
    training.n_iters = 1000
    training.snapshot_freq = 500
    evaluate = config.eval
    evaluate.enable_bpd = False      # a classifier has a loss and an accuracy only
    evaluate.enable_sampling = False
    return config
