"""Class-conditional digits (the controllable-generation demo): ``configs/vp/digits.py`` with a label
embedding (``model.num_classes = 10``; label 10 is the null label) and label dropout, so one network
gives both scores of classifier-free guidance. Trained in a few minutes on two CPU cores."""
from configs.vp import digits


def get_config():
    config = digits.get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.15
    return config
