"""The divergence guard of training: which states are good enough to save, and when to stop.

Training state ``s`` (the weights after ``s`` updates) is judged by its own loss and gradient norm,
which the next update computes before it changes anything. A state is

- *non-finite* when its loss or gradient norm is NaN/inf: the run stops at once;
- *suspect* when its loss or gradient norm is more than ``factor`` times the running median of the
  last ``window`` good states' values; ``patience`` suspect states in a row stop the run;
- *good* otherwise; only good states (with finite weights) are saved.

So the newest checkpoint after a stop is the last good state before the divergence began.
"""
import dataclasses
import math
import statistics
from collections import deque
from typing import Any, Dict, List, Optional


@dataclasses.dataclass
class Verdict:
    """The judgement of one state: ``suspect`` (not to be saved), ``stop`` (the run has diverged) and
    ``reason`` (why; empty for a good state)."""
    suspect: bool = False
    stop: bool = False
    reason: str = ""


class DivergenceGuard:
    """Judges training states (see the module docstring). ``factor <= 0`` turns off the median rule
    (non-finite values still stop the run). Its history is part of a checkpoint, so a resumed run
    judges exactly as the uninterrupted one."""

    def __init__(self, factor: float = 100.0, window: int = 200, patience: int = 3):
        if not window >= 1 or not patience >= 1:
            raise ValueError(f"window = {window} and patience = {patience} must be positive integers")
        self.factor, self.window, self.patience = float(factor), int(window), int(patience)
        self.values: Dict[str, deque] = {"loss": deque(maxlen=self.window), "gradient norm": deque(maxlen=self.window)}
        self.streak = 0  # suspect states in a row, up to the one judged last

    def check(self, loss: float, grad_norm: Optional[float] = None) -> Verdict:
        """Judge a state from its loss and gradient norm (``None``: not measured), without recording it."""
        measured = {"loss": loss, "gradient norm": grad_norm}
        for name, value in measured.items():
            if value is not None and not math.isfinite(value):
                return Verdict(suspect=True, stop=True, reason=f"the training {name} is {value}")
        reasons: List[str] = []
        if self.factor > 0:
            for name, value in measured.items():
                history = self.values[name]
                if value is None or not history:
                    continue
                median = statistics.median(history)
                if median > 0 and value > self.factor * median:
                    reasons.append(f"the training {name} {value:.4g} is {value / median:.3g} times its running "
                                   f"median {median:.4g}")
        if not reasons:
            return Verdict()
        streak = self.streak + 1
        return Verdict(suspect=True, stop=streak >= self.patience,
                       reason=f"{' and '.join(reasons)} ({streak} suspect step{'s' if streak > 1 else ''} in a row)")

    def record(self, verdict: Verdict, loss: float, grad_norm: Optional[float] = None) -> None:
        """Record the judged state: a good one's values join the running medians."""
        if verdict.suspect:
            self.streak += 1
            return
        self.streak = 0
        self.values["loss"].append(float(loss))
        if grad_norm is not None:
            self.values["gradient norm"].append(float(grad_norm))

    def state_dict(self) -> Dict[str, Any]:
        return {"streak": self.streak, **{name: list(values) for name, values in self.values.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.streak = int(state.get("streak", 0))
        for name, values in self.values.items():
            values.clear()
            values.extend(float(v) for v in state.get(name, []))


__all__ = ["DivergenceGuard", "Verdict"]
