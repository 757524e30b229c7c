"""Training objectives (continuous DSM, discrete DDPM and SMLD; the cross-entropy of noise-conditional
classifiers; label dropout) and the optimisation step.

The one convention
------------------
* Continuous denoising score matching takes a ``score_fn(x, t) -> s ~ grad_x log p_t(x)`` shaped like ``x``,
  with ``t`` a ``[B]`` tensor in ``[eps, T]``. From a network ``model(x, noise_labels, class_labels=None)``
  it is ``scoresde.models.get_score_fn(sde, model, continuous=...)`` (VP/subVP: the network predicts the
  noise, ``s = -out / std(t)``; VE: the network outputs the score, divided by sigma itself).
* The discrete losses call the network directly with integer step labels ``i in {0, ..., N-1}`` (int64 ``[B]``):
  DDPM (``VPSDE``): the network predicts the noise ``z`` of ``x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) z``;
  SMLD (``VESDE``): the network outputs the score at noise level ``sigma_i``, the levels ordered from
  ``sigma_max`` down (``i = 0`` is the largest, as NCSN and ``scoresde.models`` index them).
* Every per-sample loss is reduced over the data dimensions by ``0.5 * sum`` or, with ``reduce_mean``, by
  ``mean`` (the paper's code); the per-sample functions return ``[B]``, :class:`LossFn` their batch mean.
"""
import contextlib
import math
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch

from . import noise
from .sde_lib import SDE, VESDE, VPSDE, subVPSDE
from .utils import batch_broadcast, randn_like

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _check_batch(x: Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() < 2 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"the batch must be a floating-point tensor of shape [B, ...], got {got}")


def _check_sde(sde: SDE, expected: type, name: str, loss: str) -> None:
    if type(sde) is not expected:
        raise ValueError(f"{name} must be a {expected.__name__} for the {loss} loss, got {type(sde).__name__}")


def reduce_per_sample(losses: Tensor, reduce_mean: bool = False) -> Tensor:
    """``[B, ...] -> [B]``: ``mean`` over the data dimensions, or ``0.5 * sum`` (the paper's convention)."""
    flat = losses.reshape(losses.shape[0], -1)
    return flat.mean(dim=1) if reduce_mean else 0.5 * flat.sum(dim=1)


def _call_model(model: Callable, x: Tensor, labels: Tensor, class_labels: Optional[Tensor]) -> Tensor:
    return model(x, labels) if class_labels is None else model(x, labels, class_labels)


def _random_steps(N: int, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return noise.randint(0, N, (x.shape[0],), generator, device=x.device)


def perturb(sde: SDE, x: Tensor, *, generator: Optional[torch.Generator] = None,
            eps: float = 1e-5) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Noise a batch by the forward SDE at random times: ``t ~ U(eps, T)`` [B], then ``z ~ N(0, I)``,
    ``x_t = alpha(t) x + sigma(t) z``. Returns ``(x_t, t, z, sigma(t))`` with ``sigma`` broadcast like ``x``."""
    _check_batch(x)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must satisfy 0 < eps < T = {sde.T}, got {eps!r}")
    t = eps + (sde.T - eps) * noise.rand((x.shape[0],), generator, device=x.device, dtype=x.dtype)
    z = randn_like(x, generator)
    mean, std = sde.marginal_prob(x, t)
    std = batch_broadcast(std, x)
    return mean + std * z, t, z, std


def dsm_loss(score_fn: ScoreFn, sde: SDE, x: Tensor, *, generator: Optional[torch.Generator] = None,
             eps: float = 1e-5, reduce_mean: bool = False, likelihood_weighting: bool = False) -> Tensor:
    """Continuous denoising score matching (Song et al. 2021, eq. 7), per sample ``[B]``.

    ``t ~ U(eps, T)``, ``z ~ N(0, I)``, ``x_t = alpha(t) x + sigma(t) z``; with ``lambda(t) = sigma(t)^2``
    the loss is ``||sigma s(x_t, t) + z||^2``, with likelihood weighting ``lambda(t) = g(t)^2``
    (Song et al. 2021b) it is ``g(t)^2 ||s(x_t, t) + z / sigma||^2``; both reduced by :func:`reduce_per_sample`.
    """
    x_t, t, z, std = perturb(sde, x, generator=generator, eps=eps)
    score = score_fn(x_t, t)
    if likelihood_weighting:
        g2 = sde.sde(x, t)[1] ** 2
        return reduce_per_sample(torch.square(score + z / std), reduce_mean) * g2
    return reduce_per_sample(torch.square(score * std + z), reduce_mean)


def ddpm_loss(model: Callable, vpsde: VPSDE, x: Tensor, *, generator: Optional[torch.Generator] = None,
              reduce_mean: bool = False, class_labels: Optional[Tensor] = None) -> Tensor:
    """The DDPM noise-prediction loss (Ho et al. 2020, eq. 14), per sample ``[B]``:
    ``i ~ U{0..N-1}``, ``x_i = sqrt(abar_i) x + sqrt(1 - abar_i) z``, ``||model(x_i, i) - z||^2`` reduced."""
    _check_batch(x)
    _check_sde(vpsde, VPSDE, "vpsde", "DDPM")
    labels = _random_steps(vpsde.N, x, generator)
    z = randn_like(x, generator)
    steps = labels.cpu()
    a = batch_broadcast(vpsde.sqrt_alphas_cumprod[steps].to(x.device), x)
    s = batch_broadcast(vpsde.sqrt_1m_alphas_cumprod[steps].to(x.device), x)
    out = _call_model(model, a * x + s * z, labels, class_labels)
    return reduce_per_sample(torch.square(out - z), reduce_mean)


def smld_loss(model: Callable, vesde: VESDE, x: Tensor, *, generator: Optional[torch.Generator] = None,
              reduce_mean: bool = False, class_labels: Optional[Tensor] = None) -> Tensor:
    """The SMLD/NCSN loss (Song & Ermon 2019, eq. 5-6), per sample ``[B]``: ``i ~ U{0..N-1}`` indexing the
    noise levels from ``sigma_max`` down, ``x~ = x + sigma_i z``, ``sigma_i^2 ||model(x~, i) + z / sigma_i||^2``
    reduced (the weighting ``lambda(sigma) = sigma^2``)."""
    _check_batch(x)
    _check_sde(vesde, VESDE, "vesde", "SMLD")
    labels = _random_steps(vesde.N, x, generator)
    z = randn_like(x, generator)
    sigmas = torch.flip(vesde.discrete_sigmas, dims=(0,))[labels.cpu()].to(device=x.device, dtype=x.dtype)
    sigma = batch_broadcast(sigmas, x)
    out = _call_model(model, x + sigma * z, labels, class_labels)
    return reduce_per_sample(torch.square(out + z / sigma), reduce_mean) * sigmas ** 2


def classifier_loss(classifier_fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, x: Tensor, labels: Tensor, *,
                    generator: Optional[torch.Generator] = None, eps: float = 1e-5,
                    metrics: Optional[Dict[str, Tensor]] = None) -> Tensor:
    """Cross-entropy of a noise-conditional classifier on noised data, per sample ``[B]``:
    ``t ~ U(eps, T)``, ``x_t = alpha(t) x + sigma(t) z`` (:func:`perturb`), ``-log softmax(classifier_fn(x_t, t))[y]``.
    Minimised, ``classifier_fn(x, t)`` estimates ``log p_t(y | x)`` (up to a constant in ``y``), the classifier
    that classifier guidance needs at every time. When ``metrics`` is a dict, ``metrics['accuracy']`` gets the
    share of rows whose largest logit is the label (detached)."""
    if not torch.is_tensor(labels) or labels.shape != x.shape[:1] or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape [B] = [{x.shape[0]}], got "
                         f"{tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__}")
    x_t, t, _, _ = perturb(sde, x, generator=generator, eps=eps)
    logits = classifier_fn(x_t, t)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"classifier_fn must return logits of shape [B, K] = [{x.shape[0]}, K], got {tuple(logits.shape)}")
    if metrics is not None:
        metrics["accuracy"] = (logits.detach().argmax(dim=1) == labels).float().mean()
    return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")


def drop_labels(class_labels: Tensor, p: float, null_label: int, *,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """Label dropout for classifier-free guidance (Ho & Salimans 2021): each label of ``class_labels``
    [B] is replaced by ``null_label`` with probability ``p`` (one uniform draw per row from
    ``generator``; nothing is drawn when ``p == 0``, so a run without dropout keeps its random stream)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"the label dropout probability must be in [0, 1), got {p!r}")
    if p == 0:
        return class_labels
    drop = noise.rand(class_labels.shape, generator, device=class_labels.device) < p
    return torch.where(drop, torch.full_like(class_labels, null_label), class_labels)


class LossFn:
    """``loss_fn(model, batch, *, generator=None, class_labels=None) -> scalar``: the batch mean of the
    continuous DSM loss (through ``scoresde.models.get_score_fn``) or of the discrete DDPM / SMLD loss.
    Puts ``model`` in train or eval mode; an evaluation loss (``train=False``) runs under ``no_grad``."""

    def __init__(self, sde: SDE, *, train: bool, continuous: bool = True, reduce_mean: bool = False,
                 likelihood_weighting: bool = False, eps: float = 1e-5):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an scoresde.sde_lib.SDE, got {type(sde).__name__}")
        if not continuous:
            if isinstance(sde, subVPSDE) or type(sde) not in (VPSDE, VESDE):
                raise ValueError(f"continuous=False needs a VPSDE (DDPM loss) or a VESDE (SMLD loss); "
                                 f"{type(sde).__name__} has no discrete loss: use continuous=True")
            if likelihood_weighting:
                raise ValueError("likelihood_weighting=True applies to the continuous loss only; "
                                 "set continuous=True or likelihood_weighting=False")
        if not 0 < eps < sde.T:
            raise ValueError(f"eps must satisfy 0 < eps < T = {sde.T}, got {eps!r}")
        self.sde = sde
        self.train = bool(train)
        self.continuous = bool(continuous)
        self.reduce_mean = bool(reduce_mean)
        self.likelihood_weighting = bool(likelihood_weighting)
        self.eps = float(eps)

    def per_sample(self, model: Callable, batch: Tensor, *, generator: Optional[torch.Generator] = None,
                   class_labels: Optional[Tensor] = None) -> Tensor:
        """The ``[B]`` losses (model mode and grad mode left as they are)."""
        if self.continuous:
            from .models import get_score_fn  # lazy: the losses do not need the networks to import
            score_fn = get_score_fn(self.sde, model, continuous=True, train=None, class_labels=class_labels)
            return dsm_loss(score_fn, self.sde, batch, generator=generator, eps=self.eps,
                            reduce_mean=self.reduce_mean, likelihood_weighting=self.likelihood_weighting)
        discrete = ddpm_loss if isinstance(self.sde, VPSDE) else smld_loss
        return discrete(model, self.sde, batch, generator=generator, reduce_mean=self.reduce_mean,
                        class_labels=class_labels)

    def __call__(self, model: Callable, batch: Tensor, *, generator: Optional[torch.Generator] = None,
                 class_labels: Optional[Tensor] = None, metrics: Optional[Dict[str, Tensor]] = None) -> Tensor:
        """The batch mean; ``metrics`` (a dict to fill with further scalars) is accepted for the calling
        convention of :class:`ClassifierLossFn` and left empty."""
        if isinstance(model, torch.nn.Module):
            model.train(self.train)
        with contextlib.nullcontext() if self.train else torch.no_grad():
            return self.per_sample(model, batch, generator=generator, class_labels=class_labels).mean()

    def __repr__(self) -> str:
        return (f"LossFn(sde={type(self.sde).__name__}, train={self.train}, continuous={self.continuous}, "
                f"reduce_mean={self.reduce_mean}, likelihood_weighting={self.likelihood_weighting}, eps={self.eps})")


class ClassifierLossFn:
    """``loss_fn(model, batch, *, generator=None, class_labels, metrics=None) -> scalar``: the batch mean of
    :func:`classifier_loss` for a noise-conditional classifier ``model(x, noise_labels) -> logits``
    (through ``scoresde.models.get_classifier_fn``); ``class_labels`` are the targets. The calling convention
    of :class:`LossFn`, so the training loop, checkpoints and EMA serve both."""

    def __init__(self, sde: SDE, *, train: bool, continuous: bool = True, eps: float = 1e-5):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an scoresde.sde_lib.SDE, got {type(sde).__name__}")
        if not 0 < eps < sde.T:
            raise ValueError(f"eps must satisfy 0 < eps < T = {sde.T}, got {eps!r}")
        self.sde, self.train, self.continuous, self.eps = sde, bool(train), bool(continuous), float(eps)

    def __call__(self, model: Callable, batch: Tensor, *, generator: Optional[torch.Generator] = None,
                 class_labels: Optional[Tensor] = None, metrics: Optional[Dict[str, Tensor]] = None) -> Tensor:
        from .models import get_classifier_fn  # lazy, as in LossFn
        if class_labels is None:
            raise ValueError("the classifier loss needs the labels: pass class_labels")
        if isinstance(model, torch.nn.Module):
            model.train(self.train)
        classifier_fn = get_classifier_fn(self.sde, model, continuous=self.continuous, train=None)
        with contextlib.nullcontext() if self.train else torch.no_grad():
            return classifier_loss(classifier_fn, self.sde, batch, class_labels, generator=generator, eps=self.eps,
                                   metrics=metrics).mean()

    def __repr__(self) -> str:
        return f"ClassifierLossFn(sde={type(self.sde).__name__}, train={self.train}, continuous={self.continuous}, eps={self.eps})"


def get_loss_fn(sde: SDE, *, train: bool, continuous: bool = True, reduce_mean: bool = False,
                likelihood_weighting: bool = False, eps: float = 1e-5) -> LossFn:
    """The training (``train=True``) or evaluation loss for ``sde``: continuous DSM, or with
    ``continuous=False`` the DDPM loss (``VPSDE``) or the SMLD loss (``VESDE``). See :class:`LossFn`."""
    return LossFn(sde, train=train, continuous=continuous, reduce_mean=reduce_mean,
                  likelihood_weighting=likelihood_weighting, eps=eps)


def get_classifier_loss_fn(sde: SDE, *, train: bool, continuous: bool = True, eps: float = 1e-5) -> ClassifierLossFn:
    """The training (``train=True``) or evaluation cross-entropy of a noise-conditional classifier for ``sde``
    (see :class:`ClassifierLossFn`); ``continuous`` picks the noise-label convention, as for score networks."""
    return ClassifierLossFn(sde, train=train, continuous=continuous, eps=eps)


# -- the optimisation step --------------------------------------------------------------------------------

def warmup_lr(lr: float, step: int, warmup: int) -> float:
    """``lr * min(step / warmup, 1)`` (``lr`` itself when ``warmup <= 0``); ``step`` counts updates from 1."""
    return lr * min(step / warmup, 1.0) if warmup > 0 else lr


def optimization_step(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter], step: int, *,
                      lr: float, warmup: int = 0, grad_clip: float = -1.0, grad_scaler=None) -> None:
    """Apply the gradients already in ``parameters``: set every group's learning rate to
    :func:`warmup_lr`, clip the global gradient norm to ``grad_clip`` (off when negative), then
    ``optimizer.step()`` (through ``grad_scaler``, a ``torch.amp.GradScaler``, when given)."""
    for group in optimizer.param_groups:
        group["lr"] = warmup_lr(lr, step, warmup)
    if grad_clip >= 0:
        if grad_scaler is not None:
            grad_scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(list(parameters), max_norm=grad_clip)
    if grad_scaler is not None:
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        optimizer.step()


@contextlib.contextmanager
def ema_weights(ema, model: torch.nn.Module):
    """Within the block, ``model`` holds the EMA weights (``ema.store``/``copy_to``/``restore``, the
    interface of ``scoresde.models.ExponentialMovingAverage``); ``ema=None`` leaves it alone."""
    if ema is None:
        yield model
        return
    params = list(model.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        yield model
    finally:
        ema.restore(params)


class StepFn:
    """One training step (``train=True``): ``zero_grad``, loss, ``backward``, :func:`optimization_step`,
    ``ema.update``; or one evaluation step (``train=False``): the loss under ``no_grad`` with the EMA weights.

    All state is passed in: ``step_fn(model, batch, *, optimizer=None, step=None, ema=None, generator=None,
    class_labels=None, grad_scaler=None) -> loss`` (detached scalar). ``step`` is the number of this update,
    counting from 1, for the learning-rate warm-up.
    """

    def __init__(self, loss_fn: LossFn, *, lr: float = 2e-4, warmup: int = 5000, grad_clip: float = 1.0):
        if not isinstance(loss_fn, LossFn):
            raise TypeError(f"loss_fn must be a LossFn (see get_loss_fn), got {type(loss_fn).__name__}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        self.loss_fn = loss_fn
        self.lr, self.warmup, self.grad_clip = float(lr), int(warmup), float(grad_clip)

    @property
    def train(self) -> bool:
        return self.loss_fn.train

    def __call__(self, model: torch.nn.Module, batch: Tensor, *, optimizer: Optional[torch.optim.Optimizer] = None,
                 step: Optional[int] = None, ema=None, generator: Optional[torch.Generator] = None,
                 class_labels: Optional[Tensor] = None, grad_scaler=None) -> Tensor:
        if not self.train:
            with ema_weights(ema, model):
                return self.loss_fn(model, batch, generator=generator, class_labels=class_labels)
        if optimizer is None or not isinstance(step, int) or step < 1:
            raise ValueError(f"a training step needs an optimizer and step >= 1 (the number of this update), "
                             f"got optimizer={type(optimizer).__name__}, step={step!r}")
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(model, batch, generator=generator, class_labels=class_labels)
        (loss if grad_scaler is None else grad_scaler.scale(loss)).backward()
        optimization_step(optimizer, model.parameters(), step, lr=self.lr, warmup=self.warmup,
                          grad_clip=self.grad_clip, grad_scaler=grad_scaler)
        if ema is not None:
            ema.update(model.parameters())
        return loss.detach()


def get_step_fn(sde: SDE, *, train: bool, continuous: bool = True, reduce_mean: bool = False,
                likelihood_weighting: bool = False, eps: float = 1e-5, lr: float = 2e-4, warmup: int = 5000,
                grad_clip: float = 1.0) -> StepFn:
    """A :class:`StepFn` for the loss of :func:`get_loss_fn` with these settings (the paper's optimiser defaults)."""
    loss_fn = get_loss_fn(sde, train=train, continuous=continuous, reduce_mean=reduce_mean,
                          likelihood_weighting=likelihood_weighting, eps=eps)
    return StepFn(loss_fn, lr=lr, warmup=warmup, grad_clip=grad_clip)


__all__ = ["perturb", "dsm_loss", "ddpm_loss", "smld_loss", "reduce_per_sample", "classifier_loss", "drop_labels",
           "LossFn", "ClassifierLossFn", "get_classifier_loss_fn", "get_loss_fn",
           "warmup_lr", "optimization_step", "ema_weights", "StepFn", "get_step_fn"]
