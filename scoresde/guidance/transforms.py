"""Score transforms: each takes a ``score_fn(x, t)`` and returns a new one, so guidance works with every sampler.

- :func:`classifier_guidance`: ``s(x, t) + scale grad_x log p_t(c | x)`` from a noise-conditional classifier
  (Song et al. 2021, Sec. 5 and App. I.1; Dhariwal & Nichol 2021). At ``scale = 1`` with the exact classifier
  this is the exact class-conditional score ``grad log p_t(x | c)``.
- :func:`classifier_free_guidance`: ``s_u + scale (s_c - s_u)`` (Ho & Salimans 2022); scale 1 is the
  conditional score, 0 the unconditional one. :func:`classifier_free_guidance_from_model` gets both from one
  network called once on a doubled batch.
- :func:`posterior_guidance`: ``s(x, t) + scale g(x, t)`` with ``g`` an approximation of
  ``grad_x log p_t(y | x)`` for an :class:`~scoresde.guidance.Observation` ``y``: DPS (Chung et al. 2023,
  ``p_t(y | x_t) ~ p(y | x0_hat(x_t))``) or Pi-GDM (Song et al. 2023, a Gaussian ``p(x_0 | x_t)`` around
  ``x0_hat`` with variance ``r_t^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2)``). Both are approximations: they
  do not sample the exact posterior (measured in ``benchmarks/guidance.py``); the ``smc`` sampler does, in the
  limit of many particles.

Samplers run under ``torch.no_grad``; the transforms that differentiate enable gradients inside.
"""
import math
from typing import Callable, Optional

import torch

from ..sde_lib import SDE
from ..utils import batch_broadcast, check_time
from .observations import Observation

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _check_scale(scale, name: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0 (a negative guidance scale pushes samples away "
                         f"from the condition, which is not a distribution), got {scale!r}")
    return float(scale)


def _check_callable(fn, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable as {name}(x, t), got {type(fn).__name__}")


def _check_labels(labels) -> Tensor:
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        got = f"{labels.dtype} tensor of shape {tuple(labels.shape)}" if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape [B], got {got}")
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min().item()}")
    return labels


def _labels_for(labels: Tensor, x: Tensor) -> Tensor:
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but the sampler's batch x has {x.shape[0]} rows; "
                         "give one label per sample")
    return labels.to(x.device)


class ClassifierGuidance:
    """``s(x, t) + scale grad_x log softmax(classifier_fn(x, t))[labels]``; see :func:`classifier_guidance`."""

    def __init__(self, score_fn: ScoreFn, classifier_fn: Callable[[Tensor, Tensor], Tensor], labels: Tensor,
                 scale: float = 1.0):
        _check_callable(score_fn, "score_fn")
        _check_callable(classifier_fn, "classifier_fn")
        self.score_fn, self.classifier_fn = score_fn, classifier_fn
        self.labels = _check_labels(labels)
        self.scale = _check_scale(scale)

    def log_prob_grad(self, x: Tensor, t: Tensor) -> Tensor:
        """``grad_x log p_t(labels | x)`` (one classifier forward and backward)."""
        labels = _labels_for(self.labels, x)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier_fn(x_in, t)
            if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
                raise ValueError(f"classifier_fn must return logits of shape [B, K] = [{x.shape[0]}, K], got {got}")
            if labels.max() >= logits.shape[1]:
                raise ValueError(f"labels must be in [0, {logits.shape[1] - 1}] (the classifier has "
                                 f"{logits.shape[1]} classes), got {labels.max().item()}")
            if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the softmax in float32
                logits = logits.float()
            log_p = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, x_in)
        return grad.to(x.dtype)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        score = self.score_fn(x, t)
        if self.scale == 0:
            return score
        return score + self.scale * self.log_prob_grad(x, t)


def classifier_guidance(score_fn: ScoreFn, classifier_fn: Callable[[Tensor, Tensor], Tensor], labels: Tensor,
                        scale: float = 1.0) -> ClassifierGuidance:
    """``score_fn`` guided towards ``labels`` ``[B]`` by a noise-conditional classifier
    ``classifier_fn(x, t) -> logits [B, K]``: ``s(x, t) + scale grad_x log p_t(labels | x)``."""
    return ClassifierGuidance(score_fn, classifier_fn, labels, scale)


class ClassifierFreeGuidance:
    """``s_u(x, t) + scale (s_c(x, t) - s_u(x, t))``; see :func:`classifier_free_guidance`."""

    def __init__(self, cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float):
        _check_callable(cond_score_fn, "cond_score_fn")
        _check_callable(uncond_score_fn, "uncond_score_fn")
        self.cond_score_fn, self.uncond_score_fn = cond_score_fn, uncond_score_fn
        self.scale = _check_scale(scale)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.scale == 0:
            return self.uncond_score_fn(x, t)
        if self.scale == 1:
            return self.cond_score_fn(x, t)
        s_u = self.uncond_score_fn(x, t)
        return torch.lerp(s_u, self.cond_score_fn(x, t), self.scale)


def classifier_free_guidance(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float) -> ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022): ``s_u + scale (s_c - s_u)``, i.e. the score of
    ``p_t(x) p_t(c | x)^scale``. Scale 0 gives the unconditional, 1 the conditional score."""
    return ClassifierFreeGuidance(cond_score_fn, uncond_score_fn, scale)


class ModelClassifierFreeGuidance:
    """Classifier-free guidance from one class-conditional network with a null label; see
    :func:`classifier_free_guidance_from_model`."""

    def __init__(self, score_fn: Callable[..., Tensor], labels: Tensor, scale: float, null_label: int):
        _check_callable(score_fn, "score_fn")
        self.score_fn = score_fn
        self.labels = _check_labels(labels)
        self.scale = _check_scale(scale)
        if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0:
            raise ValueError(f"null_label must be an integer >= 0 (the label trained as 'no label'), got {null_label!r}")
        if self.labels.numel() and (self.labels == null_label).any():
            raise ValueError(f"labels contain the null label {null_label}; use scale=0 for unconditional samples")
        self.null_label = null_label

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        labels = _labels_for(self.labels, x)
        if self.scale == 1:
            return self.score_fn(x, t, class_labels=labels)
        null = torch.full_like(labels, self.null_label)
        if self.scale == 0:
            return self.score_fn(x, t, class_labels=null)
        both = self.score_fn(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([labels, null]))
        s_c, s_u = both.chunk(2)
        return torch.lerp(s_u, s_c, self.scale)


def classifier_free_guidance_from_model(score_fn: Callable[..., Tensor], labels: Tensor, scale: float,
                                        null_label: int) -> ModelClassifierFreeGuidance:
    """Classifier-free guidance with one network trained with label dropout: ``score_fn(x, t, class_labels=...)``
    (a :class:`scoresde.models.ScoreFunction`) is called once per step on the doubled batch ``[x; x]`` with
    labels ``[labels; null_label]``, not twice. ``null_label`` is the network's "no label" class (for the
    networks here, ``model.num_classes``)."""
    return ModelClassifierFreeGuidance(score_fn, labels, scale, null_label)


class PosteriorGuidance:
    """``s(x, t) + scale g(x, t)``, ``g ~ grad_x log p_t(y | x)``; see :func:`posterior_guidance`."""

    METHODS = ("dps", "pigdm")

    def __init__(self, score_fn: ScoreFn, sde: SDE, observation: Observation, method: str = "dps",
                 scale: float = 1.0, std: Optional[float] = None):
        _check_callable(score_fn, "score_fn")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an scoresde.sde_lib.SDE, got {type(sde).__name__}")
        if not isinstance(observation, Observation):
            raise TypeError(f"observation must be a scoresde.guidance.Observation, got {type(observation).__name__}")
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        self.score_fn, self.sde, self.observation, self.method = score_fn, sde, observation, method
        self.scale = _check_scale(scale)
        std = observation.noise_std if std is None else std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 <= std < math.inf:
            raise ValueError(f"std must be a finite number >= 0, got {std!r}")
        if method == "dps" and std <= 0:
            raise ValueError("method='dps' uses p(y | x0_hat) = N(y; A x0_hat, std^2 I), which needs std > 0: the "
                             "observation has noise_std=0, so pass std=... (a likelihood width, e.g. 0.05)")
        self.std = float(std)

    def guidance(self, x: Tensor, t: Tensor) -> tuple:
        """``(score, g)`` at ``(x, t)``: the score and the guidance term (one score call with a backward)."""
        check_time(t, x)
        alpha, sigma = self.sde.marginal_coeffs(t)
        a, s = batch_broadcast(alpha, x), batch_broadcast(sigma, x)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            score = self.score_fn(x_in, t)
            x0 = (x_in + s ** 2 * score) / a                     # Tweedie's E[x_0 | x_t]
            residual = self.observation.residual(x0)
            if self.method == "dps":   # grad log N(y; A x0_hat, std^2 I)
                weight = residual.detach() / self.std ** 2
            else:                      # Pi-GDM: (r^2 A A^T + std^2 I)^{-1} (y - A x0_hat), r^2 = sigma^2/(alpha^2 + sigma^2)
                r2 = sigma ** 2 / (alpha ** 2 + sigma ** 2)
                weight = self.observation.gram_solve(residual.detach(), r2, self.std ** 2)
            # the vector-Jacobian product (d x0 / d x)^T A^T weight
            (g,) = torch.autograd.grad((self.observation.forward(x0) * weight).sum(), x_in)
        return score.detach(), g

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        score, g = self.guidance(x, t)
        return score + self.scale * g


def posterior_guidance(score_fn: ScoreFn, sde: SDE, observation: Observation, method: str = "dps",
                       scale: float = 1.0, std: Optional[float] = None) -> PosteriorGuidance:
    """``score_fn`` plus ``scale`` times an approximation of ``grad_x log p_t(y | x)``:

    - ``"dps"`` (Chung et al. 2023): ``grad_x log N(y; A x0_hat(x), std^2 I)``, ``x0_hat`` by Tweedie's formula;
    - ``"pigdm"`` (Song et al. 2023): ``(d x0_hat / dx)^T A^T (r_t^2 A A^T + std^2 I)^{-1} (y - A x0_hat)`` with
      ``r_t^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2)`` (data of unit variance).

    ``std`` defaults to ``observation.noise_std``; DPS needs it positive. Both need the gradient of the score
    network with respect to its input (one backward per call).
    """
    return PosteriorGuidance(score_fn, sde, observation, method, scale, std)


__all__ = ["classifier_guidance", "classifier_free_guidance", "classifier_free_guidance_from_model",
           "posterior_guidance", "ClassifierGuidance", "ClassifierFreeGuidance", "ModelClassifierFreeGuidance",
           "PosteriorGuidance"]
