"""Noise-conditional classifiers ``p_t(y | x_t)`` for classifier guidance (registered as ``classifier``).

The network is the encoder (downsampling) half of the DDPM++ U-Net: the same time embedding as the
score networks (sinusoidal of the time step, or Gaussian Fourier features of ``log sigma`` for VE),
DDPM++ residual blocks that take it, optional self-attention, then GroupNorm, global average pooling
and a linear head with ``model.num_classes`` outputs. It is called like a score network,
``model(x, noise_labels) -> logits [B, num_classes]``, with ``noise_labels`` from
``scoresde.models.score_fn.noise_labels`` (the one convention of both), and
:func:`get_classifier_fn` turns it into ``classifier_fn(x, t) -> logits``, the form
``scoresde.guidance.classifier_guidance`` takes. Train it with ``scoresde.losses.classifier_loss``
(cross-entropy on noised data), or from the command line with ``training.objective = 'classifier'``.

Fields read: ``model.nf``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout``,
``resamp_with_conv`` (as the U-Nets), ``model.embedding_type`` (``positional`` / ``fourier``),
``fourier_scale``, ``nonlinearity``, ``skip_rescale``, ``model.num_classes`` (required: the outputs),
``data.num_channels``, ``data.centered``, ``training.continuous``.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn

from scoresde import sde_lib
from scoresde.models import config_checks as cc
from scoresde.models import layers
from scoresde.models.common import check_inputs
from scoresde.models.registry import register_model
from scoresde.models.score_fn import check_sde, noise_labels


@register_model("classifier")
class NoiseConditionalClassifier(nn.Module):
    """Time-conditional encoder: ``forward(x [B, C, H, W], noise_labels [B]) -> logits [B, K]``."""

    is_classifier = True

    def __init__(self, config):
        super().__init__()
        m = "model."
        nf, ch_mult, num_res_blocks, num_resolutions, attn_levels, dropout, resamp_with_conv = cc.unet_fields(config)
        self.nf, self.num_resolutions = nf, num_resolutions
        self.num_classes = cc.num_classes(config)
        if not self.num_classes:
            raise ValueError("config.model.num_classes must be set for a classifier: it is the number of "
                             "outputs (logits)")
        self.embedding_type = cc.choice(config, m + "embedding_type", ["fourier", "positional"])
        if self.embedding_type == "fourier" and not cc.field(config, "training.continuous", True):
            raise ValueError("config.model.embedding_type = 'fourier' embeds continuous noise levels; it "
                             "needs config.training.continuous = True")
        self.act = act = layers.get_act(cc.choice(config, m + "nonlinearity", list(layers.ACTIVATIONS), "swish"))
        skip_rescale = bool(cc.field(config, m + "skip_rescale", True))
        self.centered = bool(cc.field(config, "data.centered"))
        self.num_channels = channels = cc.positive_int(config, "data.num_channels")
        for width in [nf] + [nf * mult for mult in ch_mult]:
            if width % min(width // 4, 32):
                raise ValueError(f"config.model.nf = {nf} with ch_mult = {tuple(ch_mult)}: channel width {width} "
                                 f"cannot be split into GroupNorm groups of min(width // 4, 32)")

        if self.embedding_type == "fourier":
            self.fourier = layers.GaussianFourierProjection(nf, float(cc.field(config, m + "fourier_scale", 16.0)))
        self.temb = nn.Sequential(layers.dense(nf if self.embedding_type == "positional" else 2 * nf, 4 * nf),
                                  layers.get_act("swish"), layers.dense(4 * nf, 4 * nf))

        def resblock(in_ch, out_ch=None):
            return layers.ResnetBlockDDPMpp(act=act, in_ch=in_ch, out_ch=out_ch, temb_dim=4 * nf, dropout=dropout,
                                            skip_rescale=skip_rescale)

        self.conv_in = layers.conv3x3(channels, nf)
        blocks = []
        in_ch = nf
        for level in range(num_resolutions):
            for _ in range(num_res_blocks):
                blocks.append(resblock(in_ch, nf * ch_mult[level]))
                in_ch = nf * ch_mult[level]
                if level in attn_levels:
                    blocks.append(layers.AttnBlockpp(in_ch, skip_rescale=skip_rescale))
            if level != num_resolutions - 1:
                blocks.append(layers.Downsample(in_ch, with_conv=resamp_with_conv))
        blocks.append(resblock(in_ch))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = layers.group_norm(in_ch)
        self.head = nn.Linear(in_ch, self.num_classes)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if class_labels is not None:
            raise ValueError("a classifier takes no class_labels: it predicts them")
        check_inputs(x, noise_labels, None, self.num_channels, 2 ** (self.num_resolutions - 1), 0)
        if self.embedding_type == "fourier":
            temb = self.fourier(torch.log(noise_labels))
        else:
            temb = layers.timestep_embedding(noise_labels, self.nf)
        temb = self.temb(temb.to(x.dtype))
        h = self.conv_in(x if self.centered else 2 * x - 1.0)
        for block in self.blocks:
            h = block(h, temb) if isinstance(block, layers.ResnetBlockDDPMpp) else block(h)
        h = self.act(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h)


class ClassifierFunction:
    """``classifier_fn(x, t) -> logits [B, K]`` of a noise-conditional classifier at times ``t`` [B]."""

    def __init__(self, sde: sde_lib.SDE, model: nn.Module, *, continuous: bool = True,
                 train: Optional[bool] = False):
        check_sde(sde, "get_classifier_fn")
        self.sde, self.model, self.continuous, self.train = sde, model, bool(continuous), train

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.train is not None:
            self.model.train(self.train)
        return self.model(x, noise_labels(self.sde, x, t, self.continuous))


def get_classifier_fn(sde: sde_lib.SDE, model: nn.Module, *, continuous: bool = True,
                      train: Optional[bool] = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a noise-conditional classifier ``model(x, noise_labels) -> logits`` into
    ``classifier_fn(x, t) -> logits [B, K]`` for ``sde``; the network is fed the same noise labels as a
    score network of the same ``continuous`` setting (``scoresde.models.score_fn.noise_labels``).
    ``train``: put the model in train (True) / eval (False) mode on every call, or leave it (None)."""
    return ClassifierFunction(sde, model, continuous=continuous, train=train)
