"""Multi-process training through ``torchrun``: process-group set-up and per-rank data sharding.

``torchrun --nproc_per_node=K main.py ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them and joins the group (NCCL on GPUs,
Gloo on CPU). A plain ``python main.py`` is a world of one and needs no group. Only rank 0 writes
files (:attr:`DistInfo.is_main`). Data sharding per rank is ``scoresde.datasets.DataStream``'s.
"""
import dataclasses
import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def init(device: Optional[str] = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    ``device``: ``'cpu'``, ``'cuda'`` or ``None`` (CUDA when available). Each rank takes the GPU
    ``LOCAL_RANK``.
    """
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world_size})")
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a tensor over all ranks (a no-op in a world of one)."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def sum_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of a tensor over all ranks, as a new tensor on ``value``'s device (a copy in a world of one)."""
    value = value.detach().clone()
    if info.enabled:
        reduced = value.to(info.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        value = reduced.to(value.device)
    return value


def gather_rows(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's ``[n_r, ...]`` tensor (``n_r`` may differ between ranks, even be 0: a rank with no rows may
    pass any empty tensor of the dtype), concatenated in rank order on every rank, on ``value``'s device. The
    collective runs on ``info.device`` (NCCL needs CUDA)."""
    if not info.enabled:
        return value
    shapes = [None] * info.world_size
    dist.all_gather_object(shapes, tuple(value.shape))
    sizes = [shape[0] for shape in shapes]
    trailing = next((shape[1:] for shape in shapes if shape[0]), tuple(value.shape[1:]))
    local = value.detach().to(info.device).reshape(value.shape[0], *trailing)  # an empty rank takes the others' shape
    padded = local.new_zeros((max(sizes), *trailing))
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]).to(value.device)


def gather_in_order(indices: torch.Tensor, info: DistInfo, *values: torch.Tensor) -> List[torch.Tensor]:
    """Every rank's rows of each of ``values`` (``[n_r, ...]``, row ``k`` belonging to sample ``indices[k]``),
    gathered from all ranks (:func:`gather_rows`) and put in sample-index order, on every rank."""
    order = gather_rows(indices.long(), info).argsort()
    return [gather_rows(value, info)[order] for value in values]


def broadcast_from_main(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank; ``value`` itself in a world of one."""
    if not info.enabled:
        return value
    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0, device=info.device if info.device.type == "cuda" else None)
    return box[0]


__all__ = ["DistInfo", "init", "cleanup", "barrier", "mean_over_ranks", "sum_over_ranks", "gather_rows",
           "gather_in_order", "broadcast_from_main"]
