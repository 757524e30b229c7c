"""Training checkpoints that survive a kill at any moment, a damaged file and a second process.

A checkpoint is one ``torch.save``d dict with a checksum file next to it, ``<file>.json``:
``{"sha256", "size", "step"}`` (and ``"previous"``, the checksum of the file it replaces). Writes are
atomic: the bytes go to a temporary file in the same directory (hashed as they are written) and are
``fsync``ed; the checksum file is written (atomically) next, and only then is the temporary file
``os.replace``d over the target. A kill at any moment therefore leaves either the previous file (which
matches the previous or the new checksum file) or the new file with its checksum, never a partial file
that passes; a checksum file whose checkpoint never arrived is removed at the next start.

Layout under a run's ``workdir``:

- ``checkpoints/checkpoint_<n>.pth``: numbered checkpoints, ``n = step // snapshot_freq`` (the paper's
  layout); these are what ``--mode eval`` walks through. One is never replaced by another step's state.
- ``checkpoints-meta/checkpoint_<step>.pth``: the pre-emption checkpoints, written every
  ``snapshot_freq_for_preemption`` steps; the newest :data:`META_GENERATIONS` are kept.
- ``train.lock``: held (``flock``) by the training process that owns the workdir.

Resuming takes the newest intact state, meta or numbered (:meth:`CheckpointDir.load_newest`).
"""
import hashlib
import json
import logging
import os
import random
import re
import socket
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

log = logging.getLogger("scoresde")

_NUMBERED = re.compile(r"^checkpoint_(\d+)\.pth$")
META_GENERATIONS = 2       # pre-emption checkpoints kept
TEMPORARY_PREFIX = ".tmp-"  # prefix of the temporary files of a write in progress
LOCK_NAME = "train.lock"


class CheckpointError(ValueError):
    """A checkpoint problem the user has to act on (a ``ValueError``, so the command line reports it in
    one line)."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that is truncated, empty, unreadable or does not match its checksum."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"damaged checkpoint {path}: {reason}")
        self.path, self.reason = path, reason


class WorkdirLocked(CheckpointError):
    """Another live process trains in this workdir."""


# ----------------------------------------------------------------------------- files

class _HashingWriter:
    """A write-only file object that hashes what goes through it (``torch.save`` needs ``write``)."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def sidecar_path(path: str) -> str:
    """The checksum file of checkpoint ``path``."""
    return path + ".json"


def _write_temporary(directory: str, name: str, write: Callable) -> str:
    """``write(f)`` into a new temporary file of ``directory``, flushed and fsynced; returns its path."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{name}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` through a temporary file + fsync + ``os.replace``."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = _write_temporary(directory, name, lambda f: f.write(data))
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(directory)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` with its checksum file, atomically (see the module docstring)."""
    step = obj.get("step") if isinstance(obj, dict) else None
    atomic_write_checked(path, lambda f: torch.save(obj, f), step=int(step) if step is not None else None)


def atomic_write_checked(path: str, write: Callable, **record: Any) -> None:
    """``write(f)`` into ``path`` atomically, with a checksum file that :func:`verify` checks (checkpoints, and
    caches that must never be read half-written or damaged); ``record`` adds fields to that file."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    writer: Dict[str, _HashingWriter] = {}

    def hashed(f):
        writer["w"] = _HashingWriter(f)
        write(writer["w"])

    tmp = _write_temporary(directory, name, hashed)
    _commit(tmp, path, {"sha256": writer["w"].sha.hexdigest(), "size": writer["w"].size, **record})


def _commit(tmp: str, path: str, record: Dict[str, Any]) -> None:
    """Write the checksum ``record`` of the finished temporary file ``tmp``, then rename it to ``path``."""
    try:
        old = read_sidecar(path) if os.path.isfile(path) else None
        if old is not None:  # until the rename below, the file there is still the previous one
            record["previous"] = {"sha256": old["sha256"], "size": old.get("size")}
        atomic_write_bytes(json.dumps(record).encode(), sidecar_path(path))
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


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


def read_sidecar(path: str) -> Optional[Dict[str, Any]]:
    """The checksum record of checkpoint ``path``, or ``None`` when it has none (or it is unreadable)."""
    try:
        with open(sidecar_path(path)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "sha256" in record else None


def file_sha256(path: str) -> str:
    """The SHA-256 of the file at ``path`` (hex), read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def verify(path: str) -> None:
    """Raise :class:`DamagedCheckpoint` when ``path`` is empty, or its size or SHA-256 differ from its
    checksum file (a file without one, e.g. from an older version, is only checked for being empty).
    A file rewritten in place also matches when it is still the complete previous version (a kill came
    between the new checksum file and the rename)."""
    size = os.path.getsize(path)
    if size == 0:
        raise DamagedCheckpoint(path, "empty file")
    record = read_sidecar(path)
    if record is None:
        return
    versions = [record] + ([record["previous"]] if isinstance(record.get("previous"), dict) else [])
    if all(size != version.get("size") for version in versions):
        what = "truncated" if size < record.get("size", 0) else "longer than written"
        raise DamagedCheckpoint(path, f"{what}: {size} bytes, {record.get('size')} written")
    digest = file_sha256(path)
    if all(digest != version.get("sha256") for version in versions):
        raise DamagedCheckpoint(path, "its bytes do not match the checksum written with it")


def load(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save`, after checking it against its checksum.
    ``FileNotFoundError`` names a missing path; :class:`DamagedCheckpoint` a damaged file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    verify(path)
    try:
        # tensors, numbers, strings and containers only: the restricted unpickler, which runs no code
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise  # the file may well be intact: never call it damaged (and set it aside) for that
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad bytes
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DamagedCheckpoint(path, f"not a readable checkpoint ({type(e).__name__}: {reason})") from e
    if not isinstance(state, dict) or "step" not in state:
        raise DamagedCheckpoint(path, "not a training checkpoint (no 'step')")
    return state


# ----------------------------------------------------------------------------- one run's checkpoints

class CheckpointDir:
    """Numbered and pre-emption (meta) checkpoints of one run (see the module docstring for the layout)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.numbered_dir = os.path.join(workdir, "checkpoints")
        self.meta_dir = os.path.join(workdir, "checkpoints-meta")

    def numbered_path(self, n: int) -> str:
        return os.path.join(self.numbered_dir, f"checkpoint_{int(n)}.pth")

    def meta_path(self, step: int) -> str:
        return os.path.join(self.meta_dir, f"checkpoint_{int(step)}.pth")

    @staticmethod
    def _indices(directory: str) -> List[int]:
        if not os.path.isdir(directory):
            return []
        found = (_NUMBERED.match(name) for name in os.listdir(directory))
        return sorted(int(m.group(1)) for m in found if m)

    def numbers(self) -> List[int]:
        """Sorted numbers ``n`` of the numbered checkpoints present."""
        return self._indices(self.numbered_dir)

    def meta_steps(self) -> List[int]:
        """Sorted steps of the meta checkpoints present."""
        return self._indices(self.meta_dir)

    def numbered_step(self, n: int, read: bool = False) -> Optional[int]:
        """The step held by numbered checkpoint ``n`` as its checksum file says; ``None`` when unknown
        (no file, or a file without checksum file, from an older version, unless ``read``: then the file
        is loaded to learn it; ``None`` again when it is damaged)."""
        path = self.numbered_path(n)
        record = read_sidecar(path)
        if record is not None and record.get("step") is not None:
            return int(record["step"])
        if read and os.path.isfile(path):
            try:
                return int(load(path)["step"])
            except CheckpointError:
                return None
        return None

    def save_numbered(self, n: int, state: Dict[str, Any]) -> str:
        """Write ``checkpoint_<n>.pth``; refuse to replace one that holds another step."""
        path = self.numbered_path(n)
        held = self.numbered_step(n, read=True)
        if held is not None and held != int(state["step"]):
            raise CheckpointError(f"{path} holds step {held}; saving step {state['step']} as checkpoint {n} "
                                  f"would overwrite it (n = step // training.snapshot_freq): keep the "
                                  f"training.snapshot_freq these checkpoints were written with, or use another "
                                  f"--workdir")
        atomic_save(state, path)
        return path

    def save_meta(self, state: Dict[str, Any]) -> str:
        """Write the meta checkpoint of ``state['step']`` and delete all but the newest
        :data:`META_GENERATIONS`."""
        path = self.meta_path(state["step"])
        atomic_save(state, path)
        for step in self.meta_steps()[:-META_GENERATIONS]:
            old = self.meta_path(step)
            _remove(old)
            _remove(sidecar_path(old))
        return path

    def candidates(self) -> List[Tuple[Optional[int], str]]:
        """``(step, path)`` of every checkpoint present, newest first (meta before numbered on a tie).
        Files of an older version (no checksum file, so no step known without loading them: ``None``)
        come after all others: its meta checkpoint ``checkpoints-meta/checkpoint.pth``, then its
        numbered ones from the highest ``n``."""
        found = [((1, step, 1), step, self.meta_path(step)) for step in self.meta_steps()]
        for n in self.numbers():
            step = self.numbered_step(n)
            found.append(((1, step, 0) if step is not None else (0, 0, n), step, self.numbered_path(n)))
        legacy_meta = os.path.join(self.meta_dir, "checkpoint.pth")
        if os.path.isfile(legacy_meta):
            found.append(((0, 1, 0), None, legacy_meta))
        return [(step, path) for _, step, path in sorted(found, key=lambda entry: entry[0], reverse=True)]

    def newest(self) -> Optional[str]:
        """Path of the newest checkpoint present (not checked; see :meth:`load_newest`)."""
        candidates = self.candidates()
        return candidates[0][1] if candidates else None

    def load_newest(self, map_location="cpu",
                    on_damaged: Optional[Callable[[DamagedCheckpoint], None]] = None
                    ) -> Optional[Tuple[str, Dict[str, Any]]]:
        """``(path, state)`` of the newest intact checkpoint, meta or numbered; ``None`` when there is none
        at all. Each damaged one is logged as a warning naming it (and given to ``on_damaged``) and the
        next older one tried; :class:`CheckpointError` lists what was tried when none is intact."""
        tried = []
        for _, path in self.candidates():
            try:
                return path, load(path, map_location)
            except FileNotFoundError:  # removed meanwhile (an older meta generation)
                continue
            except DamagedCheckpoint as e:
                log.warning("skipping %s; trying the next older checkpoint", e)
                tried.append(f"{path} ({e.reason})")
                if on_damaged is not None:
                    on_damaged(e)
        if tried:
            raise CheckpointError(f"no intact checkpoint in {self.workdir}; tried: {'; '.join(tried)}. Delete "
                                  f"the damaged files to start afresh, or use another --workdir")
        return None

    def set_aside(self, path: str) -> str:
        """Rename a damaged checkpoint to ``<path>.damaged`` (kept for inspection, never loaded again)."""
        target = path + ".damaged"
        os.replace(path, target)
        _remove(sidecar_path(path))
        return target

    def remove_leftovers(self) -> List[str]:
        """Delete the temporary files of saves a kill interrupted, and checksum files whose checkpoint
        was never put in place; returns what was deleted. Only for the process that holds the lock."""
        removed = []
        for directory in (self.numbered_dir, self.meta_dir, self.workdir):
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                orphan = (name.endswith(".pth.json") and _NUMBERED.match(name[:-5])
                          and not os.path.exists(path[:-5]))
                if (name.startswith(TEMPORARY_PREFIX) and os.path.isfile(path)) or orphan:
                    _remove(path)
                    removed.append(path)
        return removed


# ----------------------------------------------------------------------------- the workdir lock

def _describe(holder: Dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


class WorkdirLock:
    """An exclusive ``flock`` on ``<workdir>/train.lock``, which holds the owner's pid, host and start
    time. The kernel drops the lock when its process dies (even by ``kill -9``), so a lock file left by
    a dead process is taken over, with a message naming it."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self.fd: Optional[int] = None

    def acquire(self) -> Optional[str]:
        """Take the lock; returns a message when it took over a dead process's lock. Raises
        :class:`WorkdirLocked` naming the holder when a live process has it."""
        import fcntl
        os.makedirs(self.workdir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise WorkdirLocked(f"{self.workdir} is in use by another training run ({_describe(holder)}; "
                                    f"lock file {self.path}): wait for it to end or stop it, or train in "
                                    f"another --workdir") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file the previous holder unlinked while we opened it
                break
            os.close(fd)
        previous = self._read(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        if previous:
            return (f"took over the lock of a training run that is no longer running ({_describe(previous)}; "
                    f"lock file {self.path})")
        return None

    @staticmethod
    def _read(fd: int) -> Dict[str, Any]:
        try:
            data = os.pread(fd, 4096, 0)
            holder = json.loads(data.decode()) if data else {}
        except (OSError, ValueError):
            return {"pid": "?", "host": "?", "started": "? (unreadable lock file)"}
        return holder if isinstance(holder, dict) else {}

    def release(self) -> None:
        if self.fd is None:
            return
        _remove(self.path)  # while still holding it: a waiting opener then sees another inode and retries
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


# ----------------------------------------------------------------------------- random states

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


__all__ = ["atomic_save", "atomic_write_bytes", "load", "verify", "read_sidecar", "sidecar_path", "CheckpointDir",
           "WorkdirLock", "CheckpointError", "DamagedCheckpoint", "WorkdirLocked", "META_GENERATIONS",
           "rng_state", "set_rng_state"]
