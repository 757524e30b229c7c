"""Batches for training and evaluation: seeded shuffling, per-rank sharding and exact resume.

A :class:`DataStream` numbers its batches with a global step ``k``. Batch ``k`` is a function of
``(seed, rank, world_size, k)`` only:

* ``epoch, offset = divmod(k, steps_per_epoch)``;
* the epoch's order is ``DistributedSampler(seed=seed).set_epoch(epoch)`` (a permutation drawn
  from ``seed + epoch``, then rank ``r`` takes every ``world_size``-th index from ``r``);
* batch ``k`` is slice ``offset`` of that order; skipping to it costs no data loading;
* its random flips and dequantisation noise come from a generator seeded with
  ``(seed, rank, k, stream_id)``, so they too do not depend on what came before.

A run that saved ``step`` (the number of batches it consumed) therefore resumes with
``DataStream(..., start_step=step)`` and sees exactly the batches the uninterrupted run saw.
"""
import math
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..utils import batch_broadcast


def dequantize_counts(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """8-bit counts ``uint8`` -> float32 ``(x + u) / 256``, ``u ~ U[0, 1)``: the paper's
    ``(255 x' + u) / 256`` for ``x' = x / 255``. Uses ``scoresde.likelihood.uniform_dequantize``
    (the same formula, one implementation for training and bits/dim) when that module exists."""
    try:
        from ..likelihood import uniform_dequantize
    except ImportError:   # the likelihood module is optional for data loading
        return (x.float() + torch.rand(x.shape, generator=generator, device=x.device)) / 256.0
    return uniform_dequantize(x, generator)


def random_flip(x: Tensor, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """Mirror each sample of ``[B, ..., W]`` along its last axis with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(batch_broadcast(flip, x).bool(), x.flip(-1), x)


def step_seed(*keys: int) -> int:
    """A 63-bit seed that mixes non-negative integers (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochBatchSampler(Sampler):
    """The batches of index lists of one epoch of a ``DistributedSampler``, from batch ``offset``."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, drop_last: bool):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.epoch, self.offset = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_position(self, epoch: int, offset: int) -> None:
        self.epoch, self.offset = epoch, offset

    def _order(self, epoch: int) -> List[int]:
        self.sampler.set_epoch(epoch)
        return list(self.sampler)

    def batch(self, epoch: int, index: int) -> List[int]:
        return self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]

    def __iter__(self) -> Iterator[List[int]]:
        order = self._order(self.epoch)
        for i in range(self.offset, self.batches_per_epoch):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.offset


class _BatchView(Dataset):
    """Indexing with a list of indices returns a whole batch (``dataset.get_batch``), so a
    ``DataLoader`` with ``batch_size=None`` fetches a batch per call and does no per-item collation."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]):
        return self.dataset.get_batch(indices)


class DataStream:
    """Iterable of batches ``(x, y)`` of a data set with ``get_batch`` (see the module docstring
    for the order). Images come out as float32 ``[B, C, H, W]`` in ``[0, 1]`` (``uint8`` storage,
    converted once per batch on ``device``), or as the stored ``uint8`` counts with ``raw=True``
    (no flips, no dequantisation: e.g. for bits/dim with its own dequantisation draws); points
    unchanged; ``y`` is ``int64 [B]``.

    ``infinite=True`` yields forever, epoch after epoch; otherwise each ``iter()`` yields the rest
    of the current epoch (a full pass when started at an epoch boundary). ``step`` is the number
    of batches yielded so far (plus ``start_step``).
    """

    def __init__(self, dataset, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True, infinite: bool = True,
                 random_flip: bool = False, uniform_dequantization: bool = False,
                 num_workers: int = 0, device: Optional[torch.device] = None,
                 start_step: int = 0, stream_id: int = 0, raw: bool = False):
        _check_int("batch_size", batch_size, 1)
        _check_int("world_size", world_size, 1)
        _check_int("seed", seed, 0)
        _check_int("start_step", start_step, 0)
        _check_int("num_workers", num_workers, 0)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                     seed=seed, drop_last=drop_last)
        self._batches = EpochBatchSampler(sampler, batch_size, drop_last)
        if self._batches.batches_per_epoch == 0:
            raise ValueError(f"batch_size={batch_size} is larger than the {len(sampler)} examples of "
                             f"rank {rank}'s shard of a data set of {len(dataset)} (drop_last=True)")
        self.device = torch.device("cpu") if device is None else torch.device(device)
        # pinned uint8 batches make the host-to-GPU copy asynchronous; pointless without a GPU
        pin = torch.cuda.is_available() and self.device.type == "cuda"
        self._loader = DataLoader(_BatchView(dataset), sampler=self._batches, batch_size=None,
                                  num_workers=num_workers, pin_memory=pin,
                                  persistent_workers=num_workers > 0)
        self.dataset, self.batch_size, self.seed, self.rank = dataset, batch_size, seed, rank
        self.infinite, self.random_flip, self.uniform_dequantization = infinite, random_flip, uniform_dequantization
        self.step, self.stream_id, self.raw = start_step, stream_id, raw

    @property
    def steps_per_epoch(self) -> int:
        return self._batches.batches_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def position(self, step: int) -> Tuple[int, int]:
        """``(epoch, offset)`` of global batch ``step``."""
        return divmod(step, self.steps_per_epoch)

    def batch_indices(self, step: int) -> List[int]:
        """The data-set indices of global batch ``step`` on this rank (no data is loaded)."""
        return self._batches.batch(*self.position(step))

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        _check_int("step", state["step"], 0)
        self.step = state["step"]

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        while True:
            self._batches.set_position(*self.position(self.step))
            for x, y in self._loader:
                batch = self._finish(x, y, self.step)
                self.step += 1
                yield batch
            if not self.infinite:
                return

    def _finish(self, x: Tensor, y: Tensor, step: int) -> Tuple[Tensor, Tensor]:
        """Move to ``device``; for ``uint8`` images (unless ``raw``) flip, then convert to float or
        dequantise."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if x.dtype != torch.uint8 or self.raw:
            return x, y
        generator = torch.Generator(device=x.device)
        generator.manual_seed(step_seed(self.seed, self.rank, step, self.stream_id))
        if self.random_flip:
            x = random_flip(x, generator=generator)
        x = dequantize_counts(x, generator) if self.uniform_dequantization else x.float().div_(255.0)
        return x, y


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
