"""Small helpers shared by every module: broadcasting per-sample scalars, input checks, noise."""
import operator
from typing import Optional, Tuple

import torch

from . import noise


def batch_broadcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample tensor ``v`` of shape ``[B]`` to ``[B, 1, ..., 1]`` so it broadcasts
    against ``x`` of shape ``[B, ...]`` (any rank). Casts to ``x``'s dtype."""
    return v.to(x.dtype).reshape(v.shape[0], *([1] * (x.dim() - 1)))


def check_time(t: torch.Tensor, x: torch.Tensor, name: str = "t") -> None:
    """Raise a ``ValueError`` unless ``t`` is a tensor of shape ``[B]`` matching ``x``'s batch."""
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B], got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must have shape [B] = [{x.shape[0]}] to match x of shape {tuple(x.shape)}, "
            f"got {tuple(t.shape)}")


def flat_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``[B, ...] -> [B]``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


randn_like = noise.randn_like  # kept here, where the library first defined it


def check_shape(shape, name: str = "shape") -> Tuple[int, ...]:
    """``shape`` as a tuple of positive ints ``[B, ...]`` (a batch size and at least one more dimension);
    ``TypeError``/``ValueError`` naming ``name`` otherwise (a string, ``None``, floats, an empty batch)."""
    example = "a tuple of ints [B, ...] such as (64, 3, 32, 32)"
    if shape is None or isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"{name} must be {example}, got {shape!r}")
    sizes = []
    for size in shape:
        try:
            if isinstance(size, bool):
                raise TypeError
            sizes.append(operator.index(size))
        except TypeError:
            raise TypeError(f"{name} must be {example}, got {tuple(shape)!r} (entry {size!r} is not an int)") from None
    if len(sizes) < 2:
        raise ValueError(f"{name} must be {example} with at least one dimension after the batch, got {tuple(sizes)}")
    if sizes[0] < 1:
        raise ValueError(f"{name} = {tuple(sizes)} asks for an empty batch: the batch size {name}[0] must be >= 1")
    if any(s < 1 for s in sizes):
        raise ValueError(f"{name} must be [B, ...] with positive sizes, got {tuple(sizes)}")
    return tuple(sizes)


check_generator = noise.check_randomness


def check_data(x, name: str) -> None:
    """``ValueError`` unless ``x`` is a floating-point tensor ``[B, ...]`` with ``B >= 1`` and finite entries."""
    if not torch.is_tensor(x) or x.dim() < 2 or not x.is_floating_point():
        got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point tensor of shape [B, ...], got {got}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): give at least one sample")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on device 'meta', which holds no data; give it on 'cpu' or 'cuda'")
    bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"{name} holds NaN or inf in {len(rows)} of its {x.shape[0]} samples (first: index "
                         f"{rows[0]}); give finite values")


def check_placement(device, dtype) -> None:
    """``dtype`` must be a floating-point ``torch.dtype``; ``device`` ``None`` or a real device (not ``'meta'``)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype such as torch.float32, got {dtype!r}")
    if device is None:
        return
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a name such as 'cpu' or 'cuda:0', got {device!r}") from None
    if device.type == "meta":
        raise ValueError("device='meta' holds no data, so nothing can be sampled on it; use 'cpu' or 'cuda'")
