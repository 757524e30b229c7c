"""Small helpers shared by every module: broadcasting per-sample scalars, input checks, noise."""
from typing import Optional

import torch


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


def randn_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (its device and dtype) drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
