"""Shared helpers for the benchmark scripts: a robust timer and a small convolutional score network.

The ratio every benchmark reports is ``wall time / (nfe x time of one score call)``, so both numbers must be
measured the same way, in the same process: :func:`median_time` for whole runs and :func:`time_score_call`
for one call of the score function, both the median of several repeats after warm-up.
"""
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

# make ``import scoresde`` work when a benchmark is run as a script from a fresh checkout
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

IMAGE_SHAPE = (64, 3, 32, 32)


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs, after ``warmup`` untimed runs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_score_call(score_fn: Callable, x: torch.Tensor, t: torch.Tensor, repeats: int = 20,
                    warmup: int = 3) -> float:
    """Median time in seconds of one ``score_fn(x, t)`` call under ``torch.no_grad()``."""
    with torch.no_grad():
        return median_time(lambda: score_fn(x, t), repeats=repeats, warmup=warmup)


class SmallConvScore(nn.Module):
    """A small time-conditioned convolutional score network ``s(x, t) ~ grad log p_t(x)``.

    Three 3x3 convolutions with SiLU, the time entering as a sinusoidal embedding added to the hidden
    features. It is not meant to be trained well: it stands in for a real network of modest cost
    (a few ms for ``64x3x32x32`` on a CPU core) so that a sampler's overhead can be measured against it.
    """

    def __init__(self, channels: int = 3, hidden: int = 32, embed_dim: int = 32):
        super().__init__()
        self.embed_dim = embed_dim
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv_mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)
        self.time_proj = nn.Linear(embed_dim, hidden)
        self.act = nn.SiLU()

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal embedding of ``t`` (``[B]``) to ``[B, embed_dim]``."""
        half = self.embed_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
        angles = 1000.0 * t[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_proj(self.time_embedding(t.to(x.dtype)))
        h = self.act(self.conv_in(x))
        h = self.act(self.conv_mid(h) + temb[:, :, None, None])
        return self.conv_out(h)


def small_conv_score(seed: int = 0, device: Optional[torch.device] = None) -> SmallConvScore:
    """A :class:`SmallConvScore` with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    return SmallConvScore().to(device).eval()


def markdown_table(headers, rows) -> str:
    """Format ``rows`` (lists of cells) under ``headers`` as a markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
