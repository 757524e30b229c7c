"""A small MLP score network for 2-D toy data and other short vectors (registered as ``mlp``).

Same calling convention as the image networks, ``model(x, noise_labels, class_labels=None)``, so
``get_score_fn`` and the losses treat it alike: ``x`` is ``[B, ...]`` (flattened inside),
``noise_labels`` is ``[B]``. With ``embedding_type='fourier'`` the labels are sigmas and are embedded
as ``log sigma`` (VE, continuous); with ``'positional'`` they are time steps (VP, or discrete VE).
``scale_by_sigma`` divides the output by sigma, as NCSN++ does.

Fields read: ``model.nf`` (width), ``model.num_layers`` (hidden layers), ``model.embedding_type``,
``model.fourier_scale``, ``model.nonlinearity``, ``model.scale_by_sigma``, ``model.num_classes``,
``data.centered``, and ``data.shape`` (the per-sample shape, e.g. ``(2,)``) or ``data.num_channels`` and
``data.image_size`` (for images).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from scoresde.models import config_checks as cc
from scoresde.models import layers, register_model
from scoresde.models.common import LabelEmbedding, check_class_labels, sigmas_from_config
from scoresde.utils import batch_broadcast


def sample_shape(config) -> Tuple[int, ...]:
    """Per-sample data shape: ``data.shape`` when set, else ``(num_channels, image_size, image_size)``."""
    shape = cc.field(config, "data.shape", None)
    if shape:
        return tuple(cc.int_tuple(config, "data.shape", allow_empty=False))
    size = cc.positive_int(config, "data.image_size")
    return (cc.positive_int(config, "data.num_channels"), size, size)


@register_model("mlp")
class MLPScore(nn.Module):
    """``h = x``; for each hidden layer ``h = act(W h + b + E t)`` with a per-layer projection ``E`` of
    the noise embedding; a zero-initialised output layer (the network starts at score 0)."""

    def __init__(self, config):
        super().__init__()
        m = "model."
        self.shape = sample_shape(config)
        dim = int(torch.Size(self.shape).numel())
        self.nf = width = cc.positive_int(config, m + "nf")
        num_layers = cc.positive_int(config, m + "num_layers")
        self.embedding_type = cc.choice(config, m + "embedding_type", ["positional", "fourier"])
        self.scale_by_sigma = bool(cc.field(config, m + "scale_by_sigma", False))
        self.centered = bool(cc.field(config, "data.centered", True))
        self.num_classes = cc.num_classes(config)
        self.act = layers.get_act(cc.choice(config, m + "nonlinearity", list(layers.ACTIVATIONS), "swish"))
        if self.embedding_type == "fourier":
            self.fourier = layers.GaussianFourierProjection(width // 2, float(cc.field(config, m + "fourier_scale", 16.0)))
        if self.scale_by_sigma and self.embedding_type == "positional":
            self.register_buffer("sigmas", sigmas_from_config(config).float(), persistent=False)
        self.embed = nn.Sequential(nn.Linear(2 * (width // 2), width), nn.SiLU(), nn.Linear(width, width))
        if self.num_classes:
            self.label_embed = LabelEmbedding(self.num_classes, width)
        self.hidden = nn.ModuleList(nn.Linear(dim if i == 0 else width, width) for i in range(num_layers))
        self.temb_proj = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}")
        if noise_labels.shape != (x.shape[0],):
            raise ValueError(f"noise_labels must have shape [B] = [{x.shape[0]}], got {tuple(noise_labels.shape)}")
        if self.embedding_type == "fourier":
            temb = self.fourier(torch.log(noise_labels))
        else:
            temb = layers.timestep_embedding(noise_labels, 2 * (self.nf // 2))
        temb = self.embed(temb.to(x.dtype))
        check_class_labels(class_labels, x.shape[0], self.num_classes)
        if self.num_classes:
            temb = temb + self.label_embed(class_labels)
        h = x.reshape(x.shape[0], -1)
        if not self.centered:
            h = 2 * h - 1.0
        for linear, proj in zip(self.hidden, self.temb_proj):
            h = self.act(linear(h) + proj(temb))
        h = self.out(h).reshape(x.shape)
        if self.scale_by_sigma:
            sigma = noise_labels if self.embedding_type == "fourier" else self.sigmas[noise_labels.long()]
            h = h / batch_broadcast(sigma, h)
        return h
