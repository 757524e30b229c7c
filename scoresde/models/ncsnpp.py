"""NCSN++ and DDPM++ (Song et al. 2021, Sec. 4.3 and App. H): one U-Net family, configured
by ``config.model``. DDPM++ is this network with DDPM-style options (positional embedding,
no FIR, no progressive growing).

The modules live in one ``all_modules`` list in the construction order of the paper's code,
so a released state_dict maps 1:1 (after stripping DataParallel's ``module.``).
"""
import functools
import math
from typing import Optional

import torch
import torch.nn as nn

from scoresde.models import config_checks as cc
from scoresde.models import layers
from scoresde.models.common import LabelEmbedding, check_inputs, sigmas_from_config
from scoresde.models.registry import register_model

_SQRT2 = math.sqrt(2.0)


def _check_group_widths(nf: int, ch_mult) -> None:
    for width, path in [(nf, "model.nf")] + [(nf * m, "model.ch_mult") for m in ch_mult]:
        groups = min(width // 4, 32)
        if groups < 1 or width % groups:
            raise ValueError(
                f"config.{path}: channel width {width} (nf={nf}, ch_mult={tuple(ch_mult)}) cannot be "
                f"split into min(width // 4, 32) = {groups} GroupNorm groups")


@register_model("ncsnpp")
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network. ``forward(x, noise_labels, class_labels=None)``:

    - ``x``: [B, C, H, W], H and W multiples of ``2 ** (len(ch_mult) - 1)``;
    - ``noise_labels`` [B]: sigma (Fourier embedding) or the time step ``t * (N - 1)``
      (positional embedding);
    - ``class_labels`` [B] integers when ``config.model.num_classes`` is set.
    Returns a tensor shaped like ``x``: the noise prediction (VP), or with ``scale_by_sigma`` the
    network output divided by sigma (VE score).
    """

    def __init__(self, config):
        super().__init__()
        m = "model."
        nf, ch_mult, num_res_blocks, num_resolutions, attn_levels, dropout, resamp_with_conv = cc.unet_fields(config)
        self.nf, self.num_res_blocks, self.num_resolutions, self.attn_levels = (
            nf, num_res_blocks, num_resolutions, attn_levels)
        self.conditional = conditional = bool(cc.field(config, m + "conditional"))
        fir = bool(cc.field(config, m + "fir"))
        fir_kernel = list(cc.field(config, m + "fir_kernel"))
        if not fir_kernel or any(not isinstance(v, (int, float)) for v in fir_kernel) or sum(fir_kernel) == 0:
            raise ValueError(f"config.model.fir_kernel = {fir_kernel!r} must be a non-empty list of "
                             f"numbers with a non-zero sum")
        self.skip_rescale = skip_rescale = bool(cc.field(config, m + "skip_rescale"))
        self.resblock_type = resblock_type = cc.choice(config, m + "resblock_type", ["ddpm", "biggan"])
        self.progressive = progressive = cc.choice(
            config, m + "progressive", ["none", "output_skip", "residual"])
        self.progressive_input = progressive_input = cc.choice(
            config, m + "progressive_input", ["none", "input_skip", "residual"])
        combine_method = cc.choice(config, m + "progressive_combine", ["sum", "cat"])
        self.embedding_type = embedding_type = cc.choice(
            config, m + "embedding_type", ["fourier", "positional"])
        cc.choice(config, m + "attention_type", ["ddpm"], default="ddpm")
        cc.choice(config, m + "normalization", ["groupnorm"], default="GroupNorm")
        act_name = cc.choice(config, m + "nonlinearity", list(layers.ACTIVATIONS))
        conv_size = cc.field(config, m + "conv_size", 3)
        if conv_size != 3:
            raise ValueError(f"config.model.conv_size = {conv_size!r}: only 3 is supported")
        init_scale = float(cc.field(config, m + "init_scale"))
        fourier_scale = float(cc.field(config, m + "fourier_scale", 16.0))
        if embedding_type == "fourier" and not cc.field(config, "training.continuous", True):
            raise ValueError("config.model.embedding_type = 'fourier' embeds continuous noise "
                             "levels; it needs config.training.continuous = True")
        self.scale_by_sigma = bool(cc.field(config, m + "scale_by_sigma"))
        self.centered = bool(cc.field(config, "data.centered"))
        self.num_channels = channels = cc.positive_int(config, "data.num_channels")
        self.num_classes = cc.num_classes(config)
        _check_group_widths(nf, ch_mult)
        self.register_buffer("sigmas", sigmas_from_config(config))
        self.act = act = layers.get_act(act_name)

        modules = []
        if embedding_type == "fourier":
            modules.append(layers.GaussianFourierProjection(nf, fourier_scale))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if conditional:
            modules += [layers.dense(embed_dim, 4 * nf), layers.dense(4 * nf, 4 * nf)]

        AttnBlock = functools.partial(layers.AttnBlockpp, init_scale=init_scale, skip_rescale=skip_rescale)
        Upsample = functools.partial(layers.Upsample, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        Downsample = functools.partial(layers.Downsample, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        pyramid_upsample = functools.partial(layers.Upsample, fir=fir, fir_kernel=fir_kernel,
                                             with_conv=progressive == "residual")
        pyramid_downsample = functools.partial(layers.Downsample, fir=fir, fir_kernel=fir_kernel,
                                               with_conv=progressive_input == "residual")
        if resblock_type == "ddpm":
            ResnetBlock = functools.partial(layers.ResnetBlockDDPMpp, act=act, dropout=dropout,
                                            init_scale=init_scale, skip_rescale=skip_rescale, temb_dim=4 * nf)
        else:
            ResnetBlock = functools.partial(layers.ResnetBlockBigGANpp, act=act, dropout=dropout, fir=fir,
                                            fir_kernel=fir_kernel, init_scale=init_scale,
                                            skip_rescale=skip_rescale, temb_dim=4 * nf)

        # Downsampling path
        input_pyramid_ch = channels
        modules.append(layers.conv3x3(channels, nf))
        hs_c = [nf]
        in_ch = nf
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                out_ch = nf * ch_mult[i_level]
                modules.append(ResnetBlock(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if i_level in self.attn_levels:
                    modules.append(AttnBlock(channels=in_ch))
                hs_c.append(in_ch)
            if i_level != num_resolutions - 1:
                if resblock_type == "ddpm":
                    modules.append(Downsample(in_ch=in_ch))
                else:
                    modules.append(ResnetBlock(down=True, in_ch=in_ch))
                if progressive_input == "input_skip":
                    modules.append(pyramid_downsample(in_ch=input_pyramid_ch))
                    modules.append(layers.Combine(dim1=input_pyramid_ch, dim2=in_ch, method=combine_method))
                    if combine_method == "cat":
                        in_ch *= 2
                elif progressive_input == "residual":
                    modules.append(pyramid_downsample(in_ch=input_pyramid_ch, out_ch=in_ch))
                    input_pyramid_ch = in_ch
                hs_c.append(in_ch)

        # Middle
        in_ch = hs_c[-1]
        modules += [ResnetBlock(in_ch=in_ch), AttnBlock(channels=in_ch), ResnetBlock(in_ch=in_ch)]

        # Upsampling path
        pyramid_ch = 0
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i_level]
                modules.append(ResnetBlock(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
                in_ch = out_ch
            if i_level in self.attn_levels:
                modules.append(AttnBlock(channels=in_ch))
            if progressive != "none":
                if i_level == num_resolutions - 1:
                    if progressive == "output_skip":
                        modules += [layers.group_norm(in_ch),
                                    layers.conv3x3(in_ch, channels, init_scale=init_scale)]
                        pyramid_ch = channels
                    else:
                        modules += [layers.group_norm(in_ch), layers.conv3x3(in_ch, in_ch, bias=True)]
                        pyramid_ch = in_ch
                else:
                    if progressive == "output_skip":
                        modules += [pyramid_upsample(in_ch=pyramid_ch), layers.group_norm(in_ch),
                                    layers.conv3x3(in_ch, channels, bias=True, init_scale=init_scale)]
                        pyramid_ch = channels
                    else:
                        modules.append(pyramid_upsample(in_ch=pyramid_ch, out_ch=in_ch))
                        pyramid_ch = in_ch
            if i_level != 0:
                if resblock_type == "ddpm":
                    modules.append(Upsample(in_ch=in_ch))
                else:
                    modules.append(ResnetBlock(in_ch=in_ch, up=True))
        assert not hs_c

        if progressive != "output_skip":
            modules += [layers.group_norm(in_ch), layers.conv3x3(in_ch, channels, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(modules)
        if self.num_classes:
            self.label_embed = LabelEmbedding(self.num_classes, 4 * nf)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_inputs(x, noise_labels, class_labels, self.num_channels,
                     2 ** (self.num_resolutions - 1), self.num_classes)
        modules = iter(self.all_modules)
        act = self.act

        if self.embedding_type == "fourier":
            used_sigmas = noise_labels
            temb = next(modules)(torch.log(noise_labels))
        else:
            used_sigmas = None
            temb = layers.timestep_embedding(noise_labels, self.nf)
        if self.conditional:
            temb = next(modules)(temb)
            temb = next(modules)(act(temb))
        else:
            temb = None
        if self.num_classes:
            emb = self.label_embed(class_labels)
            temb = emb if temb is None else temb + emb

        if not self.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]

        # Downsampling path
        input_pyramid = x if self.progressive_input != "none" else None
        hs = [next(modules)(x)]
        for i_level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(modules)(hs[-1], temb)
                if i_level in self.attn_levels:
                    h = next(modules)(h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                if self.resblock_type == "ddpm":
                    h = next(modules)(hs[-1])
                else:
                    h = next(modules)(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    input_pyramid = next(modules)(input_pyramid)
                    h = next(modules)(input_pyramid, h)
                elif self.progressive_input == "residual":
                    input_pyramid = next(modules)(input_pyramid)
                    input_pyramid = (input_pyramid + h) / _SQRT2 if self.skip_rescale else input_pyramid + h
                    h = input_pyramid
                hs.append(h)

        # Middle
        h = hs[-1]
        h = next(modules)(h, temb)
        h = next(modules)(h)
        h = next(modules)(h, temb)

        # Upsampling path
        pyramid = None
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
            if i_level in self.attn_levels:
                h = next(modules)(h)
            if self.progressive != "none":
                if i_level == self.num_resolutions - 1:
                    norm, conv = next(modules), next(modules)
                    pyramid = conv(act(norm(h)))
                elif self.progressive == "output_skip":
                    upsample, norm, conv = next(modules), next(modules), next(modules)
                    pyramid = upsample(pyramid) + conv(act(norm(h)))
                else:
                    pyramid = next(modules)(pyramid)
                    pyramid = (pyramid + h) / _SQRT2 if self.skip_rescale else pyramid + h
                    h = pyramid
            if i_level != 0:
                h = next(modules)(h) if self.resblock_type == "ddpm" else next(modules)(h, temb)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            norm, conv = next(modules), next(modules)
            h = conv(act(norm(h)))
        assert next(modules, None) is None

        if self.scale_by_sigma:
            if used_sigmas is None:  # positional embedding: the labels are step indices
                used_sigmas = self.sigmas[noise_labels.long()]
            h = h / used_sigmas.to(h.dtype).reshape(-1, *([1] * (h.dim() - 1)))
        return h
