"""``create_model(config)``: the one place that turns ``config.model`` into a network."""
import torch.nn as nn

from scoresde.models import config_checks as cc
from scoresde.models.registry import MODELS


def create_model(config, device=None) -> nn.Module:
    """Build the network registered as ``config.model.name`` from ``config``.

    The network's constructor checks every field it reads and raises ``ValueError`` naming the
    field (``config.model.<field> = ... is not one of [...]``). ``device`` (optional; a string or
    ``torch.device``) moves the network there; nothing is wrapped in ``DataParallel``.
    """
    name = cc.field(config, "model.name")
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"config.model.name = {name!r} is not one of {MODELS.list()}")
    model = MODELS.get(name)(config)
    if device is not None:
        model = model.to(device)
    return model


def count_parameters(model: nn.Module) -> int:
    """All parameters, frozen ones (the VE Fourier features) included, as the paper counts."""
    return sum(p.numel() for p in model.parameters())
