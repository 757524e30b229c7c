"""Batched Inception feature extraction from images in the usual conventions.

Image convention (``InceptionFeatureExtractor.features``):
* ``uint8`` with values 0..255, or floating point with values in [0, 1] (scaled by 255, not quantised:
  pass ``uint8`` to match tools that read PNG files);
* layout ``[N, H, W, C]`` or ``[N, C, H, W]`` with ``C`` in {1, 3} (1 is repeated to RGB); detected
  from the shape, or given with ``layout="NHWC"``/``"NCHW"`` where the shape is ambiguous;
* a ``numpy.ndarray`` or a ``torch.Tensor`` on any device; any spatial size (resized to 299).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import torch

from .inception import RESIZE_MODES, FIDInceptionV3, preprocess
from .weights import PT_INCEPTION_FILENAME, load_inception_state_dict, resolve_weights

Images = Union[np.ndarray, torch.Tensor]
LAYOUTS = ("NHWC", "NCHW")


@dataclass
class InceptionFeatures:
    """``pool``: ``[N, 2048]`` pool_3 features (float32); ``logits``: ``[N, 1008]``, the head's output
    with its bias (the TF graph's ``logits``), or ``None`` when the weights have no head."""
    pool: np.ndarray
    logits: Optional[np.ndarray]


def detect_layout(shape, layout: Optional[str] = None) -> str:
    """``"NHWC"`` or ``"NCHW"`` for a 4-D image batch shape; ``ValueError`` if it cannot tell."""
    if len(shape) != 4:
        raise ValueError(f"images must be a 4-D batch [N, H, W, C] or [N, C, H, W], got shape {tuple(shape)}")
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS} or None, got {layout!r}")
        return layout
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first == last:
        raise ValueError(f"cannot tell the channel axis of images of shape {tuple(shape)}: pass "
                         "layout='NHWC' or layout='NCHW' (channels must number 1 or 3)")
    return "NCHW" if first else "NHWC"


def to_float255_nchw(images: Images, device, layout: Optional[str] = None) -> torch.Tensor:
    """Convert a batch in the module's image convention to float32 ``[N, 3, H, W]`` with values 0..255."""
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if not torch.is_tensor(x):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if detect_layout(x.shape, layout) == "NHWC":
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]} ({layout} layout of shape "
                         f"{tuple(images.shape)})")
    if x.dtype == torch.uint8:
        x = x.to(device=device, dtype=torch.float32)
    elif x.is_floating_point():
        x = x.to(device=device, dtype=torch.float32)
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float images must have values in [0, 1] (uint8 images 0..255), got range "
                             f"[{lo:.3g}, {hi:.3g}]; map data in [-1, 1] with (x + 1) / 2")
        x = x.clamp(0.0, 1.0) * 255.0
    else:
        raise TypeError(f"images must be uint8 (0..255) or floating point (0..1), got {x.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


class InceptionFeatureExtractor:
    """The FID Inception network with its weights and input pipeline, ready to extract features.

    Args:
        weights: path of the weights (see ``weights.resolve_weights`` for where it looks when ``None``).
        device: torch device (default CPU).
        resize: ``"tf"`` (the graph's own resize and scaling; default) or ``"pytorch-fid"``.
        download: allow downloading the weights into the cache when no local file is found.
        network: use this module instead of loading weights (e.g. random weights in tests); it must
            have ``has_logits`` and map preprocessed ``[B, 3, 299, 299]`` to ``(pool, logits or None)``.
    """

    def __init__(self, weights: Optional[Union[str, Path]] = None, device=None, resize: str = "tf",
                 download: bool = True, network: Optional[torch.nn.Module] = None):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.device = torch.device(device if device is not None else "cpu")
        self.resize = resize
        if network is None:
            self.weights_path = resolve_weights(weights, download=download)
            state, self.weights_source = load_inception_state_dict(self.weights_path)
            network = FIDInceptionV3(with_logits="fc.weight" in state)
            network.load_state_dict(state)
        else:
            self.weights_path, self.weights_source = None, "custom"
        self.network = network.to(self.device).eval()
        self.logits_unavailable_reason = None if network.has_logits else (
            f"the Inception weights ({self.weights_path or 'custom network'}) hold the feature layers "
            f"only, without the 1008-class head, so the Inception Score cannot be computed; use "
            f"{PT_INCEPTION_FILENAME} for it")

    @property
    def has_logits(self) -> bool:
        return self.network.has_logits

    def _batch(self, images: Images, layout: Optional[str]) -> InceptionFeatures:
        # inference mode per batch, never across a generator's yield (it would leak into the caller)
        with torch.inference_mode():
            x = preprocess(to_float255_nchw(images, self.device, layout), self.resize)
            pool, logits = self.network(x)
            return InceptionFeatures(pool.float().cpu().numpy(),
                                     None if logits is None else logits.float().cpu().numpy())

    def iter_features(self, batches: Iterable[Images], layout: Optional[str] = None) -> Iterator[InceptionFeatures]:
        """Features of each batch of an iterable of image batches (e.g. a data loader)."""
        for batch in batches:
            yield self._batch(batch, layout)

    def features(self, images: Images, batch_size: int = 50, layout: Optional[str] = None) -> InceptionFeatures:
        """Features of ``N`` images (see the module docstring for the convention), ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(images)
        if n == 0:
            raise ValueError("no images given")
        parts = list(self.iter_features((images[i:i + batch_size] for i in range(0, n, batch_size)), layout))
        pool = np.concatenate([p.pool for p in parts])
        logits = None if parts[0].logits is None else np.concatenate([p.logits for p in parts])
        return InceptionFeatures(pool, logits)
