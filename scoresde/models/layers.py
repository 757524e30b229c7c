"""Building blocks of the DDPM / NCSN++ / DDPM++ networks, in plain PyTorch.

Parameter names and shapes follow the paper's released code (``GroupNorm_0``, ``Conv_0``,
``Dense_0``, ``NIN_0`` with ``W`` stored as (in, out), ``Conv2d_0`` for FIR resampling
convolutions), so its checkpoints load 1:1. The FIR up/down-sampling of StyleGAN2, which the
original compiles as a CUDA extension, is written here as (transposed) depthwise convolutions.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

_SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------- initialisation
def variance_scaling_(tensor: torch.Tensor, scale: float = 1.0, in_axis: int = 1,
                      out_axis: int = 0) -> torch.Tensor:
    """In-place uniform variance-scaling init with ``fan_avg`` (the DDPM ``default_init``):
    U(-a, a), a = sqrt(3 * scale / ((fan_in + fan_out) / 2)); scale 0 is replaced by 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    shape = tensor.shape
    receptive = math.prod(shape) / shape[in_axis] / shape[out_axis]
    fan_avg = (shape[in_axis] + shape[out_axis]) * receptive / 2
    bound = math.sqrt(3.0 * scale / fan_avg)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def dense(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` with the DDPM initialisation and a zero bias."""
    layer = nn.Linear(in_features, out_features)
    variance_scaling_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, dilation: int = 1,
            init_scale: float = 1.0, padding: int = 1) -> nn.Conv2d:
    """3x3 convolution with the DDPM initialisation."""
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True,
            init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 convolution with the DDPM initialisation."""
    conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def group_norm(channels: int, groups: Optional[int] = None) -> nn.GroupNorm:
    """GroupNorm with eps 1e-6; ``min(channels // 4, 32)`` groups unless given (NCSN++)."""
    return nn.GroupNorm(groups or min(channels // 4, 32), channels, eps=1e-6)


# ----------------------------------------------------------------------------- activations
ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "swish": nn.SiLU}


def get_act(name: str) -> nn.Module:
    return ACTIVATIONS[name.lower()]()


# ----------------------------------------------------------------------------- embeddings
def timestep_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of ``timesteps`` [B] -> [B, dim] (Transformer / DDPM):
    ``[sin(t w_k), cos(t w_k)]``, ``w_k = max_positions ** (-k / (dim/2 - 1))``."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      * (-math.log(max_positions) / (half - 1)))
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of log-sigma: ``[sin(2 pi W x), cos(2 pi W x)]``; ``W`` is frozen."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = x[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class NIN(nn.Module):
    """Per-pixel linear map over channels (a 1x1 convolution); ``W`` is stored as (in, out)."""

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(variance_scaling_(torch.empty(in_dim, num_units), init_scale))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


# ----------------------------------------------------------------------------- FIR resampling
def fir_kernel_2d(k: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """Normalised 2-D FIR kernel from a 1-D (separable) or 2-D one, times ``gain``."""
    k = torch.as_tensor(k, dtype=torch.float64)
    if k.dim() == 1:
        k = torch.outer(k, k)
    return (k / k.sum() * gain).to(torch.float32)


def _depthwise(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The 2-D kernel as a [C, 1, kh, kw] depthwise weight in ``x``'s dtype and device."""
    return kernel.to(device=x.device, dtype=x.dtype).expand(x.shape[1], 1, *kernel.shape)


def upsample_2d(x: torch.Tensor, k: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR upsampling (StyleGAN2 ``upsample_2d``): zero-stuffing followed by filtering with
    ``k * factor**2``, as one transposed depthwise convolution. [B, C, H, W] -> [B, C, 2H, 2W].
    ``k`` is a normalised 2-D kernel (``fir_kernel_2d``)."""
    kh = k.shape[0]
    p = kh - factor
    pad0, pad1 = (p + 1) // 2 + factor - 1, p // 2
    # upfirdn2d(up, pad) is the full transposed convolution, of length (H - 1) f + kh, cropped by
    # kh - 1 - pad0 at the start and kh - f - pad1 at the end
    crop0, crop1 = kh - 1 - pad0, kh - factor - pad1
    shared = min(crop0, crop1)
    w = _depthwise(torch.flip(k, (0, 1)) * factor ** 2, x)
    y = F.conv_transpose2d(x, w, stride=factor, padding=shared, groups=x.shape[1])
    if crop0 != crop1:
        a, b = crop0 - shared, crop1 - shared
        y = y[:, :, a:y.shape[2] - b, a:y.shape[3] - b]
    return y


def downsample_2d(x: torch.Tensor, k: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR downsampling (StyleGAN2 ``downsample_2d``): filter with ``k``, keep every
    ``factor``-th pixel, as one strided depthwise convolution. [B, C, H, W] -> [B, C, H/2, W/2]."""
    p = k.shape[0] - factor
    x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    return F.conv2d(x, _depthwise(torch.flip(k, (0, 1)), x), stride=factor, groups=x.shape[1])


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.avg_pool2d(x, factor)


class FIRConv2d(nn.Module):
    """3x3 convolution fused with FIR up- or down-sampling (StyleGAN2 ``Conv2d``).

    Parameter ``weight`` is (out, in, k, k) and ``bias`` (out,), as in the original."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, up: bool = False, down: bool = False,
                 resample_kernel: Sequence[float] = (1, 3, 3, 1), use_bias: bool = True):
        super().__init__()
        assert not (up and down) and kernel % 2 == 1
        self.weight = nn.Parameter(variance_scaling_(torch.empty(out_ch, in_ch, kernel, kernel)))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if use_bias else None
        self.up, self.down = up, down
        self.register_buffer("fir", fir_kernel_2d(resample_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        kw = w.shape[-1]
        if self.up:
            # conv_transpose2d with stride 2, then FIR with k * 4 and padding 1 on each side
            x = F.conv_transpose2d(x, w.transpose(0, 1).flip((2, 3)).contiguous(), stride=2)
            p = self.fir.shape[0] - 2 - (kw - 1)
            pad0, pad1 = (p + 1) // 2 + 1, p // 2 + 1
            x = F.pad(x, (pad0, pad1, pad0, pad1))
            x = F.conv2d(x, _depthwise(torch.flip(self.fir, (0, 1)) * 4, x), groups=x.shape[1])
        elif self.down:
            p = self.fir.shape[0] - 2 + (kw - 1)
            x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
            x = F.conv2d(x, _depthwise(torch.flip(self.fir, (0, 1)), x), groups=x.shape[1])
            x = F.conv2d(x, w, stride=2)
        else:
            x = F.conv2d(x, w, padding=kw // 2)
        if self.bias is not None:
            x = x + self.bias.view(1, -1, 1, 1)
        return x


# ----------------------------------------------------------------------------- attention
def _attention(h: torch.Tensor, nin_q: NIN, nin_k: NIN, nin_v: NIN) -> torch.Tensor:
    """Single-head self-attention over the pixels of ``h`` [B, C, H, W] with the NIN
    projections fused into one matmul; softmax(q k^T / sqrt(C)) v, returned as [B, C, H, W]."""
    B, C, H, W = h.shape
    w = torch.cat([nin_q.W, nin_k.W, nin_v.W], dim=1)            # (C, 3C)
    b = torch.cat([nin_q.b, nin_k.b, nin_v.b])
    tokens = h.reshape(B, C, H * W).transpose(1, 2)               # (B, HW, C)
    q, k, v = F.linear(tokens, w.t(), b).chunk(3, dim=-1)
    out = F.scaled_dot_product_attention(q, k, v)                 # scale 1/sqrt(C)
    return out.transpose(1, 2).reshape(B, C, H, W)


class AttnBlock(nn.Module):
    """Self-attention block of DDPM (32 groups, output NIN initialised to zero)."""

    def __init__(self, channels: int):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels, 32)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _attention(self.GroupNorm_0(x), self.NIN_0, self.NIN_1, self.NIN_2)
        return x + self.NIN_3(h)


class AttnBlockpp(nn.Module):
    """Self-attention block of NCSN++: ``(x + attn(x)) / sqrt(2)`` when ``skip_rescale``."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _attention(self.GroupNorm_0(x), self.NIN_0, self.NIN_1, self.NIN_2)
        h = x + self.NIN_3(h)
        return h / _SQRT2 if self.skip_rescale else h


# ----------------------------------------------------------------------------- resampling blocks
class Upsample(nn.Module):
    """2x upsampling: nearest (+ 3x3 conv), or FIR (+ fused FIR conv ``Conv2d_0``)."""

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        elif with_conv:
            self.Conv2d_0 = FIRConv2d(in_ch, out_ch, up=True, resample_kernel=fir_kernel)
        self.fir, self.with_conv = fir, with_conv
        self.register_buffer("fir_k", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fir:
            h = naive_upsample_2d(x)
            return self.Conv_0(h) if self.with_conv else h
        return self.Conv2d_0(x) if self.with_conv else upsample_2d(x, self.fir_k)


class Downsample(nn.Module):
    """2x downsampling: 'SAME'-padded stride-2 conv or average pooling, or FIR variants."""

    def __init__(self, in_ch: int, out_ch: Optional[int] = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        elif with_conv:
            self.Conv2d_0 = FIRConv2d(in_ch, out_ch, down=True, resample_kernel=fir_kernel)
        self.fir, self.with_conv = fir, with_conv
        self.register_buffer("fir_k", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fir:
            if self.with_conv:
                return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
            return F.avg_pool2d(x, 2)  # the original's extra zero pad is cropped away by the pool
        return self.Conv2d_0(x) if self.with_conv else downsample_2d(x, self.fir_k)


class Combine(nn.Module):
    """Merges the input pyramid into the main path: 1x1 conv, then concatenation or sum."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        self.Conv = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.Conv(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


# ----------------------------------------------------------------------------- residual blocks
def _add_temb(h: torch.Tensor, dense_layer: nn.Linear, act: nn.Module,
              temb: Optional[torch.Tensor]) -> torch.Tensor:
    if temb is None:
        return h
    # in place: h is a convolution's output, which its backward does not need
    return h.add_(dense_layer(act(temb))[:, :, None, None])


def _residual_sum(x: torch.Tensor, h: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """``x + h``, divided by sqrt(2) when ``skip_rescale``; in place on ``h`` (a conv output)."""
    h = h.add_(x)
    return h.mul_(1.0 / _SQRT2) if skip_rescale else h


class ResnetBlockDDPM(nn.Module):
    """Residual block of DDPM (Ho et al.): GroupNorm(32) - act - conv - (+temb) - GroupNorm -
    act - dropout - conv, with a NIN (or 3x3 conv) skip when the width changes."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: Optional[int] = None,
                 temb_dim: Optional[int] = None, conv_shortcut: bool = False, dropout: float = 0.1):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, 32)
        self.GroupNorm_1 = group_norm(out_ch, 32)
        self.act = act
        self.Conv_0 = conv3x3(in_ch, out_ch)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=0.0)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.in_ch, self.out_ch, self.conv_shortcut = in_ch, out_ch, conv_shortcut

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        h = _add_temb(h, getattr(self, "Dense_0", None), self.act, temb)
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return x + h


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block as used by NCSN++ ('ddpm' resblock_type), with optional
    ``skip_rescale`` (divide the sum by sqrt(2)) and ``min(C//4, 32)`` groups."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: Optional[int] = None,
                 temb_dim: Optional[int] = None, conv_shortcut: bool = False, dropout: float = 0.1,
                 skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.act, self.skip_rescale = act, skip_rescale
        self.in_ch, self.out_ch, self.conv_shortcut = in_ch, out_ch, conv_shortcut

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        h = _add_temb(h, getattr(self, "Dense_0", None), self.act, temb)
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return _residual_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block of NCSN++ ('biggan'): resampling (FIR or naive) inside the
    block on both paths, 1x1 conv skip ``Conv_2`` when the width changes or it resamples."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: Optional[int] = None,
                 temb_dim: Optional[int] = None, up: bool = False, down: bool = False,
                 dropout: float = 0.1, fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.has_skip_conv = in_ch != out_ch or up or down
        if self.has_skip_conv:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.act, self.skip_rescale = act, skip_rescale
        self.up, self.down, self.fir = up, down, fir
        self.register_buffer("fir_k", fir_kernel_2d(fir_kernel), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return upsample_2d(x, self.fir_k) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_k) if self.fir else naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.act(self.GroupNorm_0(x))
        if self.up or self.down:
            h, x = self._resample(h), self._resample(x)
        h = self.Conv_0(h)
        h = _add_temb(h, getattr(self, "Dense_0", None), self.act, temb)
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.has_skip_conv:
            x = self.Conv_2(x)
        return _residual_sum(x, h, self.skip_rescale)
