"""Exponential moving average of model parameters, with fused multi-tensor updates."""
from typing import Dict, Iterable, List, Optional

import torch


class ExponentialMovingAverage:
    """Keeps ``shadow = decay_n * shadow + (1 - decay_n) * param`` for every parameter that
    requires grad, with the warm-up ``decay_n = min(decay, (1 + n) / (10 + n))`` where ``n`` is
    the number of updates including the current one (when ``use_num_updates``; as in the paper's
    code, so the first update uses ``2/11``).

    ``state_dict()`` is the paper's format ``{'decay', 'num_updates', 'shadow_params': [...]}``,
    with ``shadow_params`` in ``parameters`` order, frozen parameters left out.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float,
                 use_num_updates: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.num_updates: Optional[int] = 0 if use_num_updates else None
        params = self._trainable(parameters)
        self.shadow_params: List[torch.Tensor] = [p.detach().clone() for p in params]
        self.collected_params: List[torch.Tensor] = []

    @staticmethod
    def _trainable(parameters) -> List[torch.Tensor]:
        return [p for p in parameters if p.requires_grad]

    def _check(self, params: List[torch.Tensor]) -> None:
        if len(params) != len(self.shadow_params):
            raise ValueError(f"got {len(params)} trainable parameters, the EMA holds "
                             f"{len(self.shadow_params)}")

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        if self.num_updates is None:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """``shadow -= (1 - decay_n) * (shadow - param)`` for all parameters in one fused call."""
        params = self._trainable(parameters)
        self._check(params)
        decay = self.current_decay()
        if self.num_updates is not None:
            self.num_updates += 1
        if not params:
            return
        # torch._foreach_lerp_ computes shadow + w * (param - shadow) over all tensors at once
        torch._foreach_lerp_(self.shadow_params, [p.detach() for p in params], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Write the averaged values into ``parameters`` (those that require grad)."""
        params = self._trainable(parameters)
        self._check(params)
        if params:
            torch._foreach_copy_(params, self.shadow_params)

    @torch.no_grad()
    def store(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Save a copy of ``parameters`` to bring back with ``restore``."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Put back the values saved by ``store`` (e.g. after evaluating with ``copy_to``)."""
        params = list(parameters)
        if len(params) != len(self.collected_params):
            raise ValueError("restore() needs the parameters given to store(); call store() first")
        if params:
            torch._foreach_copy_(params, self.collected_params)
        self.collected_params = []

    def to(self, device=None, dtype=None) -> "ExponentialMovingAverage":
        self.shadow_params = [s.to(device=device, dtype=dtype if s.is_floating_point() else None)
                              for s in self.shadow_params]
        return self

    def state_dict(self) -> Dict:
        return dict(decay=self.decay, num_updates=self.num_updates, shadow_params=self.shadow_params)

    def load_state_dict(self, state_dict: Dict) -> None:
        """Load the paper's format; the shadow tensors must match the current ones in number and
        shape (they are copied onto the current device and dtype)."""
        missing = {"decay", "num_updates", "shadow_params"} - set(state_dict)
        if missing:
            raise ValueError(f"EMA state_dict lacks {sorted(missing)}")
        shadow = list(state_dict["shadow_params"])
        if len(shadow) != len(self.shadow_params):
            raise ValueError(f"EMA state_dict has {len(shadow)} shadow params, expected "
                             f"{len(self.shadow_params)}")
        for i, (new, old) in enumerate(zip(shadow, self.shadow_params)):
            if tuple(new.shape) != tuple(old.shape):
                raise ValueError(f"EMA shadow param {i}: shape {tuple(new.shape)} does not match "
                                 f"{tuple(old.shape)}")
        self.decay = float(state_dict["decay"])
        n = state_dict["num_updates"]
        self.num_updates = None if n is None else int(n)
        self.shadow_params = [n.to(device=o.device, dtype=o.dtype).clone()
                              for n, o in zip(shadow, self.shadow_params)]
