"""The FID Inception-v3 network (TensorFlow graph of 2015-12-05) in PyTorch, and its input pipeline.

The layer names follow the converted file of pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``),
so that file loads with no renaming. The graph differs from torchvision's Inception-v3 in three
places, all reproduced here: the average pools inside the mixed blocks exclude the padding from the
count (``count_include_pad=False``), the pool branch of the last block (``Mixed_7c``) is a max pool,
and the head has 1008 classes.

Input pipeline of the TF graph (``preprocess``): images in 0..255 are resized to 299x299 with the
legacy TF bilinear resize (``align_corners=False, half_pixel_centers=False``: output pixel ``i``
samples the input at ``i * in / out``) and scaled as ``(x - 128) / 128``. ``resize="pytorch-fid"``
selects pytorch-fid's pipeline instead (half-pixel bilinear ``F.interpolate`` and ``2 x / 255 - 1``),
for numbers comparable with that tool.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

POOL_DIM = 2048
NUM_CLASSES = 1008
INPUT_SIZE = 299
RESIZE_MODES = ("tf", "pytorch-fid")


class BatchNormInference(nn.Module):
    """Frozen batch norm, eps 1e-3 as in the TF graph. Buffers only: this network is never trained."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=1e-3)


class ConvBN(nn.Module):
    """Convolution without bias, frozen batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = BatchNormInference(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TF's "SAME" average pool divides by the number of valid (non-padding) inputs.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_3x3(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7x7 branches."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool_3x3(x)),
        ], dim=1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], dim=1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: expanded filter bank. ``pool="avg"`` for 7b, ``"max"`` for 7c (a quirk of the TF graph)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], dim=1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the TF graph 2015-12-05.

    ``forward(x)`` takes preprocessed images ``[B, 3, 299, 299]`` (see ``preprocess``) and returns
    ``(pool, logits)``: the 2048-d ``pool_3`` features ``[B, 2048]`` and the 1008-class logits
    ``[B, 1008]`` (``None`` when built with ``with_logits=False``, e.g. for weights without the head).
    """

    def __init__(self, with_logits: bool = True):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES) if with_logits else None
        self.reset_parameters()

    @property
    def has_logits(self) -> bool:
        return self.fc is not None

    def reset_parameters(self) -> None:
        """Random weights (He-normal convolutions), for tests and benchmarks without the real weights."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected preprocessed images [B, 3, H, W], got {tuple(x.shape)}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))  # the graph's 8x8 average pool over the final 8x8 grid
        logits = self.fc(pool) if self.fc is not None else None
        return pool, logits


def _tf_bilinear_matrix(n_in: int, n_out: int, device, dtype) -> torch.Tensor:
    """``[n_out, n_in]`` interpolation matrix of TF's legacy bilinear resize: output ``i`` samples
    the input at ``s = i * n_in / n_out`` (no half-pixel offset), neighbours clamped to the border."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo.to(torch.float64)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


_MATRIX_CACHE: Dict[tuple, torch.Tensor] = {}


def tf_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to ``[B, C, size, size]`` as TF1's ``resize_bilinear`` does, in one
    batched op: ``y = R_h x R_w^T`` with the separable matrices of ``_tf_bilinear_matrix``."""
    _, _, h, w = x.shape
    mats = []
    for n_in in (h, w):
        key = (n_in, size, x.device, x.dtype)
        if key not in _MATRIX_CACHE:
            _MATRIX_CACHE[key] = _tf_bilinear_matrix(n_in, size, x.device, x.dtype)
        mats.append(_MATRIX_CACHE[key])
    return mats[0] @ x @ mats[1].T  # batched over [B, C]


def preprocess(x: torch.Tensor, resize: str = "tf") -> torch.Tensor:
    """Map float images ``[B, 3, H, W]`` with values in 0..255 to the network input ``[B, 3, 299, 299]``.

    ``resize="tf"``: TF legacy bilinear resize, then ``(x - 128) / 128`` (the 2015-12-05 graph's own
    pipeline, used by TF FID/IS code, tfgan and the StyleGAN metrics).
    ``resize="pytorch-fid"``: ``F.interpolate(bilinear, align_corners=False)`` of ``x / 255``, then
    ``2 x - 1`` (pytorch-fid's pipeline).
    """
    if resize == "tf":
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = tf_bilinear_resize(x, INPUT_SIZE)
        return (x - 128.0) / 128.0
    if resize == "pytorch-fid":
        x = x / 255.0
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
