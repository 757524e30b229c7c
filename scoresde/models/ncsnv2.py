"""NCSNv2 (Song & Ermon 2020): a RefineNet with dilated convolutions and InstanceNorm++.

The network is not told the noise level; its output is divided by sigma (Song & Ermon 2020,
Technique 3). Layer names follow the paper's ``models/ncsnv2.py`` so its checkpoints load.

Fix against the original: a dilated 3x3 convolution there keeps ``padding=1``, so each one
shrinks the feature map by ``2 * (dilation - 1)`` pixels and the residual sum fails at 32x32;
here the padding equals the dilation, which keeps the size (as in Song & Ermon's own code).
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from scoresde.models import config_checks as cc
from scoresde.models import layers
from scoresde.models.common import LabelEmbedding, check_inputs, sigmas_from_config
from scoresde.models.registry import register_model


def ncsn_conv3x3(in_ch: int, out_ch: int, bias: bool = True, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution, PyTorch default init, size-preserving for any dilation."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


def ncsn_conv1x1(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=bias)


class InstanceNorm2dPlus(nn.Module):
    """InstanceNorm++ (Song & Ermon 2019, Eq. in App. A): instance norm plus a learned
    correction by the normalised per-channel means, ``gamma * (h + alpha * means~) + beta``."""

    def __init__(self, num_features: int, bias: bool = True):
        super().__init__()
        self.num_features, self.bias = num_features, bias
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
        if bias:
            self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3))
        m = means.mean(dim=-1, keepdim=True)
        v = means.var(dim=-1, keepdim=True)
        means = (means - m) / torch.sqrt(v + 1e-5)
        h = F.instance_norm(x, eps=1e-5)
        h = h + means[..., None, None] * self.alpha[:, None, None]
        h = self.gamma[:, None, None] * h
        return h + self.beta[:, None, None] if self.bias else h


class ConvMeanPool(nn.Module):
    """Convolution followed by 2x2 mean pooling."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, adjust_padding: bool = False):
        super().__init__()
        conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), conv) if adjust_padding else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return (h[:, :, ::2, ::2] + h[:, :, 1::2, ::2] + h[:, :, ::2, 1::2] + h[:, :, 1::2, 1::2]) / 4.0


class ResidualBlock(nn.Module):
    """Pre-activation residual block; ``resample='down'`` halves the size unless dilated."""

    def __init__(self, in_ch: int, out_ch: int, resample: Optional[str], act: nn.Module,
                 normalization=InstanceNorm2dPlus, adjust_padding: bool = False, dilation: int = 1):
        super().__init__()
        self.non_linearity = act
        self.in_ch, self.out_ch, self.resample = in_ch, out_ch, resample
        if resample == "down":
            if dilation > 1:
                self.conv1 = ncsn_conv3x3(in_ch, in_ch, dilation=dilation)
                self.normalize2 = normalization(in_ch)
                self.conv2 = ncsn_conv3x3(in_ch, out_ch, dilation=dilation)
                shortcut = ncsn_conv3x3(in_ch, out_ch, dilation=dilation)
            else:
                self.conv1 = ncsn_conv3x3(in_ch, in_ch)
                self.normalize2 = normalization(in_ch)
                self.conv2 = ConvMeanPool(in_ch, out_ch, 3, adjust_padding=adjust_padding)
                shortcut = ConvMeanPool(in_ch, out_ch, 1, adjust_padding=adjust_padding)
        elif resample is None:
            self.conv1 = ncsn_conv3x3(in_ch, out_ch, dilation=dilation)
            self.normalize2 = normalization(out_ch)
            self.conv2 = ncsn_conv3x3(out_ch, out_ch, dilation=dilation)
            shortcut = (ncsn_conv3x3(in_ch, out_ch, dilation=dilation) if dilation > 1
                        else ncsn_conv1x1(in_ch, out_ch))
        else:
            raise ValueError(f"resample must be 'down' or None, got {resample!r}")
        if out_ch != in_ch or resample is not None:
            self.shortcut = shortcut
        self.normalize1 = normalization(in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.non_linearity(self.normalize1(x)))
        h = self.conv2(self.non_linearity(self.normalize2(h)))
        skip = x if (self.out_ch == self.in_ch and self.resample is None) else self.shortcut(x)
        return skip + h


class RCUBlock(nn.Module):
    """Residual conv unit: ``n_blocks`` x (``n_stages`` x (act, conv)) with identity skips."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, act: nn.Module):
        super().__init__()
        for i in range(n_blocks):
            for j in range(n_stages):
                setattr(self, f"{i + 1}_{j + 1}_conv", ncsn_conv3x3(features, features, bias=False))
        self.n_blocks, self.n_stages, self.act = n_blocks, n_stages, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_blocks):
            residual = x
            for j in range(self.n_stages):
                x = getattr(self, f"{i + 1}_{j + 1}_conv")(self.act(x))
            x = x + residual
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: conv each input, resize bilinearly to ``shape``, sum."""

    def __init__(self, in_planes: Sequence[int], features: int):
        super().__init__()
        self.convs = nn.ModuleList([ncsn_conv3x3(c, features) for c in in_planes])

    def forward(self, xs: List[torch.Tensor], shape) -> torch.Tensor:
        out = None
        for conv, x in zip(self.convs, xs):
            h = F.interpolate(conv(x), size=shape, mode="bilinear", align_corners=True)
            out = h if out is None else out + h
        return out


class CRPBlock(nn.Module):
    """Chained residual pooling: ``n_stages`` x (max-pool 5x5, conv), each added to the input."""

    def __init__(self, features: int, n_stages: int, act: nn.Module):
        super().__init__()
        self.convs = nn.ModuleList([ncsn_conv3x3(features, features, bias=False) for _ in range(n_stages)])
        self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        path = x
        for conv in self.convs:
            path = conv(self.pool(path))
            x = path + x
        return x


class RefineBlock(nn.Module):
    """RefineNet block: RCU on each input, fusion (MSF), CRP, output RCU."""

    def __init__(self, in_planes: Sequence[int], features: int, act: nn.Module,
                 start: bool = False, end: bool = False):
        super().__init__()
        self.n_blocks = len(in_planes)
        self.adapt_convs = nn.ModuleList([RCUBlock(c, 2, 2, act) for c in in_planes])
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, act)
        if not start:
            self.msf = MSFBlock(in_planes, features)
        self.crp = CRPBlock(features, 2, act)

    def forward(self, xs: List[torch.Tensor], output_shape) -> torch.Tensor:
        hs = [adapt(x) for adapt, x in zip(self.adapt_convs, xs)]
        h = self.msf(hs, output_shape) if self.n_blocks > 1 else hs[0]
        return self.output_convs(self.crp(h))


# Architectures by image size, as in the paper's code: stages (name, in, out, resample, dilation)
# as multiples of nf; refine blocks (name, in_planes, features, start, end) in construction order;
# the forward pass pairs the stages, deepest first, with ``chain`` refine blocks.
_ARCHS = {
    "64": dict(
        stages=[("res1", 1, 1, None, 1), ("res2", 1, 2, "down", 1), ("res3", 2, 2, "down", 2),
                ("res4", 2, 2, "down", 4)],
        refines=[("refine1", [2], 2, True, False), ("refine2", [2, 2], 2, False, False),
                 ("refine3", [2, 2], 1, False, False), ("refine4", [1, 1], 1, False, True)],
        chain=["refine1", "refine2", "refine3", "refine4"], multiple=4),
    "128": dict(
        stages=[("res1", 1, 1, None, 1), ("res2", 1, 2, "down", 1), ("res3", 2, 2, "down", 1),
                ("res4", 2, 4, "down", 2), ("res5", 4, 4, "down", 4)],
        refines=[("refine1", [4], 4, True, False), ("refine2", [4, 4], 2, False, False),
                 ("refine3", [2, 2], 2, False, False), ("refine4", [2, 2], 1, False, False),
                 ("refine5", [1, 1], 1, False, True)],
        chain=["refine1", "refine2", "refine3", "refine4", "refine5"], multiple=4),
    "256": dict(
        stages=[("res1", 1, 1, None, 1), ("res2", 1, 2, "down", 1), ("res3", 2, 2, "down", 1),
                ("res31", 2, 2, "down", 1), ("res4", 2, 4, "down", 2), ("res5", 4, 4, "down", 4)],
        refines=[("refine1", [4], 4, True, False), ("refine2", [4, 4], 2, False, False),
                 ("refine3", [2, 2], 2, False, False), ("refine31", [2, 2], 2, False, False),
                 ("refine4", [2, 2], 1, False, False), ("refine5", [1, 1], 1, False, True)],
        chain=["refine1", "refine2", "refine31", "refine3", "refine4", "refine5"], multiple=8),
}


class _NCSNv2Base(nn.Module):
    arch: Optional[str] = None
    scale_by_sigma = True  # the output is always divided by sigma (read by scoresde.models.EDMDenoiser)

    def __init__(self, config):
        super().__init__()
        arch = self.arch or self.arch_for_size(cc.positive_int(config, "data.image_size"))
        spec = _ARCHS[arch]
        self.nf = nf = cc.positive_int(config, "model.nf")
        act_name = cc.choice(config, "model.nonlinearity", list(layers.ACTIVATIONS))
        cc.choice(config, "model.normalization", ["instancenorm++"])
        image_size = cc.positive_int(config, "data.image_size")
        self.multiple = spec["multiple"]
        if image_size % self.multiple:
            raise ValueError(f"config.data.image_size = {image_size} must be a multiple of "
                             f"{self.multiple} for the NCSNv2 {arch}px architecture")
        self.centered = bool(cc.field(config, "data.centered"))
        self.num_channels = channels = cc.positive_int(config, "data.num_channels")
        self.num_classes = cc.num_classes(config)
        self.register_buffer("sigmas", sigmas_from_config(config))
        self.act = act = layers.get_act(act_name)
        norm = InstanceNorm2dPlus

        self.begin_conv = nn.Conv2d(channels, nf, 3, padding=1)
        self.normalizer = norm(nf)
        self.end_conv = nn.Conv2d(nf, channels, 3, padding=1)
        for name, cin, cout, resample, dilation in spec["stages"]:
            # (the original's adjust_padding for 28 px only reaches a dilated block, where it is unused)
            setattr(self, name, nn.ModuleList([
                ResidualBlock(cin * nf, cout * nf, resample, act, norm, dilation=dilation),
                ResidualBlock(cout * nf, cout * nf, None, act, norm, dilation=dilation)]))
        for name, in_planes, features, start, end in spec["refines"]:
            setattr(self, name, RefineBlock([c * nf for c in in_planes], features * nf, act, start, end))
        self.stage_names = [s[0] for s in spec["stages"]]
        self.chain = spec["chain"]
        if self.num_classes:
            self.label_embed = LabelEmbedding(self.num_classes, nf)

    @staticmethod
    def arch_for_size(image_size: int) -> str:
        if image_size < 96:
            return "64"
        if image_size <= 128:
            return "128"
        if image_size <= 256:
            return "256"
        raise ValueError(f"config.data.image_size = {image_size}: NCSNv2 is defined up to 256 pixels")

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``noise_labels`` [B]: integer indices into ``sigmas`` (the discrete VE step), or
        floating-point noise levels sigma themselves. Returns the score estimate
        ``network(x) / sigma``, shaped like ``x``."""
        check_inputs(x, noise_labels, class_labels, self.num_channels, self.multiple, self.num_classes)
        h = x if self.centered else 2 * x - 1.0
        h = self.begin_conv(h)
        if self.num_classes:
            h = h + self.label_embed(class_labels)[:, :, None, None]
        feats = []
        for name in self.stage_names:
            for block in getattr(self, name):
                h = block(h)
            feats.append(h)
        ref = None
        for refine_name, feat in zip(self.chain, reversed(feats)):
            inputs = [feat] if ref is None else [feat, ref]
            ref = getattr(self, refine_name)(inputs, feat.shape[2:])
        out = self.end_conv(self.act(self.normalizer(ref)))
        if noise_labels.is_floating_point():
            used_sigmas = noise_labels
        else:
            used_sigmas = self.sigmas[noise_labels]
        return out / used_sigmas.to(out.dtype).reshape(-1, *([1] * (out.dim() - 1)))


@register_model("ncsnv2")
class NCSNv2(_NCSNv2Base):
    """NCSNv2, architecture chosen by ``config.data.image_size`` (< 96: the 32/64-pixel net;
    96..128 and 129..256: the deeper nets of Song & Ermon 2020)."""


@register_model("ncsnv2_64")
class NCSNv2_64(_NCSNv2Base):
    arch = "64"


@register_model("ncsnv2_128")
class NCSNv2_128(_NCSNv2Base):
    arch = "128"


@register_model("ncsnv2_256")
class NCSNv2_256(_NCSNv2Base):
    arch = "256"
