"""Following a training run's numbered checkpoints as they are written (``--mode eval`` with ``eval.wait``).

A numbered checkpoint ``n`` is *ready* when ``checkpoints/checkpoint_<n>.pth`` exists and matches its
checksum file ``checkpoint_<n>.pth.json`` in size and SHA-256 (:func:`scoresde.checkpoint.verify`).
Training writes the checksum file first and renames the complete file into place last, so what it writes
is ready the moment it appears. Anything else is waited for: a checksum file whose checkpoint has not
arrived, a file being copied in by hand (too short for its checksum file, or no checksum file yet).

A present file that is not ready counts as *settled* once its size and mtime, and its checksum file's,
have not changed for ``settle`` seconds. It is then handed on all the same, and the loader decides:
one that still does not match its checksum is damaged for good and is skipped with a warning, as in
every other mode, and one without a checksum file (written by an older version) is loaded with torch's
own zip check only.

A missing ``n`` is skipped once a higher-numbered checkpoint exists, because training writes them in
increasing order. In a ``torchrun`` world, rank 0 makes every decision and broadcasts it, so all ranks
walk the same sequence even if their views of the filesystem differ.
"""
import logging
import os
import time
from typing import Callable, Iterator, Optional, Tuple

from . import checkpoint, distributed

log = logging.getLogger("scoresde")

# what rank 0 decides at a poll, for the checkpoint number every rank is at
_YIELD, _SKIP, _WAIT, _STOP = "yield", "skip", "wait", "stop"

_Stat = Optional[Tuple[int, int]]  # (size, mtime_ns), None when absent


def _stat(path: str) -> _Stat:
    try:
        s = os.stat(path)
    except FileNotFoundError:
        return None
    return s.st_size, s.st_mtime_ns


def _not_ready_because(path: str) -> Optional[str]:
    """Why the checkpoint at ``path`` is not ready yet, or ``None`` when it matches its checksum file."""
    if checkpoint.read_sidecar(path) is None:
        return f"no checksum file {os.path.basename(checkpoint.sidecar_path(path))} yet"
    try:
        checkpoint.verify(path)  # cheap size check first; the SHA-256 only when the size matches
    except checkpoint.DamagedCheckpoint as e:
        return e.reason
    except FileNotFoundError:
        return "removed while being checked"
    return None


class _Watch:
    """Rank 0's view of the checkpoint it waits for: the files' last change, and one log line per state."""

    def __init__(self, checkpoints: checkpoint.CheckpointDir, settle: float, clock: Callable[[], float]):
        self.checkpoints, self.settle, self.clock = checkpoints, settle, clock
        self.n: Optional[int] = None
        self.signature: Tuple[_Stat, _Stat] = (None, None)
        self.changed_at = 0.0
        self.reason: Optional[str] = None
        self.logged: set = set()

    def _look_at(self, n: int) -> None:
        path = self.checkpoints.numbered_path(n)
        signature = (_stat(path), _stat(checkpoint.sidecar_path(path)))
        if n != self.n:
            self.n, self.logged = n, set()
        elif signature == self.signature:
            return
        # a new checkpoint or changed files: check again (so a file is hashed at most once per change)
        self.signature, self.changed_at = signature, self.clock()
        self.reason = _not_ready_because(path) if signature[0] is not None else None

    def _log_once(self, key: str, level: int, message: str, *args) -> None:
        if key not in self.logged:
            self.logged.add(key)
            log.log(level, message, *args)

    def decide(self, n: int) -> str:
        """``_YIELD`` (ready, or present and settled), ``_SKIP`` (never written) or ``_WAIT``."""
        self._look_at(n)
        path = self.checkpoints.numbered_path(n)
        if self.signature[0] is None:
            later = [m for m in self.checkpoints.numbers() if m > n]
            if later:
                log.warning("checkpoint %s was never written (checkpoint_%d.pth exists); skipped", path, later[0])
                return _SKIP
            self._log_once("absent", logging.INFO, "waiting for checkpoint %s", path)
            return _WAIT
        if self.reason is None:
            return _YIELD
        still_for = self.clock() - self.changed_at
        if still_for >= self.settle:
            log.warning("checkpoint %s has not changed for %g s and is still not complete (%s); handing it "
                        "to the loader", path, still_for, self.reason)
            return _YIELD
        self._log_once("incomplete", logging.INFO, "checkpoint %s is there but not complete yet (%s); waiting",
                       path, self.reason)
        return _WAIT

    def why_stopped(self, n: int, timeout: float) -> str:
        path = self.checkpoints.numbered_path(n)
        state = (f"{path} is there but not complete ({self.reason})" if self.signature[0] is not None
                 else f"{path} was not written")
        return f"stopped following {self.checkpoints.numbered_dir}: no new checkpoint for {timeout:g} s; {state}"


def follow_numbered(checkpoints: checkpoint.CheckpointDir, begin: int, end: int, *, timeout: float,
                    poll_interval: float, settle: Optional[float] = None,
                    info: Optional[distributed.DistInfo] = None, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> Iterator[int]:
    """Yield the numbers ``n`` in ``[begin, end]`` of the numbered checkpoints of ``checkpoints``, in
    increasing order and each once, as each becomes ready (see the module docstring); stop after ``end``,
    or after ``timeout`` seconds without a new one (counted from the start or from the moment the consumer
    asks for the next one, so the time spent on a checkpoint does not count). The directory is looked at
    every ``poll_interval`` seconds; a present file that is not ready is handed on once it has not changed
    for ``settle`` seconds (default three polls). With ``info`` of a world of several processes, call it on
    every rank: rank 0 decides and broadcasts each step. ``clock`` and ``sleep`` are for tests."""
    for name, value in (("timeout", timeout), ("poll_interval", poll_interval)):
        if not value > 0:
            raise ValueError(f"follow_numbered: {name} = {value!r} must be a positive number of seconds")
    if begin > end:
        raise ValueError(f"follow_numbered: begin = {begin} is after end = {end}")
    info = info or distributed.DistInfo()
    watch = _Watch(checkpoints, 3 * poll_interval if settle is None else settle, clock) if info.is_main else None
    return _follow(watch, checkpoints, begin, end, timeout, poll_interval, info, clock, sleep)


def _follow(watch: Optional[_Watch], checkpoints: checkpoint.CheckpointDir, begin: int, end: int, timeout: float,
            poll_interval: float, info: distributed.DistInfo, clock: Callable[[], float],
            sleep: Callable[[float], None]) -> Iterator[int]:
    n, since = begin, clock()
    while n <= end:
        decision = None
        if watch is not None:
            decision = watch.decide(n)
            if decision == _WAIT and clock() - since >= timeout:
                log.info("%s", watch.why_stopped(n, timeout))
                decision = _STOP
        decision = distributed.broadcast_from_main(decision, info)
        if decision == _STOP:
            return
        if decision == _WAIT:
            if watch is not None:
                sleep(poll_interval)  # the other ranks wait in the next broadcast
            continue
        if decision == _YIELD:
            yield n
            since = clock()
        n += 1
    if watch is not None:
        log.info("stopped following %s: checkpoint %d, the last one asked for, is done", checkpoints.numbered_dir, end)


__all__ = ["follow_numbered"]
