"""Progress reporting that suits where the output goes: a live tqdm bar in a terminal, a few plain lines
in a log file, a cluster job's output or CI.

A tqdm bar redraws itself with a carriage return at every update; written to a file, each redraw is a line
of its own (400 of them for one ``--mode sample`` call of 2 batches). :func:`progress_bar` returns the tqdm
bar when the stream is a terminal and otherwise a :class:`LineProgress`, which writes one line at every tenth
of the total (or every ``interval`` seconds, whichever comes first) and one at the end.
"""
import math
import sys
import time
from typing import Callable, Iterable, Optional, TextIO

#: a line at least every this many seconds when the output is not a terminal
INTERVAL_S = 30.0
#: and at every this fraction of the total
FRACTION = 0.1


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (``False`` for files, pipes and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class LineProgress:
    """A tqdm-like progress report written as whole lines: ``desc: 30% 300/1000 [00:12<00:28, 25.0 it/s] k=v``.

    A line is written when the count passes the next multiple of ``fraction * total`` or ``interval`` seconds
    after the previous line, and by :meth:`close` (at most ``1 / fraction + 1`` lines for a run faster than
    ``interval`` seconds per tenth). Supports the part of tqdm's interface the library uses: iteration,
    ``update``, ``set_postfix``, ``close``, ``n``, and use as a context manager.
    """

    def __init__(self, iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: Optional[str] = None,
                 initial: int = 0, disable: bool = False, file: Optional[TextIO] = None,
                 interval: float = INTERVAL_S, fraction: float = FRACTION, clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc = iterable, total, desc or ""
        self.n = self.start_n = self.written_n = int(initial)
        self.disable, self.file, self.interval, self.clock = disable, file, float(interval), clock
        self.step = max(1, math.ceil(fraction * total)) if total else None
        self.next_n = self._next_mark(self.n)
        self.start_t = self.last_t = clock()
        self.postfix = ""
        self.closed = False

    def _next_mark(self, n: int) -> float:
        return (n // self.step + 1) * self.step if self.step else math.inf

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.disable or self.closed:
            return
        now = self.clock()
        if self.n >= self.next_n or now - self.last_t >= self.interval:
            self._write(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def format_line(self, now: float) -> str:
        elapsed = now - self.start_t
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else math.inf
        if self.total:
            remaining = (self.total - self.n) / rate if rate > 0 else math.inf
            head = f"{100 * self.n / self.total:3.0f}% {self.n}/{self.total} [{_duration(elapsed)}<{_duration(remaining)}"
        else:
            head = f"{self.n} [{_duration(elapsed)}"
        line = f"{self.desc}: {head}, {rate:.3g} it/s]" if self.desc else f"{head}, {rate:.3g} it/s]"
        return f"{line} {self.postfix}" if self.postfix else line

    def _write(self, now: float) -> None:
        stream = self.file if self.file is not None else sys.stderr
        stream.write(self.format_line(now) + "\n")
        stream.flush()
        self.last_t, self.written_n = now, self.n
        self.next_n = self._next_mark(self.n)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.n != self.written_n:
            self._write(self.clock())


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: Optional[str] = None,
                 initial: int = 0, disable: bool = False, file: Optional[TextIO] = None, **tqdm_options):
    """A live tqdm bar on a terminal (or in a notebook); a :class:`LineProgress` (a few whole lines) anywhere else.

    ``file`` is the stream written to (default ``sys.stderr``, as tqdm); ``tqdm_options`` go to tqdm only.
    """
    stream = file if file is not None else sys.stderr
    if disable or not (is_terminal(stream) or "ipykernel" in sys.modules):  # a notebook gets tqdm's widget
        return LineProgress(iterable, total=total, desc=desc, initial=initial, disable=disable, file=file)
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, initial=initial, file=file, **tqdm_options)


__all__ = ["progress_bar", "LineProgress", "is_terminal", "INTERVAL_S", "FRACTION"]
