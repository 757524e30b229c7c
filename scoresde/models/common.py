"""Pieces every network shares: the noise-level table, input checks, the class-label embedding."""
from typing import Optional

import math
import torch
import torch.nn as nn

from scoresde.models import config_checks as cc


def smld_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> torch.Tensor:
    """The SMLD noise levels, geometric from ``sigma_max`` down to ``sigma_min`` (float64,
    length ``num_scales``); index ``i`` is the i-th noise level of the discrete VE chain."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales,
                                    dtype=torch.float64))


def sigmas_from_config(config) -> torch.Tensor:
    return smld_sigmas(cc.positive_float(config, "model.sigma_min"),
                       cc.positive_float(config, "model.sigma_max"),
                       cc.check_num_scales(config))


def null_label(num_classes: int) -> int:
    """The "null" (unconditional) label of a network with ``num_classes`` classes: ``num_classes``
    itself, one past the real labels ``0 .. num_classes - 1``. Training with label dropout
    (``scoresde.losses.drop_labels``) teaches the network this label, so one network gives both
    the conditional and the unconditional score (classifier-free guidance)."""
    return int(num_classes)


class LabelEmbedding(nn.Module):
    """Class-label embedding added to a network's conditioning vector: ``num_classes + 1`` rows,
    the last one for the :func:`null_label`. Zero-initialised, so a class-conditional network
    starts out as its unconditional self."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, class_labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(class_labels)


def check_inputs(x: torch.Tensor, noise_labels: torch.Tensor, class_labels: Optional[torch.Tensor],
                 num_channels: int, multiple: int, num_classes: int) -> None:
    """Contract of every network's ``forward(x, noise_labels, class_labels=None)``."""
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != num_channels:
        raise ValueError(f"x must be a [B, {num_channels}, H, W] tensor, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"image height and width must be multiples of {multiple} for this network, "
                         f"got {tuple(x.shape[2:])}")
    if not torch.is_tensor(noise_labels) or noise_labels.shape != (x.shape[0],):
        raise ValueError(f"noise_labels must be a tensor of shape [B] = [{x.shape[0]}], got "
                         f"{tuple(noise_labels.shape) if torch.is_tensor(noise_labels) else type(noise_labels).__name__}")
    check_class_labels(class_labels, x.shape[0], num_classes)


def check_class_labels(class_labels: Optional[torch.Tensor], batch_size: int, num_classes: int) -> None:
    """``class_labels`` must be an integer tensor ``[B]`` with values in ``[0, num_classes]`` (the
    last one is the :func:`null_label`) for a class-conditional network, and ``None`` otherwise."""
    if num_classes:
        if class_labels is None:
            raise ValueError(f"this network is class-conditional (num_classes={num_classes}): "
                             f"pass class_labels of shape [B]")
        if (not torch.is_tensor(class_labels) or class_labels.shape != (batch_size,)
                or class_labels.is_floating_point() or class_labels.dtype == torch.bool):
            raise ValueError(f"class_labels must be an integer tensor of shape [B] = [{batch_size}]")
        if batch_size and (class_labels.min() < 0 or class_labels.max() > num_classes):
            raise ValueError(f"class_labels must be in [0, {num_classes}] (0..{num_classes - 1} the classes, "
                             f"{num_classes} the null label), got values from {int(class_labels.min())} "
                             f"to {int(class_labels.max())}")
    elif class_labels is not None:
        raise ValueError("class_labels given to a network built without config.model.num_classes")
