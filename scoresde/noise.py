"""Randomness keyed by sample, so that a sample does not depend on the batch it is drawn in.

Noise drawn from one ``torch.Generator`` for a whole batch makes row ``i`` depend on the rows before it: the
same seed gives other samples at another batch size or another number of processes. :class:`RowNoise` gives
every row its own generator, seeded with ``seeds[i]``. A draw of shape ``[k B, ...]`` (``B`` rows, ``k``
slabs per row: ``k = 1`` for the state, ``k`` particles per row for ``smc``) fills rows ``i k .. i k + k - 1``
from generator ``i`` only, so row ``i``'s noise is a function of its seed and of the sequence of draw shapes,
which a sampler fixes. :func:`sample_seeds` makes those seeds from ``(seed, checkpoint step, sample index)``.

Wherever the library takes ``generator=`` (samplers, loss functions, the likelihood, dequantisation), a
``RowNoise`` may be given instead; library code draws through :func:`randn`, :func:`rand` and
:func:`randint`, which serve both. Cost: one generator call per row per draw (see
``benchmarks/sampling_scale.py`` for the measured overhead on a predictor-corrector step).
"""
import operator
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

Tensor = torch.Tensor

#: the largest seed: torch.Generator.manual_seed takes any 64-bit value; 63 bits keep it a positive int64
MAX_SEED = 2 ** 63 - 1


def _check_seed(value, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2**63 - 1], got {value}")
    return value


def sample_seeds(seed: int, step: int, indices: Union[Sequence[int], Tensor]) -> List[int]:
    """The seed of sample ``i`` of a draw, for every ``i`` in ``indices``: a function of ``(seed, step, i)``
    alone (NumPy's ``SeedSequence`` hash of the three, so nearby indices give unrelated streams)."""
    seed, step = _check_seed(seed, "seed"), _check_seed(step, "step")
    if torch.is_tensor(indices):
        indices = indices.tolist()
    out = []
    for i in indices:
        i = _check_seed(i, "sample index")
        words = np.random.SeedSequence([seed, step, i]).generate_state(2, np.uint64)
        out.append(int(words[0]) & MAX_SEED)
    return out


class RowNoise:
    """Per-row random streams: row ``i`` draws from a ``torch.Generator`` seeded with ``seeds[i]`` on ``device``
    (default CPU). Use it in place of a ``torch.Generator`` wherever the library takes ``generator=``.
    Streams of CPU and CUDA generators differ, so rows agree across batch sizes and processes on the same
    kind of device."""

    def __init__(self, seeds: Sequence[int], device=None):
        if torch.is_tensor(seeds):
            seeds = seeds.tolist()
        if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__"):
            raise TypeError(f"seeds must be a sequence of ints (one per row), got {type(seeds).__name__}")
        if len(seeds) == 0:
            raise ValueError("seeds is empty: give one seed per row")
        self.seeds = [_check_seed(s, f"seeds[{i}]") for i, s in enumerate(seeds)]
        self.device = torch.device("cpu" if device is None else device)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def __repr__(self) -> str:
        return f"RowNoise({len(self)} rows on {self.device})"

    def _fill(self, shape, dtype, device, fill) -> Tensor:
        shape = tuple(shape)
        rows = len(self.generators)
        if not shape or shape[0] % rows:
            raise ValueError(f"a RowNoise of {rows} rows draws tensors of shape [k * {rows}, ...], one slab of k "
                             f"per row; got shape {shape}: give one seed per row of the batch")
        out = torch.empty(shape, dtype=dtype, device=self.device)
        k = shape[0] // rows
        for i, g in enumerate(self.generators):
            fill(out[i * k:(i + 1) * k], g)
        return out if device is None else out.to(device)

    def randn(self, shape, *, dtype=torch.float32, device=None) -> Tensor:
        return self._fill(shape, dtype, device, lambda slab, g: slab.normal_(generator=g))

    def rand(self, shape, *, dtype=torch.float32, device=None) -> Tensor:
        return self._fill(shape, dtype, device, lambda slab, g: slab.uniform_(generator=g))

    def randint(self, low: int, high: int, shape, *, dtype=torch.int64, device=None) -> Tensor:
        return self._fill(shape, dtype, device, lambda slab, g: slab.random_(low, high, generator=g))

    def entropy(self) -> List[int]:
        """One fresh 62-bit integer per row, from that row's stream (seeds for per-row Brownian motions)."""
        return [int(torch.randint(2 ** 62, (), generator=g, device=self.device)) for g in self.generators]


Randomness = Union[None, torch.Generator, RowNoise]


def check_randomness(generator, name: str = "generator") -> None:
    """``TypeError`` unless ``generator`` is ``None``, a ``torch.Generator`` or a :class:`RowNoise`."""
    if generator is not None and not isinstance(generator, (torch.Generator, RowNoise)):
        raise TypeError(f"{name} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), a "
                        f"scoresde.noise.RowNoise or None, got {type(generator).__name__} {generator!r}")


def randn(shape, generator: Randomness = None, *, dtype=torch.float32, device=None) -> Tensor:
    """Standard normal noise of ``shape`` from a ``torch.Generator`` or a :class:`RowNoise`."""
    if isinstance(generator, RowNoise):
        return generator.randn(shape, dtype=dtype, device=device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def rand(shape, generator: Randomness = None, *, dtype=torch.float32, device=None) -> Tensor:
    """Uniform ``[0, 1)`` noise of ``shape`` from a ``torch.Generator`` or a :class:`RowNoise`."""
    if isinstance(generator, RowNoise):
        return generator.rand(shape, dtype=dtype, device=device)
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=device)


def randint(low: int, high: int, shape, generator: Randomness = None, *, dtype=torch.int64, device=None) -> Tensor:
    """Integers uniform in ``[low, high)`` of ``shape`` from a ``torch.Generator`` or a :class:`RowNoise`."""
    if isinstance(generator, RowNoise):
        return generator.randint(low, high, shape, dtype=dtype, device=device)
    return torch.randint(low, high, tuple(shape), generator=generator, dtype=dtype, device=device)


def randn_like(x: Tensor, generator: Randomness = None) -> Tensor:
    """Standard normal noise shaped like ``x`` (its device and dtype)."""
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


__all__ = ["RowNoise", "sample_seeds", "check_randomness", "randn", "rand", "randint", "randn_like", "MAX_SEED",
           "Randomness"]
