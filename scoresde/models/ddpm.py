"""The U-Net of DDPM (Ho et al. 2020, App. B), as in the paper's ``models/ddpm.py``.

Always uses the sinusoidal time embedding (whatever ``model.embedding_type`` says) and
GroupNorm with 32 groups, so ``nf`` must be a multiple of 32.
"""
from typing import Optional

import torch
import torch.nn as nn

from scoresde.models import config_checks as cc
from scoresde.models import layers
from scoresde.models.common import LabelEmbedding, check_inputs, sigmas_from_config
from scoresde.models.registry import register_model


@register_model("ddpm")
class DDPM(nn.Module):
    """DDPM score network. ``forward(x, noise_labels, class_labels=None)`` with ``noise_labels``
    the time step [B] (``t * (N - 1)``, float or integer); returns the noise prediction shaped
    like ``x`` (divided by ``sigmas[noise_labels]`` when ``scale_by_sigma``)."""

    def __init__(self, config):
        super().__init__()
        m = "model."
        nf, ch_mult, num_res_blocks, num_resolutions, attn_levels, dropout, resamp_with_conv = cc.unet_fields(config)
        self.nf, self.num_res_blocks, self.num_resolutions, self.attn_levels = (
            nf, num_res_blocks, num_resolutions, attn_levels)
        if nf % 32:
            raise ValueError(f"config.model.nf = {nf} must be a multiple of 32: the DDPM network "
                             f"uses GroupNorm with 32 groups")
        act_name = cc.choice(config, m + "nonlinearity", list(layers.ACTIVATIONS))
        cc.choice(config, m + "normalization", ["groupnorm"], default="GroupNorm")
        self.scale_by_sigma = bool(cc.field(config, m + "scale_by_sigma"))
        self.centered = bool(cc.field(config, "data.centered"))
        self.num_channels = channels = cc.positive_int(config, "data.num_channels")
        self.num_classes = cc.num_classes(config)
        self.register_buffer("sigmas", sigmas_from_config(config))
        self.act = act = layers.get_act(act_name)

        def resblock(in_ch, out_ch=None):
            return layers.ResnetBlockDDPM(act=act, in_ch=in_ch, out_ch=out_ch, temb_dim=4 * nf, dropout=dropout)

        modules = [layers.dense(nf, 4 * nf), layers.dense(4 * nf, 4 * nf), layers.conv3x3(channels, nf)]
        hs_c = [nf]
        in_ch = nf
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                out_ch = nf * ch_mult[i_level]
                modules.append(resblock(in_ch, out_ch))
                in_ch = out_ch
                if i_level in self.attn_levels:
                    modules.append(layers.AttnBlock(in_ch))
                hs_c.append(in_ch)
            if i_level != num_resolutions - 1:
                modules.append(layers.Downsample(in_ch, with_conv=resamp_with_conv))
                hs_c.append(in_ch)

        in_ch = hs_c[-1]
        modules += [resblock(in_ch), layers.AttnBlock(in_ch), resblock(in_ch)]

        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i_level]
                modules.append(resblock(in_ch + hs_c.pop(), out_ch))
                in_ch = out_ch
            if i_level in self.attn_levels:
                modules.append(layers.AttnBlock(in_ch))
            if i_level != 0:
                modules.append(layers.Upsample(in_ch, with_conv=resamp_with_conv))
        assert not hs_c
        modules += [layers.group_norm(in_ch, 32), layers.conv3x3(in_ch, channels, init_scale=0.0)]
        self.all_modules = nn.ModuleList(modules)
        if self.num_classes:
            self.label_embed = LabelEmbedding(self.num_classes, 4 * nf)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_inputs(x, noise_labels, class_labels, self.num_channels,
                     2 ** (self.num_resolutions - 1), self.num_classes)
        modules = iter(self.all_modules)
        dense0, dense1 = next(modules), next(modules)
        temb = dense1(self.act(dense0(layers.timestep_embedding(noise_labels, self.nf))))
        if self.num_classes:
            temb = temb + self.label_embed(class_labels)

        h = x if self.centered else 2 * x - 1.0
        hs = [next(modules)(h)]
        for i_level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(modules)(hs[-1], temb)
                if i_level in self.attn_levels:
                    h = next(modules)(h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(next(modules)(hs[-1]))

        h = hs[-1]
        h = next(modules)(h, temb)
        h = next(modules)(h)
        h = next(modules)(h, temb)

        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
            if i_level in self.attn_levels:
                h = next(modules)(h)
            if i_level != 0:
                h = next(modules)(h)
        assert not hs
        norm, conv = next(modules), next(modules)
        h = conv(self.act(norm(h)))
        assert next(modules, None) is None

        if self.scale_by_sigma:
            used_sigmas = self.sigmas[noise_labels.long()].to(h.dtype)
            h = h / used_sigmas.reshape(-1, *([1] * (h.dim() - 1)))
        return h
