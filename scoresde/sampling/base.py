"""The sampler contract shared by every sampling family.

A sampler is built once with its options (checked here, before any work) and called as
``sampler(score_fn, *, generator=None, seeds=None, x_init=None, progress=False, observation=None, callback=None)
-> (x, nfe)``. Subclasses declare their options with defaults in ``options`` and implement ``_sample``.

``callback(step, t, x, denoised)`` is called after every step of the sampler's time grid: ``step`` counts from 0,
``t`` is the time the step left ``x`` at, a Python float (one time for the whole batch), ``x`` the state after the
step (the sampler's own tensor: clone it to keep it, never change it in place) and ``denoised`` the data
prediction ``x0`` the step made, or ``None`` for methods without one (``pc``, ``ancestral``, ``ode``, ``sde``).
It does not change the samples; raise an exception in it to stop sampling early.

``observation`` (a :class:`scoresde.guidance.Observation`) asks for samples that agree with a measurement
``y = A x_0``: samplers with ``replacement = True`` apply the paper's replacement data consistency
(App. I) after every step through :class:`Replacement`; ``smc`` weights particles by the likelihood; the
others refuse it, naming an alternative.
"""
import abc
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from ..noise import RowNoise
from ..registry import Registry
from ..sde_lib import SDE
from ..utils import batch_broadcast, check_data, check_generator, check_placement, randn_like

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
#: ``callback(step, t, x, denoised)``, called after every step (see the module)
StepCallback = Callable[[int, float, Tensor, Optional[Tensor]], Any]

SAMPLERS = Registry("sampler")


def register_sampler(name: str):
    """Class decorator: make a :class:`Sampler` subclass available to :func:`get_sampler` under ``name``."""
    return SAMPLERS.register(name)


def list_samplers():
    return SAMPLERS.list()


def get_sampler(name: str, *, sde: SDE, shape: Sequence[int], eps: Optional[float] = None, **options) -> "Sampler":
    """Build the sampler registered as ``name`` for ``sde`` producing samples of ``shape = [B, ...]``.

    ``eps`` is the time sampling stops at (default ``sde.default_eps``); every other keyword is an option
    of that sampler (see its ``options``); unknown ones raise ``ValueError``.
    """
    return SAMPLERS.get(name)(sde=sde, shape=shape, eps=eps, **options)


class CountingScore:
    """Wraps a score function: counts calls (the NFE) and checks the returned shape at every call (a
    ``torch.Size`` comparison: a score that changes shape later, e.g. at small ``t``, is caught where it does)."""

    def __init__(self, score_fn: ScoreFn):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.score_fn(x, t)
        if not torch.is_tensor(out) or out.shape != x.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got {got} at call "
                             f"{self.nfe + 1} (t = {float(t.flatten()[0]) if torch.is_tensor(t) and t.numel() else t})")
        self.nfe += 1
        return out


class Sampler(abc.ABC):
    """Base class. ``options`` maps each option name to its default; subclasses extend it."""

    #: option name -> default; ``denoise`` (finish with one noise-free step) is common to all
    options: Dict[str, Any] = {"denoise": True, "device": None, "dtype": torch.float32}
    #: whether ``_sample`` applies its ``replace`` argument after every step (replacement data consistency)
    replacement: bool = True
    #: why not, and what to use instead, when ``replacement`` is False
    no_replacement: str = ""

    def __init__(self, *, sde: SDE, shape: Sequence[int], eps: Optional[float] = None, **options):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an scoresde.sde_lib.SDE, got {type(sde).__name__}")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{type(self).__name__} got unknown option(s) {unknown}; "
                             f"allowed: {sorted(self.options)}")
        self.sde = sde
        self.shape = sde._check_shape(shape)
        self.eps = float(sde.default_eps if eps is None else eps)
        if not (0 < self.eps < sde.T) or not math.isfinite(self.eps):
            raise ValueError(f"eps must satisfy 0 < eps < T = {sde.T}, got {eps}")
        for key, default in self.options.items():
            setattr(self, key, options.get(key, default))
        check_placement(self.device, self.dtype)
        self.check_options()

    def check_options(self) -> None:
        """Validate option values; subclasses raise ``ValueError`` naming the option."""

    def init_state(self, x_init: Optional[Tensor], generator: Optional[torch.Generator]) -> Tensor:
        if x_init is None:
            device = self.device if self.device is not None else (generator.device if generator is not None else None)
            return self.sde.prior_sampling(self.shape, generator=generator, device=device, dtype=self.dtype)
        if not torch.is_tensor(x_init):
            raise TypeError(f"x_init must be a tensor, got {type(x_init).__name__}")
        if tuple(x_init.shape) != self.shape:
            raise ValueError(f"x_init must have the sampler's shape {self.shape}, got {tuple(x_init.shape)}")
        return x_init

    def row_noise(self, seeds: Sequence[int], generator) -> RowNoise:
        """The per-row streams of ``seeds`` on the sampler's device (``ValueError`` naming ``seeds`` unless it
        holds one seed per row, or if a ``generator`` is given too)."""
        if generator is not None:
            raise ValueError("give either generator= (one stream for the batch) or seeds= (one per row), not both")
        if isinstance(seeds, RowNoise):
            noise = seeds
        else:
            noise = RowNoise(seeds, device=self.device)
        if len(noise) != self.shape[0]:
            raise ValueError(f"seeds must hold one seed per row: {self.shape[0]} for shape {self.shape}, "
                             f"got {len(noise)}")
        return noise

    def check_observation(self, observation) -> None:
        """``ValueError`` unless this sampler can honour ``observation`` for samples of its shape."""
        from ..guidance import Observation  # guidance imports the samplers' utilities, not the reverse
        if not isinstance(observation, Observation):
            raise TypeError(f"observation must be a scoresde.guidance.Observation, got {type(observation).__name__}")
        if not self.replacement:
            raise ValueError(f"sampler {type(self).__name__} cannot honour observation=: {self.no_replacement}")
        observation.check_samples(self.shape)

    def time_vector(self, t: float, x: Tensor) -> Tensor:
        """A ``[B]`` tensor filled with ``t`` on ``x``'s device and dtype."""
        return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)

    def __call__(self, score_fn: ScoreFn, *, generator: Optional[torch.Generator] = None,
                 seeds: Optional[Sequence[int]] = None, x_init: Optional[Tensor] = None, progress: bool = False,
                 observation=None, callback: Optional[StepCallback] = None) -> Tuple[Tensor, int]:
        """Draw ``shape[0]`` samples; with ``observation``, samples that agree with it (see the module).

        Randomness comes from ``generator`` (one stream for the batch) or from ``seeds``, one int per row: row
        ``i``'s prior draw and every noise increment then come from its own stream (:class:`scoresde.noise.RowNoise`),
        so a row's sample does not depend on the batch size or on the other rows. ``callback(step, t, x, denoised)``
        is called after every step (see the module)."""
        counted = CountingScore(score_fn)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable as callback(step, t, x, denoised), got "
                            f"{type(callback).__name__} {callback!r}")
        check_generator(generator)
        if seeds is not None:
            generator = self.row_noise(seeds, generator)
        if observation is not None:
            self.check_observation(observation)
        x = self.init_state(x_init, generator)
        if x_init is not None:  # a NaN start would surface only at the end, blamed on score_fn
            check_data(x, "x_init")
        replace = Replacement(self.sde, observation, generator, callback)
        with torch.no_grad():
            x = self._sample(counted, x, generator=generator, progress=progress, replace=replace)
            if observation is not None and self.replacement:
                x = observation.project(x)  # the observed part is y itself at the end
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                f"{type(self).__name__} produced non-finite samples after {counted.nfe} score evaluations; "
                "check score_fn for NaN/inf and the step size / tolerances")
        return x, counted.nfe

    @abc.abstractmethod
    def _sample(self, score_fn: ScoreFn, x: Tensor, *, generator: Optional[torch.Generator],
                progress: bool, replace: "Replacement") -> Tensor:
        """Map the start ``x`` (a prior draw at ``T``) to a sample at ``eps`` (or 0 after denoising), calling
        ``x = replace(x, t)`` after each step that leaves ``x`` at time ``t``, and ``replace.report(step, t, x,
        denoised)`` once at the end of each step of the grid (the user's callback)."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.options)
        return f"{type(self).__name__}(sde={type(self.sde).__name__}, shape={self.shape}, eps={self.eps}, {opts})"


class Replacement:
    """What a sampler does after its steps: replacement data consistency and the user's callback.

    Replacement (Song et al. 2021, App. I): after a step that leaves ``x`` at time ``t``,
    ``x <- x + A^+ (y_t - A x)`` with ``y_t = alpha(t) y + sigma(t) A z`` a draw of ``A x_t`` given ``A x_0 = y``.
    The unobserved part is then conditioned on the observed one only through the score, which is why the
    method is biased (see ``benchmarks/guidance.py``). Without an observation it returns ``x`` unchanged, and
    it is false (``if replace:``), so that a sampler can skip work only replacement needs.
    :meth:`report` passes each finished step to the callback (see the module), when there is one."""

    def __init__(self, sde: SDE, observation, generator: Optional[torch.Generator],
                 callback: Optional["StepCallback"] = None):
        self.sde, self.observation, self.generator, self.callback = sde, observation, generator, callback

    def __bool__(self) -> bool:
        return self.observation is not None

    def report(self, step: int, t, x: Tensor, denoised: Optional[Tensor] = None) -> None:
        """``callback(step, float(t), x, denoised)`` when a callback was given; ``t`` a float or a ``[B]`` tensor
        of one time (its first entry is taken)."""
        if self.callback is not None:
            self.callback(step, float(t.flatten()[0]) if torch.is_tensor(t) else float(t), x, denoised)

    def __call__(self, x: Tensor, t) -> Tensor:
        if self.observation is None:
            return x
        if not torch.is_tensor(t):
            t = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
        alpha, sigma = self.sde.marginal_coeffs(t)
        return self.observation.project(x, self.observation.noised(x, alpha, sigma, self.generator))


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's formula ``E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / alpha(t)``: a noise-free jump to ``t = 0``.
    ``t`` is ``[B]``."""
    alpha, sigma = sde.marginal_coeffs(t)
    return (x + batch_broadcast(sigma ** 2, x) * score_fn(x, t)) / batch_broadcast(alpha, x)


__all__ = ["Sampler", "CountingScore", "Replacement", "StepCallback", "register_sampler", "get_sampler",
           "list_samplers", "randn_like",
           "tweedie_denoise"]
