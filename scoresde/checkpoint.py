"""Training checkpoints that survive a kill at any moment.

A checkpoint is one ``torch.save``d dict. Writes are atomic: the bytes go to a temporary file in the
same directory, which is flushed, ``fsync``ed and then ``os.replace``d over the target, so a reader
sees either the previous complete file or the new complete file, never a partial one.

Layout under a run's ``workdir`` (the paper's layout):

- ``checkpoints/checkpoint_<n>.pth``: numbered checkpoints, ``n = step // snapshot_freq``; these are
  what ``--mode eval`` walks through (``eval.begin_ckpt`` .. ``eval.end_ckpt``).
- ``checkpoints-meta/checkpoint.pth``: the newest state, rewritten every
  ``snapshot_freq_for_preemption`` steps (and with every numbered one) so a pre-empted job loses little.
"""
import os
import random
import re
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np
import torch

_NUMBERED = re.compile(r"^checkpoint_(\d+)\.pth$")


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file + fsync + ``os.replace`` (atomic on POSIX)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    # makes the rename itself durable; not every platform lets a directory be opened
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save`; ``FileNotFoundError`` names the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    # tensors, numbers, strings and containers only: the restricted unpickler, which runs no code
    return torch.load(path, map_location=map_location, weights_only=True)


class CheckpointDir:
    """Numbered and meta checkpoints of one run (see the module docstring for the layout)."""

    def __init__(self, workdir: str):
        self.numbered_dir = os.path.join(workdir, "checkpoints")
        self.meta_path = os.path.join(workdir, "checkpoints-meta", "checkpoint.pth")

    def numbered_path(self, n: int) -> str:
        return os.path.join(self.numbered_dir, f"checkpoint_{int(n)}.pth")

    def numbers(self) -> List[int]:
        """Sorted numbers ``n`` of the numbered checkpoints present."""
        if not os.path.isdir(self.numbered_dir):
            return []
        found = (_NUMBERED.match(name) for name in os.listdir(self.numbered_dir))
        return sorted(int(m.group(1)) for m in found if m)

    def save_numbered(self, n: int, state: Dict[str, Any]) -> str:
        path = self.numbered_path(n)
        atomic_save(state, path)
        return path

    def save_meta(self, state: Dict[str, Any]) -> None:
        atomic_save(state, self.meta_path)

    def newest(self) -> Optional[str]:
        """Path of the newest state to resume from: the meta checkpoint, else the highest numbered one."""
        if os.path.isfile(self.meta_path):
            return self.meta_path
        numbers = self.numbers()
        return self.numbered_path(numbers[-1]) if numbers else None

    def load_newest(self, map_location="cpu") -> Optional[Dict[str, Any]]:
        path = self.newest()
        return None if path is None else load(path, map_location)


def rng_state() -> Dict[str, Any]:
    """Every global random state a training step can touch: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["atomic_save", "load", "CheckpointDir", "rng_state", "set_rng_state"]
