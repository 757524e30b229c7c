"""Training, evaluation and sampling driven by an ml-collections config (the paper's ``run_lib``).

``main.py`` calls :func:`train`, :func:`evaluate` or :func:`sample`; all three start from
:func:`setup`, which checks the config and builds the SDE, network, EMA and optimizer.

Reproducibility: every random draw of training step ``k`` (data order, flips and dequantisation,
the loss's times and noise, dropout) comes from seeds derived from ``(config.seed, rank, k)``, so a
run resumed from a checkpoint at step ``k`` repeats the uninterrupted run exactly (on CPU).
"""
import dataclasses
import json
import logging
import math
import os
import random
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np
import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

from scoresde import (checkpoint, config_file, datasets, distributed, divergence, guidance, image_tasks,
                      likelihood, losses, noise, precision, sde_lib, shards)
from scoresde.images import (legible_scale, save_image_grid, save_label_grid, save_task_grid,  # noqa: F401
                             to_uint8_nhwc)
from scoresde.datasets.loader import step_seed
from scoresde.follow import follow_numbered
from scoresde.models import (ExponentialMovingAverage, create_model, get_classifier_fn, get_score_fn,
                             load_original_checkpoint)
from scoresde.models.common import null_label
from scoresde.models.score_fn import PREDICTIONS
from scoresde.progress import progress_bar
from scoresde.models.mlp import sample_shape
from scoresde.sampling import get_sampler
from scoresde.sampling.base import SAMPLERS

log = logging.getLogger("scoresde")

OBJECTIVES = ("score", "classifier")  # training.objective: a score network, or a noise-conditional classifier
METRICS = ("fid", "is", "kid")
# streams of derived seeds, so that no two uses of one (seed, rank, step) share random numbers (3 was the
# per-batch sampling stream: samples now have per-sample seeds, scoresde.noise.sample_seeds)
_GLOBAL, _LOSS, _EVAL_LOSS, _BPD, _OBSERVATION = 1, 2, 4, 5, 6
GUIDANCE = ("none", "cfg", "classifier")          # sampling.guidance
TASK_METHODS = ("replace", "dps", "pigdm")        # sampling.task_method


# ----------------------------------------------------------------------------- config checks

def _fail(path: str, value, why: str) -> ValueError:
    return ValueError(f"config.{path} = {value!r}: {why}")


def check_config(config) -> None:
    """Refuse inconsistent configs before any work, naming the field (unknown fields are already
    refused by ml-collections when overridden)."""
    sde_name = config.training.sde
    if str(sde_name).lower() not in sde_lib.SDES:
        raise _fail("training.sde", sde_name, f"unknown SDE; available: {', '.join(sde_lib.SDES)}")
    if not config.training.continuous and sde_name.lower() == "subvpsde":
        raise _fail("training.continuous", False, "the sub-VP SDE has no discrete loss (DDPM is VP, SMLD is VE); "
                    "set training.continuous=True")
    if (sde_name.lower() == "vesde" and config.training.continuous and config.model.get("scale_by_sigma")
            and config.model.get("embedding_type") == "positional"):
        raise _fail("model.embedding_type", "positional", "a continuous VE network is fed sigma, not a step "
                    "index (see scoresde.models.get_score_fn); use 'fourier', or training.continuous=False")
    if config.sampling.sampler not in SAMPLERS:
        raise _fail("sampling.sampler", config.sampling.sampler, f"unknown sampler; available: {', '.join(SAMPLERS.list())}")
    if config.training.mixed_precision not in precision.SETTINGS:
        raise _fail("training.mixed_precision", config.training.mixed_precision,
                    f"must be one of {list(precision.SETTINGS)}")
    for path in ("training.batch_size", "training.n_iters", "training.snapshot_freq", "training.log_freq",
                 "training.eval_freq", "training.snapshot_freq_for_preemption", "eval.batch_size",
                 "eval.bpd_num_repeats", "sampling.num_samples", "sampling.batch_size", "eval.shard_size",
                 "sampling.shard_size"):
        value = config
        for part in path.split("."):
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(path, value, "must be a positive integer")
    if not 0.0 <= config.model.ema_rate <= 1.0:
        raise _fail("model.ema_rate", config.model.ema_rate, "must be in [0, 1]")
    if config.optim.optimizer not in ("Adam", "AdamW"):
        raise _fail("optim.optimizer", config.optim.optimizer, "must be 'Adam' or 'AdamW'")
    lr = config.optim.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise _fail("optim.lr", lr, "the learning rate must be a positive number, e.g. 2e-4")
    for path in ("eval.begin_ckpt", "eval.end_ckpt"):
        value = config.eval[path.split(".")[1]]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(path, value, "must be a checkpoint number >= 0")
    if config.eval.begin_ckpt > config.eval.end_ckpt:
        raise _fail("eval.begin_ckpt", config.eval.begin_ckpt, f"is after eval.end_ckpt = {config.eval.end_ckpt}: "
                    "evaluation runs over checkpoints begin_ckpt..end_ckpt; swap them or raise eval.end_ckpt")
    for path in ("eval.wait_timeout", "eval.poll_interval"):
        value = config.eval[path.split(".")[1]]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise _fail(path, value, "must be a positive number of seconds")
    unknown = sorted(set(config.eval.metrics) - set(METRICS))
    if unknown:
        raise _fail("eval.metrics", tuple(config.eval.metrics), f"unknown {unknown}; available: {list(METRICS)}")
    if config.eval.enable_bpd and config.data.dataset == "TOY":
        raise _fail("eval.enable_bpd", True, "bits/dim is defined for 8-bit images, not the 2-D toys")
    if config.training.objective not in OBJECTIVES:
        raise _fail("training.objective", config.training.objective, f"must be one of {list(OBJECTIVES)}")
    dropout = config.training.label_dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise _fail("training.label_dropout", dropout, "must be a probability in [0, 1)")
    if dropout > 0 and not config.model.get("num_classes"):
        raise _fail("training.label_dropout", dropout, "label dropout needs a class-conditional network: "
                    "set model.num_classes")
    if dropout > 0 and config.training.objective == "classifier":
        raise _fail("training.label_dropout", dropout, "a classifier's labels are its targets; label dropout "
                    "is for class-conditional score networks")
    if config.data.dataset not in datasets.DATASETS:
        raise _fail("data.dataset", config.data.dataset, f"unknown; available: {', '.join(datasets.DATASETS.list())}")
    check_loss_config(config)
    check_guidance_config(config)
    check_task_config(config)


def loss_options(config) -> Dict[str, Any]:
    """``training.loss``, ``prediction``, ``sigma_data``, ``P_mean``, ``P_std``, ``min_snr_gamma`` as
    ``losses.get_loss_fn`` takes them (the defaults where a config written before them lacks them)."""
    t = config.training
    return dict(loss=t.get("loss", "dsm"), prediction=t.get("prediction", "auto"), sigma_data=t.get("sigma_data", 0.5),
                P_mean=t.get("P_mean", -1.2), P_std=t.get("P_std", 1.2), min_snr_gamma=t.get("min_snr_gamma", 0.0))


def score_prediction(config) -> Tuple[str, float]:
    """What the network predicts (``get_score_fn``'s ``prediction``) and EDM's ``sigma_data``."""
    options = loss_options(config)
    return ("edm" if options["loss"] == "edm" else options["prediction"]), options["sigma_data"]


def check_loss_config(config) -> None:
    """``training.loss`` and its options: known values, and a combination ``losses.LossFn`` accepts."""
    if is_classifier(config):
        return
    options = loss_options(config)
    if options["loss"] not in losses.LOSSES:
        raise _fail("training.loss", options["loss"], f"must be one of {list(losses.LOSSES)}")
    allowed = [p for p in PREDICTIONS if p != "edm"]
    if options["prediction"] not in allowed:
        raise _fail("training.prediction", options["prediction"], f"must be one of {allowed} (EDM's denoiser "
                    "comes with training.loss = 'edm')")
    if options["loss"] == "edm" and (config.model.get("scale_by_sigma") or config.model.name == "ncsnv2"):
        raise _fail("model.scale_by_sigma", config.model.get("scale_by_sigma"), f"training.loss = 'edm' scales the "
                    f"network's output by c_out itself; use a network that does not divide by sigma "
                    f"(model.scale_by_sigma = False; model.name = {config.model.name!r})")
    t = config.training
    try:
        losses.get_loss_fn(get_sde(config), train=True, continuous=t.continuous, reduce_mean=t.reduce_mean,
                           likelihood_weighting=t.likelihood_weighting, **options)
    except ValueError as e:
        raise ValueError(f"config.training: {e}") from None


def _number(config, path: str, low: float = 0.0) -> float:
    """A finite number >= ``low`` at ``config.<path>``."""
    value = config
    for part in path.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < math.inf:
        raise _fail(path, value, f"must be a finite number >= {low}")
    return float(value)


def sampling_labels(config) -> Optional[List[int]]:
    """``sampling.labels`` as a list of ints (``[-1]``: unconditional), or ``None`` when empty."""
    text = str(config.sampling.labels).strip()
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = None
    if values is None or (-1 in values and len(values) > 1) or min(values) < -1:
        raise _fail("sampling.labels", config.sampling.labels, "must be a class label, a comma-separated list of "
                    "labels, -1 (unconditional) or empty")
    return values


def check_labels_in_range(config, values: Optional[List[int]], num_classes: int, whose: str) -> None:
    """The requested labels (not ``-1``) must be classes ``0 .. num_classes - 1`` of ``whose``."""
    if not values or values == [-1]:
        return
    if not num_classes:
        raise _fail("sampling.labels", config.sampling.labels, f"{whose} is unconditional (model.num_classes unset): "
                    "class labels need a class-conditional network or sampling.guidance='classifier'")
    if max(values) >= num_classes:
        raise _fail("sampling.labels", config.sampling.labels, f"out of range: {whose} has classes 0..{num_classes - 1}")


def check_guidance_config(config) -> None:
    """``sampling.labels``, ``guidance``, ``guidance_scale`` and ``classifier_workdir`` (the classifier's own
    classes are checked when it is loaded, :func:`load_classifier`)."""
    s, num_classes = config.sampling, config.model.get("num_classes") or 0
    values = sampling_labels(config)
    if s.guidance not in GUIDANCE:
        raise _fail("sampling.guidance", s.guidance, f"must be one of {list(GUIDANCE)}")
    _number(config, "sampling.guidance_scale")
    if s.guidance != "none" and values == [-1]:
        raise _fail("sampling.labels", s.labels, f"sampling.guidance = {s.guidance!r} steers towards class labels; "
                    "give labels (or leave them empty for rows 0..K-1), or set sampling.guidance='none'")
    if s.guidance == "cfg" and not num_classes:
        raise _fail("sampling.guidance", "cfg", "classifier-free guidance needs a class-conditional network trained "
                    "with label dropout (model.num_classes, training.label_dropout); this one is unconditional")
    if s.guidance == "classifier":
        if not s.classifier_workdir:
            raise _fail("sampling.classifier_workdir", s.classifier_workdir, "sampling.guidance='classifier' needs "
                        "the workdir of a trained classifier (training.objective='classifier')")
        if num_classes:
            check_labels_in_range(config, values, num_classes, "the score network")
    else:
        check_labels_in_range(config, values, num_classes, "the score network")


def check_task_config(config) -> None:
    """``sampling.task`` and its fields (the sampler's support of ``observation=`` is checked on the first
    observation, :func:`check_task_sampler`)."""
    s = config.sampling
    if s.task not in ("none",) + image_tasks.TASKS:
        raise _fail("sampling.task", s.task, f"must be one of {['none', *image_tasks.TASKS]}")
    if s.mask not in image_tasks.MASKS:
        raise _fail("sampling.mask", s.mask, f"must be one of {list(image_tasks.MASKS)}")
    if s.task_method not in TASK_METHODS:
        raise _fail("sampling.task_method", s.task_method, f"must be one of {list(TASK_METHODS)}")
    fraction = _number(config, "sampling.mask_fraction")
    if not 0 < fraction < 1:
        raise _fail("sampling.mask_fraction", fraction, "must be in (0, 1)")
    noise_std = _number(config, "sampling.task_noise_std")
    _number(config, "sampling.task_guidance_scale")
    likelihood_std = _number(config, "sampling.task_likelihood_std")
    if s.task == "none":
        return
    if config.data.dataset == "TOY":
        raise _fail("sampling.task", s.task, "image tasks need image data, not the 2-D toys")
    if s.task == "colorize" and config.data.num_channels != 3:
        raise _fail("sampling.task", "colorize", f"colourisation needs colour images; data.num_channels = "
                    f"{config.data.num_channels}")
    factor = s.superres_factor
    if s.task == "superres" and (isinstance(factor, bool) or not isinstance(factor, int) or factor < 2
                                 or config.data.image_size % factor):
        raise _fail("sampling.superres_factor", factor, f"must be an integer >= 2 that divides data.image_size = "
                    f"{config.data.image_size}")
    if s.task_method == "dps" and noise_std == 0 and likelihood_std == 0:
        raise _fail("sampling.task_likelihood_std", 0.0, "DPS needs a likelihood of positive width: set it (e.g. "
                    "0.05), or sampling.task_noise_std > 0")


def is_classifier(config) -> bool:
    """Whether the run trains a noise-conditional classifier (``training.objective = 'classifier'``)."""
    return config.training.objective == "classifier"


def get_sde(config) -> sde_lib.SDE:
    """The forward SDE named by ``config.training.sde`` with the paper's ``config.model`` parameters."""
    name, model = config.training.sde.lower(), config.model
    if name == "vesde":
        return sde_lib.VESDE(sigma_min=model.sigma_min, sigma_max=model.sigma_max, N=model.num_scales)
    return sde_lib.get_sde(name, beta_min=model.beta_min, beta_max=model.beta_max, N=model.num_scales)


def sampler_from_config(config, sde: sde_lib.SDE, batch_size: int, device: torch.device):
    """``get_sampler(config.sampling.sampler, **config.sampling.options[sampler])`` for ``batch_size``
    samples; options left unset (``None``) take the sampler's own default."""
    name = config.sampling.sampler
    options = config.sampling.options.get(name)
    kwargs = {k: v for k, v in (options.to_dict() if options is not None else {}).items() if v is not None}
    try:
        return get_sampler(name, sde=sde, shape=(batch_size, *sample_shape(config)), device=device, **kwargs)
    except ValueError as e:
        raise ValueError(f"config.sampling.options.{name}: {e}") from e


# ----------------------------------------------------------------------------- set-up shared by all modes

@dataclasses.dataclass
class Run:
    """Everything a mode needs, built once from the config by :func:`setup`."""
    config: Any
    workdir: str
    dist: distributed.DistInfo
    sde: sde_lib.SDE
    model: torch.nn.Module            # the network itself (rank-local; EMA and checkpoints use it)
    ema: ExponentialMovingAverage
    optimizer: torch.optim.Optimizer
    grad_scaler: torch.amp.GradScaler
    scaler: Callable                   # data [0, 1] -> model range
    inverse_scaler: Callable
    checkpoints: checkpoint.CheckpointDir
    mixed_precision: str = "no"        # training.mixed_precision resolved ("auto" decided): no, bf16 or fp16
    step: int = 0

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def state_dict(self) -> Dict[str, Any]:
        return {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "grad_scaler": self.grad_scaler.state_dict(),
                "seed": self.config.seed, "config": self.config.to_json_best_effort()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])  # strict: a mismatch is an error, never ignored
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.step = int(state["step"])

    def score_fn(self, train: bool = False, class_labels: Optional[torch.Tensor] = None):
        prediction, sigma_data = score_prediction(self.config)
        return get_score_fn(self.sde, self.model, continuous=self.config.training.continuous, train=train,
                            class_labels=class_labels, prediction=prediction, sigma_data=sigma_data)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def setup(config, workdir: str) -> Run:
    """Check the config, join the process group, seed, and build the SDE, network (identical on every
    rank), EMA, optimizer and the checkpoint directory of ``workdir``."""
    check_config(config)
    info = distributed.init(config.device or None)
    seed_everything(config.seed)
    sde = get_sde(config)
    model = create_model(config).to(info.device)
    if is_classifier(config) != bool(getattr(model, "is_classifier", False)):
        raise _fail("training.objective", config.training.objective,
                    f"does not match config.model.name = {config.model.name!r}: "
                    + ("train a noise-conditional classifier (model.name = 'classifier')" if is_classifier(config)
                       else "a classifier network trains with training.objective = 'classifier'"))
    optim = config.optim
    optimizer_cls = torch.optim.AdamW if optim.optimizer == "AdamW" else torch.optim.Adam
    optimizer = optimizer_cls(model.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2),
                              eps=optim.eps, weight_decay=optim.weight_decay)
    ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    # rank 0's hardware decides "auto" for all ranks, so that no two ranks train under different numerics
    mixed_precision = distributed.broadcast_from_main(
        precision.resolve(config.training.mixed_precision, info.device), info)
    grad_scaler = torch.amp.GradScaler(info.device.type, enabled=mixed_precision == "fp16")
    if mixed_precision == "fp16" and info.device.type != "cuda":
        raise _fail("training.mixed_precision", "fp16", "fp16 autocast needs a GPU; use 'bf16' on CPU")
    sampler_from_config(config, sde, 1, info.device)  # fail early on bad sampler options
    return Run(config=config, workdir=workdir, dist=info, sde=sde, model=model, ema=ema, optimizer=optimizer,
               grad_scaler=grad_scaler, scaler=datasets.get_data_scaler(config),
               inverse_scaler=datasets.get_data_inverse_scaler(config),
               checkpoints=checkpoint.CheckpointDir(workdir), mixed_precision=mixed_precision)


# config fields that may change between a checkpoint and the run that loads it: not the network's shape
_NETWORK_FIELDS_FREE = ("ema_rate", "dropout")


def check_network_matches(config, state: Dict[str, Any], path: str) -> None:
    """Refuse a checkpoint written with other network fields (``config.model.*`` but the EMA rate and
    dropout, ``data.image_size``, ``data.num_channels``) than ``config``'s, listing every difference."""
    try:
        saved = json.loads(state["config"])
    except (KeyError, TypeError, ValueError):
        return  # a checkpoint without its config: torch's strict loading is the only check left
    current = json.loads(config.to_json_best_effort())
    fields = [("model", k) for k in sorted(set(saved.get("model", {})) | set(current["model"]))
              if k not in _NETWORK_FIELDS_FREE] + [("data", "image_size"), ("data", "num_channels")]
    missing = object()
    differ = [(f"{group}.{key}", saved.get(group, {}).get(key, missing), current[group].get(key, missing))
              for group, key in fields
              if saved.get(group, {}).get(key, missing) != current[group].get(key, missing)]
    # what the network predicts (the defaults where a checkpoint predates these fields)
    output = [("loss", "dsm"), ("prediction", "auto")]
    if "edm" in (saved.get("training", {}).get("loss"), current.get("training", {}).get("loss")):
        output.append(("sigma_data", 0.5))
    differ += [(f"training.{key}", then, now) for key, default in output
               for then, now in [(saved.get("training", {}).get(key, default), current.get("training", {}).get(key, default))]
               if then != now]
    if differ:
        def show(value):
            return "(unset)" if value is missing else json.dumps(value)
        listing = ", ".join(f"config.{name} = {show(now)} (checkpoint: {show(then)})" for name, then, now in differ)
        fix = " ".join(f"--config.{name}={show(then)}" for name, then, _ in differ if then is not missing)
        raise checkpoint.CheckpointError(f"{path} holds another network than the config asks for: {listing}. "
                                         f"Use the checkpoint's values ({fix}) or another --workdir")


def _apply_state(run: Run, state: Dict[str, Any], path: str) -> None:
    check_network_matches(run.config, state, path)
    try:
        run.load_state_dict(state)
    except (RuntimeError, KeyError) as e:  # strict loading: any mismatch left is an error, never ignored
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise checkpoint.CheckpointError(f"{path} does not fit the configured network ({first}); use the "
                                         f"config it was trained with") from e


def restore_newest(run: Run, guard: Optional[divergence.DivergenceGuard] = None,
                   set_aside_damaged: bool = False) -> Optional[str]:
    """Load the newest intact checkpoint of the run's workdir, meta or numbered, if there is one, and
    return its path. Damaged ones are skipped with a warning (and renamed ``*.damaged`` when
    ``set_aside_damaged``: for the process that holds the workdir's lock)."""
    def set_aside(e: checkpoint.DamagedCheckpoint) -> None:
        if set_aside_damaged:
            log.warning("renamed the damaged %s to %s", e.path, run.checkpoints.set_aside(e.path))
    found = run.checkpoints.load_newest(map_location=run.device, on_damaged=set_aside)
    if found is None:
        return None
    path, state = found
    _apply_state(run, state, path)
    if guard is not None:
        guard.load_state_dict(state.get("divergence_guard", {}))
    return path


def _check_numbered_collisions(run: Run) -> None:
    """Refuse, before any training, a ``training.snapshot_freq`` under which a numbered checkpoint still to
    be written would land on one that holds another step."""
    t = run.config.training
    first = (run.step // t.snapshot_freq + 1) * t.snapshot_freq
    for step in range(first, t.n_iters + 1, t.snapshot_freq):
        n = step // t.snapshot_freq
        held = run.checkpoints.numbered_step(n, read=True)
        if held is not None and held != step:
            raise _fail("training.snapshot_freq", t.snapshot_freq,
                        f"{run.checkpoints.numbered_path(n)} holds step {held}, and this run would overwrite it "
                        f"with step {step} (n = step // snapshot_freq); resume with the snapshot_freq of the "
                        f"existing checkpoints (--config.training.snapshot_freq={held // n}) or use another "
                        f"--workdir")


def load_for_inference(run: Run, path: str, use_ema: bool = True) -> int:
    """Load the network (with the EMA weights when ``use_ema``) from ``path``; returns its step.
    A damaged file raises :class:`scoresde.checkpoint.DamagedCheckpoint`."""
    return _ready_for_inference(run, checkpoint.load(path, map_location=run.device), path, use_ema)


def _ready_for_inference(run: Run, state: Dict[str, Any], path: str, use_ema: bool) -> int:
    _apply_state(run, state, path)
    if use_ema:
        run.ema.copy_to(run.model.parameters())
    run.model.eval()
    return run.step


def _generator(device: torch.device, *keys: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(step_seed(*keys))


def _precision_name(run: Run) -> str:
    name = "fp32" if run.mixed_precision == "no" else f"{run.mixed_precision} autocast"
    return name + (" (training.mixed_precision = auto)" if run.config.training.mixed_precision == "auto" else "")


def _autocast(run: Run):
    dtype = precision.autocast_dtype(run.mixed_precision)
    return torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None)


def make_loss_fn(run: Run, train: bool):
    t = run.config.training
    if is_classifier(run.config):
        return losses.get_classifier_loss_fn(run.sde, train=train, continuous=t.continuous)
    # the loss's own eps (1e-5, the paper's) for every SDE; sampling stops at the SDE's default_eps
    return losses.get_loss_fn(run.sde, train=train, continuous=t.continuous, reduce_mean=t.reduce_mean,
                              likelihood_weighting=t.likelihood_weighting, **loss_options(run.config))


def batch_loss(run: Run, loss_fn, model: torch.nn.Module, batch, generator: torch.Generator,
               label_dropout: float = 0.0, metrics: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """``loss_fn`` on a data batch ``(x in [0, 1], labels)``: scaled to the model's range, moved to the
    device, under the configured autocast. Labels are a classifier's targets; a class-conditional score
    network gets them each replaced by the null label with probability ``label_dropout`` (drawn from
    ``generator``); an unconditional one does not get them. ``metrics``: see ``losses.ClassifierLossFn``."""
    x, labels = batch
    num_classes = run.config.model.get("num_classes")
    class_labels = None
    if is_classifier(run.config):
        class_labels = labels.to(run.device)
    elif num_classes:
        class_labels = losses.drop_labels(labels.to(run.device), label_dropout, null_label(num_classes),
                                          generator=generator)
    with _autocast(run):
        return loss_fn(model, run.scaler(x.to(run.device, non_blocking=True)), generator=generator,
                       class_labels=class_labels, metrics=metrics)


# ----------------------------------------------------------------------------- images out

def save_task_samples(x: torch.Tensor, observations: torch.Tensor, originals: torch.Tensor, labels: torch.Tensor,
                      stem: str, class_labels: Optional[torch.Tensor] = None) -> str:
    """Samples of an image task (all in data range ``[0, 1]``): ``<stem>.npz`` with ``samples``, ``observations``
    (as shown), ``originals`` (uint8), the test images' ``labels`` (and the ``class_labels`` sampled with), and
    ``<stem>.png``, rows of observation | samples | original."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    images = {name: to_uint8_nhwc(v) for name, v in (("samples", x), ("observations", observations),
                                                       ("originals", originals))}
    extra = {} if class_labels is None else {"class_labels": class_labels.cpu().numpy()}
    np.savez_compressed(stem + ".npz", **images, labels=labels.cpu().numpy(), **extra)
    save_task_grid(images["observations"], images["samples"], images["originals"], stem + ".png",
                   columns=min(16, x.shape[0]), padding=1, scale=legible_scale(images["samples"]))
    return stem + ".png"


def save_points_png(points: np.ndarray, path: str, size: int = 256, extent: float = 4.0) -> None:
    """Scatter plot of 2-D points ``[B, 2]`` in ``[-extent, extent]^2`` as a PNG."""
    canvas = np.full((size, size), 255, dtype=np.uint8)
    ij = np.floor((points[:, :2] + extent) / (2 * extent) * size).astype(int)
    keep = ((ij >= 0) & (ij < size)).all(axis=1)
    canvas[size - 1 - ij[keep, 1], ij[keep, 0]] = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(canvas).save(path)


def sample_array(x: torch.Tensor) -> np.ndarray:
    """Samples as they are stored: images in ``[0, 1]`` -> ``uint8 [B, H, W, C]``; other data (2-D points) ->
    float ``[B, D]``."""
    return to_uint8_nhwc(x) if x.dim() == 4 else x.reshape(x.shape[0], -1).cpu().numpy()


def sample_tensor(array: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`sample_array`: float images in ``[0, 1]`` ``[B, C, H, W]``, or ``[B, *shape]``."""
    if array.ndim == 4:
        return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
    return torch.from_numpy(array).reshape(array.shape[0], *shape)


def save_sample_array(samples: np.ndarray, stem: str, labels: Optional[np.ndarray] = None) -> str:
    """Write stored samples (:func:`sample_array`) as ``<stem>.npz`` and ``<stem>.png``; with ``labels`` (one
    per sample) the npz holds them too and the image grid has one row per label."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    extra = {} if labels is None else {"labels": np.asarray(labels)}
    np.savez_compressed(stem + ".npz", samples=samples, **extra)
    if samples.ndim != 4:
        save_points_png(samples, stem + ".png")
    elif labels is None:
        save_image_grid(samples[:256], stem + ".png", padding=1, scale=legible_scale(samples))
    else:
        save_label_grid(samples[:256], extra["labels"][:256], stem + ".png", padding=1, scale=legible_scale(samples))
    return stem + ".png"


def save_samples(x: torch.Tensor, stem: str, labels: Optional[torch.Tensor] = None) -> str:
    """Write samples (in data range ``[0, 1]``, or 2-D points) as ``<stem>.npz`` and ``<stem>.png``
    (:func:`save_sample_array`)."""
    return save_sample_array(sample_array(x), stem, labels=None if labels is None else labels.cpu().numpy())


def cyclic_labels(values: Sequence[int], num: int) -> torch.Tensor:
    """``num`` labels running through ``values`` again and again (int64)."""
    return torch.tensor(list(values), dtype=torch.long).repeat(math.ceil(num / len(values)))[:num]


def labels_of(cycle: Optional[Sequence[int]], indices: torch.Tensor) -> Optional[torch.Tensor]:
    """The class label of sample ``i`` is ``cycle[i % len(cycle)]``: a function of the sample index, never of
    the batch it is drawn in (``None`` when there is no cycle)."""
    return None if cycle is None else torch.tensor(list(cycle), dtype=torch.long)[indices % len(cycle)]


def default_label_cycle(run: Run) -> Optional[List[int]]:
    """Labels ``0, 1, ..., K-1`` for a class-conditional network of ``K`` classes, else ``None``."""
    k = run.config.model.get("num_classes")
    return list(range(k)) if k else None


def draw_samples(run: Run, indices: Sequence[int], batch_size: int, step: int, *,
                 label_cycle: Optional[Sequence[int]] = None, condition: Optional[Callable] = None,
                 progress: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """The samples of the given sample ``indices`` (data range, on CPU) from the run's network as it is now,
    with the configured sampler, ``batch_size`` at a time. Sample ``i`` draws its noise from its own stream,
    ``scoresde.noise.sample_seeds(config.seed, step, [i])``, and gets the label ``label_cycle[i % K]``
    (:func:`labels_of`), so it does not depend on the batch it is drawn in (up to the network's rounding).
    ``condition(batch_indices, batch_labels) -> (score_fn, observation or None)`` sets a batch up in place of
    the network's own score (guidance, image tasks). Returns the samples, their labels (or ``None``) and the
    number of score evaluations."""
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    samplers, out, nfe = {}, [], 0
    for start in range(0, indices.shape[0], batch_size):
        batch = indices[start:start + batch_size]
        if batch.shape[0] not in samplers:  # a shorter last batch gets a sampler of its own size
            samplers[batch.shape[0]] = sampler_from_config(run.config, run.sde, batch.shape[0], run.device)
        rows = labels_of(label_cycle, batch)
        rows = None if rows is None else rows.to(run.device)
        if condition is None:
            score_fn, observation = run.score_fn(train=False, class_labels=rows), None
        else:
            score_fn, observation = condition(batch, rows)
        with _autocast(run):
            x, n = samplers[batch.shape[0]](score_fn, seeds=noise.sample_seeds(run.config.seed, step, batch.tolist()),
                                            progress=progress,
                                            **({} if observation is None else {"observation": observation}))
        out.append(run.inverse_scaler(x.float()).cpu())
        nfe += n
    return torch.cat(out), labels_of(label_cycle, indices), nfe


def draw_identity(run: Run, step: int, label_cycle: Optional[Sequence[int]], **extra) -> Dict[str, Any]:
    """What a sharded draw's samples depend on, for its manifest (``scoresde.shards``): the seed, the
    checkpoint's step, the sampler and its options, the sample shape, the label cycle, the autocast dtype,
    and ``extra``. The batch size is not part of it: with per-sample noise it changes the samples only by
    the network's rounding."""
    c = run.config
    options = c.sampling.options.get(c.sampling.sampler)
    return {"seed": c.seed, "step": step, "sampler": c.sampling.sampler,
            "options": {k: v for k, v in (options.to_dict() if options is not None else {}).items() if v is not None},
            "shape": list(sample_shape(c)), "labels": None if label_cycle is None else list(label_cycle),
            "mixed_precision": run.mixed_precision, **extra}


def open_shards(run: Run, folder: str, total: int, shard_size: int, identity: Dict[str, Any],
                folder_field: str) -> shards.ShardStore:
    """The shard set of one draw in ``folder``, opened by rank 0 first (it refuses another draw's folder and
    removes what killed writes left), then by the other ranks. ``folder_field``: the config field that names
    the folder, for the message."""
    def open_store() -> shards.ShardStore:
        try:
            return shards.ShardStore(folder, total=total, shard_size=shard_size, identity=identity)
        except shards.ShardError as e:
            raise shards.ShardError(f"{e} (--config.{folder_field} sets the folder)") from None
    store = None
    if run.dist.is_main:
        store = open_store()
        store.prepare()
    distributed.barrier(run.dist)
    return store if store is not None else open_store()


def draw_shards(run: Run, store: shards.ShardStore, batch_size: int, step: int, *,
                label_cycle: Optional[Sequence[int]] = None, condition: Optional[Callable] = None,
                progress: bool = False) -> int:
    """Draw this rank's missing shards of ``store`` (rank ``r`` of ``W``: shards ``r, r + W, ...``), each
    atomically, with :func:`draw_samples`; then wait for every rank. Returns the score evaluations spent
    here (each shard records its own: ``store.nfe()`` is the draw's total however often it was resumed)."""
    todo = store.missing(run.dist.rank, run.dist.world_size)
    done = len(store.owned(run.dist.rank, run.dist.world_size)) - len(todo)
    if done:
        log.info("rank %d: %d shard(s) of %s already drawn; resuming", run.dist.rank, done, store.folder)
    spent = 0
    for shard in todo:
        x, labels, nfe = draw_samples(run, shard.indices(), batch_size, step, label_cycle=label_cycle,
                                      condition=condition, progress=progress and run.dist.is_main)
        store.write(shard, sample_array(x), labels=None if labels is None else labels.numpy(), nfe=nfe)
        log.info("rank %d: samples %d..%d drawn (%d score evaluations): %s", run.dist.rank, shard.start,
                 shard.end - 1, nfe, store.path(shard))
        spent += nfe
    distributed.barrier(run.dist)
    return spent


# ----------------------------------------------------------------------------- training

class Diverged(FloatingPointError):
    """Training stopped by the divergence guard (a NaN/inf loss, or a loss or gradient norm far above its
    running median for several steps)."""


def _advice(run: Run, last_good: Optional[Tuple[str, int]]) -> str:
    if last_good is None:
        where = "No state was saved before the divergence began"
    else:
        where = (f"The last good checkpoint is {last_good[0]} (step {last_good[1]}, saved before the divergence "
                 f"began); rerunning resumes from it")
    o = run.config.optim
    return (f"{where}. Lower optim.lr (now {o.lr:g}), raise optim.warmup (now {o.warmup}), set optim.grad_clip "
            f"(now {o.grad_clip:g}) or check the data (is it scaled as data.centered says?).")


def forward_backward(run: Run, model: torch.nn.Module, loss_fn, batch, step: int,
                     metrics: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, Optional[float]]:
    """First half of update number ``step + 1``: the loss of the current weights (state ``step``) and its
    gradients, changing no state. Returns the loss (detached) and the global gradient norm (``None``
    where an fp16 GradScaler overflowed: the scaler skips that update itself)."""
    config = run.config
    torch.manual_seed(step_seed(config.seed, run.dist.rank, step, _GLOBAL))  # dropout
    run.optimizer.zero_grad(set_to_none=True)
    loss = batch_loss(run, loss_fn, model, batch, _generator(run.device, config.seed, run.dist.rank, step, _LOSS),
                      label_dropout=config.training.label_dropout, metrics=metrics)
    run.grad_scaler.scale(loss).backward()
    grads = [p.grad.detach() for p in run.model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads \
        else torch.zeros(())
    norm = norm.item() / (run.grad_scaler.get_scale() if run.grad_scaler.is_enabled() else 1.0)
    if run.grad_scaler.is_enabled() and not math.isfinite(norm):
        return loss.detach(), None
    return loss.detach(), norm


def apply_update(run: Run, step: int) -> None:
    """Second half of update number ``step + 1``: ``losses.optimization_step`` (warm-up, clipping, Adam)
    with the gradients of :func:`forward_backward`, then the EMA."""
    o = run.config.optim
    losses.optimization_step(run.optimizer, run.model.parameters(), step + 1, lr=o.lr, warmup=o.warmup,
                             grad_clip=o.grad_clip, grad_scaler=run.grad_scaler)
    run.ema.update(run.model.parameters())


def train_step(run: Run, model: torch.nn.Module, loss_fn, batch, step: int,
               metrics: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """Update number ``step + 1``: loss, backward, ``losses.optimization_step`` (warm-up, clipping, Adam),
    EMA. Raises :class:`Diverged` (before any update) on a NaN/inf loss. ``metrics`` (a dict) gets the
    loss's further scalars (a classifier's accuracy). :func:`train` runs the two halves itself, with the
    divergence guard between them."""
    loss, _ = forward_backward(run, model, loss_fn, batch, step, metrics=metrics)
    value = _over_ranks(run, loss)
    if not math.isfinite(value):
        raise Diverged(f"the training loss is {value} at step {step + 1}; stopping. {_advice(run, None)}")
    apply_update(run, step)
    return loss


class TrainLog:
    """Console progress bar, ``<workdir>/train_log.jsonl`` and TensorBoard scalars (rank 0 only)."""

    def __init__(self, run: Run):
        self.enabled = run.dist.is_main
        self.bar = progress_bar(total=run.config.training.n_iters, initial=run.step, disable=not self.enabled,
                                dynamic_ncols=True, desc="train")  # a live bar in a terminal, a few lines in a log
        self.writer = self.jsonl = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(run.workdir, "tensorboard"))
            self.jsonl = open(os.path.join(run.workdir, "train_log.jsonl"), "a")
        self.images_per_step = run.config.training.batch_size
        self.last_time, self.last_step = time.time(), run.step

    def scalars(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()

    def progress(self, step: int, loss: float, **extra: float) -> None:
        if not self.enabled:
            return
        now = time.time()
        rate = (step - self.last_step) * self.images_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        self.bar.set_postfix(loss=f"{loss:.4g}", **{k: f"{v:.3g}" for k, v in extra.items()}, img_per_s=f"{rate:.1f}",
                             refresh=False)  # before update: a log line carries this step's loss
        self.bar.update(step - self.bar.n)
        self.scalars(step, loss=loss, **extra, images_per_second=rate)

    def close(self) -> None:
        self.bar.close()
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


def save_training_state(run: Run, numbered: Optional[int] = None,
                        guard: Optional[divergence.DivergenceGuard] = None) -> Optional[str]:
    """Numbered checkpoint ``checkpoint_<numbered>.pth`` when given, else a meta checkpoint (the newest
    state is then the numbered one; two files of one state would double the I/O). The guard's history
    goes with it. Returns the path (rank 0; other ranks write nothing and return ``None``)."""
    if not run.dist.is_main:
        return None
    state = run.state_dict()
    if guard is not None:
        state["divergence_guard"] = guard.state_dict()
    if numbered is not None:
        return run.checkpoints.save_numbered(numbered, state)
    return run.checkpoints.save_meta(state)


def _weights_finite(run: Run) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in run.model.parameters())


def make_guard(config) -> divergence.DivergenceGuard:
    """The divergence guard of ``config.training.divergence_*``, checked."""
    t = config.training
    for name in ("divergence_window", "divergence_patience"):
        value = t[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(f"training.{name}", value, "must be a positive integer")
    factor = t.divergence_factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 0:
        raise _fail("training.divergence_factor", factor, "must be a number >= 0 (0: only NaN/inf stop training)")
    if 0 < factor <= 1:
        raise _fail("training.divergence_factor", factor, "must be above 1 (a multiple of the running median), "
                    "or 0 to turn the median rule off")
    return divergence.DivergenceGuard(factor=factor, window=t.divergence_window, patience=t.divergence_patience)


def _start_training(run: Run) -> Optional[checkpoint.WorkdirLock]:
    """Rank 0: lock the workdir, delete what killed saves left, write ``config.json``."""
    if not run.dist.is_main:
        return None
    lock = checkpoint.WorkdirLock(run.workdir)
    taken_over = lock.acquire()
    if taken_over:
        log.warning("%s", taken_over)
    try:
        for path in run.checkpoints.remove_leftovers():
            log.warning("removed %s, left by a save that was interrupted", path)
        checkpoint.atomic_write_bytes(run.config.to_json_best_effort(indent=2).encode(),
                                      os.path.join(run.workdir, "config.json"))
    except BaseException:
        lock.release()
        raise
    return lock


def snapshot_samples(run: Run) -> Optional[str]:
    """The grid PNG of samples with the EMA weights, ``<workdir>/samples/iter_<step>.png`` (rank 0)."""
    config = run.config
    if not (run.dist.is_main and config.training.snapshot_sampling) or is_classifier(config):
        return None
    num = config.training.snapshot_num_samples
    with losses.ema_weights(run.ema, run.model):
        x, labels, _ = draw_samples(run, range(num), num, run.step, label_cycle=default_label_cycle(run))
    return save_samples(x, os.path.join(run.workdir, "samples", f"iter_{run.step}"), labels=labels)


def _over_ranks(run: Run, value: torch.Tensor) -> float:
    return distributed.mean_over_ranks(value.float(), run.dist).item()


def train(config, workdir: str) -> List[float]:
    """Train from the newest checkpoint of ``workdir`` (or from scratch) to ``training.n_iters`` steps.
    Returns this process's per-step training losses (for tests and the benchmark)."""
    run = setup(config, workdir)
    guard = make_guard(config)
    lock = _start_training(run)
    try:
        return _train(run, guard)
    finally:
        if lock is not None:
            lock.release()


def _train(run: Run, guard: divergence.DivergenceGuard) -> List[float]:
    config, workdir = run.config, run.workdir
    # rank 0 first: it may rename damaged files, which the other ranks then no longer see
    resumed = restore_newest(run, guard, set_aside_damaged=True) if run.dist.is_main else None
    distributed.barrier(run.dist)
    if not run.dist.is_main:
        resumed = restore_newest(run, guard)
    log.info("%s at step %d%s; seed %d; %d parameters; world size %d; device %s; precision %s",
             "resuming" if resumed else "starting", run.step, f" from {resumed}" if resumed else "", config.seed,
             sum(p.numel() for p in run.model.parameters()), run.dist.world_size, run.device,
             _precision_name(run))
    t = config.training
    _check_numbered_collisions(run)
    train_data, eval_data = datasets.get_data_iterators(
        config, rank=run.dist.rank, world_size=run.dist.world_size, start_step=run.step,
        eval_start_step=run.step // t.eval_freq)
    train_iter, eval_iter = iter(train_data), iter(eval_data)
    model = run.model
    if run.dist.enabled:
        model = DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    train_loss, eval_loss = make_loss_fn(run, train=True), make_loss_fn(run, train=False)
    logger = TrainLog(run)
    history = []
    # saves due for the current state, made once the next update's forward pass has shown the state to be
    # good (finite, not diverging); deferred while it is suspect. The final state is judged by one more
    # forward pass (that of the update which would come next).
    due_numbered, due_meta = None, False
    last_good = (resumed, run.step) if resumed else None
    try:
        while run.step < t.n_iters or due_numbered is not None or due_meta:
            metrics = {}
            loss, grad_norm = forward_backward(run, model, train_loss, next(train_iter), run.step, metrics=metrics)
            value = _over_ranks(run, loss)
            verdict = guard.check(value, grad_norm)
            if verdict.stop:
                raise Diverged(f"{verdict.reason} at step {run.step + 1}; training stopped. {_advice(run, last_good)}")
            if (due_numbered is not None or due_meta) and not verdict.suspect:
                if not _weights_finite(run):
                    raise Diverged(f"the weights at step {run.step} are not finite; training stopped. "
                                   f"{_advice(run, last_good)}")
                path = save_training_state(run, due_numbered, guard)
                last_good = (path, run.step)
                due_numbered, due_meta = None, False
            elif verdict.suspect:
                log.warning("step %d: %s; %s", run.step + 1, verdict.reason,
                            "its state is not saved" if due_numbered is not None or due_meta else "watching")
            guard.record(verdict, value, grad_norm)
            if run.step >= t.n_iters:  # the final state was judged; no update beyond n_iters
                if due_numbered is not None or due_meta:
                    raise Diverged(f"the final state (step {run.step}) is not saved: {verdict.reason}. "
                                   f"{_advice(run, last_good)}")
                break
            apply_update(run, run.step)
            run.step += 1
            history.append(loss.item())
            if run.step % t.log_freq == 0 or run.step == t.n_iters:
                logger.progress(run.step, _over_ranks(run, loss), **{k: _over_ranks(run, v) for k, v in metrics.items()})
            if run.step % t.eval_freq == 0:  # the paper's eval loss: one test batch, EMA weights
                metrics = {}
                with losses.ema_weights(run.ema, run.model):
                    value = batch_loss(run, eval_loss, run.model, next(eval_iter),
                                       _generator(run.device, config.seed, run.dist.rank, run.step, _EVAL_LOSS),
                                       metrics=metrics)
                logger.scalars(run.step, eval_loss=_over_ranks(run, value),
                               **{f"eval_{k}": _over_ranks(run, v) for k, v in metrics.items()})
            # numbered checkpoints only at multiples of snapshot_freq (n = step // snapshot_freq, never
            # overwritten); the final state of a run always goes to a meta checkpoint, if no numbered one
            snapshot = run.step % t.snapshot_freq == 0
            if snapshot:
                due_numbered = run.step // t.snapshot_freq
            if run.step % t.snapshot_freq_for_preemption == 0 or run.step == t.n_iters:
                due_meta = True
            if snapshot:
                grid = snapshot_samples(run)
                if grid:
                    log.info("step %d: samples in %s", run.step, grid)
                distributed.barrier(run.dist)
    finally:
        logger.close()
        distributed.cleanup(run.dist)
    return history


# ----------------------------------------------------------------------------- evaluation

class EvalResults:
    """``<workdir>/<eval_folder>/ckpt_<n>.json``, rewritten atomically after every finished part, so a
    re-run skips what is done. Every rank keeps the values; only the ``writer`` (rank 0) writes the file."""

    def __init__(self, path: str, writer: bool = True):
        self.path = path
        self.writer = writer
        self.data: Dict[str, Any] = {}
        if os.path.isfile(path):
            with open(path) as f:
                self.data = json.load(f)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        if not self.writer:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _test_batches(run: Run, raw: bool = False) -> Iterable[Tuple[int, Any]]:
    """``(i, batch)`` for this rank's batches of the test split: the global batches ``i = rank, rank + W, ...``
    (each batch's randomness is keyed by ``i``, so every batch gives what it gives in one process)."""
    batches = datasets.get_dataloader(run.config, "test", infinite=False, shuffle=False, raw=raw)
    return ((i, batch) for i, batch in enumerate(batches) if i % run.dist.world_size == run.dist.rank)


def _sums_over_ranks(run: Run, values: Sequence[float]) -> List[float]:
    """Per-rank partial sums (float64) summed over ranks: what one process would have summed, up to the order."""
    return distributed.sum_over_ranks(torch.tensor(values, dtype=torch.float64), run.dist).tolist()


def eval_loss(run: Run) -> Dict[str, float]:
    """The loss of the (EMA) network over the whole test split (and a classifier's accuracy on it, at
    the random noise levels of the loss). The batches are shared out over the ranks and the sums reduced."""
    loss_fn = make_loss_fn(run, train=False)
    keys = ["loss"] + (["accuracy"] if is_classifier(run.config) else [])
    totals, count = [0.0] * len(keys), 0
    with torch.no_grad():
        for i, batch in _test_batches(run):
            metrics = {}
            metrics["loss"] = batch_loss(run, loss_fn, run.model, batch,
                                         _generator(run.device, run.config.seed, i, _EVAL_LOSS), metrics=metrics)
            totals = [total + metrics[key].item() * batch[0].shape[0] for total, key in zip(totals, keys)]
            count += batch[0].shape[0]
    *totals, count = _sums_over_ranks(run, totals + [count])
    return {**{key: total / count for key, total in zip(keys, totals)}, "num_examples": int(count)}


def eval_bpd(run: Run) -> Dict[str, Any]:
    """Bits/dim of the test split under the probability-flow ODE, with uniform dequantisation
    ``u = (x + U) / 256`` of the 8-bit data, averaged over ``eval.bpd_num_repeats`` draws of ``U``;
    the offset ``8 - log2(a)`` (``a`` the data scaler's slope, 7 for centred data) turns the density of
    the scaled data into bits of the 8-bit data (see ``scoresde.likelihood.bpd_offset``)."""
    e = run.config.eval
    offset = likelihood.bpd_offset(run.scaler)
    likelihood_fn = likelihood.get_likelihood_fn(run.sde, rtol=e.bpd_rtol, atol=e.bpd_atol,
                                                 eps=run.sde.default_eps, offset=offset)
    score_fn = run.score_fn(train=False)
    limit = e.bpd_num_images or None
    batch_size = e.batch_size
    per_repeat, nfe = [], 0
    for repeat in range(e.bpd_num_repeats):
        total, seen, calls = 0.0, 0, 0
        for i, (counts, _) in _test_batches(run, raw=True):
            start = i * batch_size  # the global index of the batch's first image
            if limit is not None and start >= limit:
                break
            counts = counts[: None if limit is None else limit - start].to(run.device)
            generator = _generator(run.device, run.config.seed, repeat, i, _BPD)
            u = likelihood.uniform_dequantize(counts, generator)
            bpd, _, n = likelihood_fn(score_fn, run.scaler(u), generator=generator)
            total += float(bpd.double().sum())
            seen += counts.shape[0]
            calls += n
        total, seen, calls = _sums_over_ranks(run, [total, seen, calls])
        per_repeat.append(total / seen)
        nfe += int(calls)
        log.info("bits/dim repeat %d: %.4f", repeat, per_repeat[-1])
    return {"bpd": float(np.mean(per_repeat)), "per_repeat": per_repeat, "num_images": int(seen),
            "offset": offset, "nfe": nfe}


def eval_samples(run: Run, n: int, folder: str) -> Tuple[Dict[str, Any], torch.Tensor, torch.Tensor]:
    """``eval.num_samples`` samples of checkpoint ``n`` (the network as loaded, at step ``run.step``), drawn in
    shards of ``eval.shard_size`` under ``<folder>/ckpt_<n>_samples/`` split over the ranks, and resumed at the
    first missing shard (``scoresde.shards``); rank 0 then writes ``ckpt_<n>_samples.npz`` and ``.png`` when
    ``eval.save_samples``. Returns ``(info, x, indices)``: this rank's samples (its shards, float in the data
    range ``[0, 1]`` as stored: 8-bit images) and their int64 sample indices."""
    e = run.config.eval
    cycle = default_label_cycle(run)
    stem = os.path.join(folder, f"ckpt_{n}_samples")
    store = open_shards(run, stem, e.num_samples, e.shard_size,
                        draw_identity(run, run.step, cycle, checkpoint=n, use_ema=True), "eval.eval_folder")
    draw_shards(run, store, e.batch_size, run.step, label_cycle=cycle)
    mine = store.load(store.owned(run.dist.rank, run.dist.world_size))
    if run.dist.is_main:
        if e.save_samples:
            everything = store.load_all()
            save_sample_array(everything["samples"], stem, labels=everything.get("labels"))
        store.finish()
    shape = sample_shape(run.config)
    x = sample_tensor(mine["samples"], shape) if "samples" in mine else torch.empty(0, *shape)  # a rank with no shard
    indices = torch.from_numpy(mine["indices"]) if "indices" in mine else torch.empty(0, dtype=torch.long)
    return {"num_samples": e.num_samples, "nfe": store.nfe(), "sampler": run.config.sampling.sampler,
            "sampler_options": store.identity["options"], "mixed_precision": store.identity["mixed_precision"],
            "path": stem + ".npz" if e.save_samples else None, "shards": store.folder}, x, indices


def _gathered_features(run: Run, extractor, x: torch.Tensor, indices: torch.Tensor):
    """The Inception features of every rank's samples, in sample-index order, on every rank: each rank
    extracts its own, then they are gathered (so the result is what one process gets, up to the network's
    rounding at another batch size)."""
    from scoresde.metrics.extractor import InceptionFeatures
    feats = extractor.features(x) if x.shape[0] else None
    names = ["pool", "logits"] if extractor.has_logits else ["pool"]
    local = [torch.zeros(0) if feats is None else torch.as_tensor(getattr(feats, name)).float() for name in names]
    gathered = dict(zip(names, (v.numpy() for v in distributed.gather_in_order(indices, run.dist, *local))))
    return InceptionFeatures(pool=gathered["pool"], logits=gathered.get("logits"))


def eval_metrics(run: Run, x: torch.Tensor, indices: torch.Tensor) -> Dict[str, Any]:
    """FID / IS / KID of the samples against the training set's Inception statistics (cached in the
    workdir, or ``eval.dataset_stats``). Each rank extracts the features of its own samples ``x`` (sample
    ``indices``); rank 0 gathers them and computes the metrics (other ranks return ``{}``). A metric that
    cannot be computed (no weights, no logits) is ``None`` with its reason under ``unavailable``, unless
    ``eval.require_metrics``."""
    from scoresde import metrics
    e, config = run.config, run.config
    wanted = list(e.eval.metrics)
    try:
        extractor = metrics.InceptionFeatureExtractor(weights=e.eval.inception_weights or None, device=run.device)
        features = _gathered_features(run, extractor, x, indices)
        if not run.dist.is_main:
            return {}
        stats = e.eval.dataset_stats or metrics.dataset_stats_path(
            run.workdir, config.data.dataset, "train", config.data.image_size, extractor.resize)
        if not e.eval.dataset_stats:
            train_images = (counts for counts, _ in datasets.get_dataloader(
                config, "train", infinite=False, shuffle=False, raw=True))
            stats = metrics.load_or_compute_dataset_stats(
                stats, train_images, {"dataset": config.data.dataset, "split": "train",
                                      "resolution": config.data.image_size}, extractor)
        result = metrics.evaluate_features(features, stats, seed=config.seed,
                                           logits_unavailable_reason=extractor.logits_unavailable_reason)
    except (FileNotFoundError, OSError, ValueError) as err:
        if e.eval.require_metrics:
            raise
        reason = f"{type(err).__name__}: {err}"
        log.warning("sample-quality metrics unavailable: %s", reason)
        return {"unavailable": {m: reason for m in wanted}}
    names = {"fid": ["fid"], "kid": ["kid", "kid_std"], "is": ["inception_score", "inception_score_std"]}
    out = {k: result[k] for m in wanted for k in names[m]}
    out["num_samples"] = result["num_samples"]
    metric_of = {"fid": "fid", "kid": "kid", "inception_score": "is"}
    out["unavailable"] = {k: v for k, v in result["unavailable"].items() if metric_of.get(k, k) in wanted}
    if e.eval.require_metrics and out["unavailable"]:
        raise ValueError(f"eval.require_metrics is set but unavailable: {out['unavailable']}")
    return out


def eval_digits_judge(run: Run, x: torch.Tensor, indices: torch.Tensor) -> Dict[str, Any]:
    """The digits judge's scores of the samples (data range) beside those of the real test digits
    (``scoresde.metrics.digits``; the judge is cached in ``<workdir>/digits_judge``). Every rank's samples
    are gathered in index order (they are small); rank 0 judges them, other ranks return ``{}``."""
    from scoresde.metrics.digits import evaluate_digits
    x, = distributed.gather_in_order(indices, run.dist, x.float())
    if not run.dist.is_main:
        return {}
    return evaluate_digits(x, cache_dir=os.path.join(run.workdir, "digits_judge"))


def evaluate(config, workdir: str, eval_folder: Optional[str] = None) -> Dict[int, Dict[str, Any]]:
    """For each numbered checkpoint in ``[eval.begin_ckpt, eval.end_ckpt]``: eval loss, bits/dim,
    samples (``.npz`` + PNG) and FID/IS/KID, as enabled; results in ``<workdir>/<eval_folder>/ckpt_<n>.json``.
    Parts already in that file are skipped. With ``eval.wait``, each checkpoint is taken as training writes
    it, until ``eval.end_ckpt`` or ``eval.wait_timeout`` seconds without a new one (``scoresde.follow``).
    Under torchrun every rank takes part: the test batches and the samples are shared out, the sums and
    Inception features gathered; rank 0 decides what to do (which checkpoint, which parts) and writes."""
    run = setup(config, workdir)
    e = config.eval
    present = [n for n in run.checkpoints.numbers() if e.begin_ckpt <= n <= e.end_ckpt]
    if not present and not e.wait:
        found = run.checkpoints.numbers()
        raise FileNotFoundError(
            f"no checkpoint to evaluate: {run.checkpoints.numbered_dir} has "
            + (f"checkpoint_{found[0]}..{found[-1]} but none in eval.begin_ckpt..eval.end_ckpt = "
               f"{e.begin_ckpt}..{e.end_ckpt}; set --config.eval.begin_ckpt/--config.eval.end_ckpt to that range"
               if found else "no numbered checkpoints; train first (--mode train), which writes one every "
               "training.snapshot_freq steps"))
    folder = os.path.join(workdir, eval_folder or e.eval_folder)
    out, damaged = {}, []
    numbers = (follow_numbered(run.checkpoints, e.begin_ckpt, e.end_ckpt, timeout=e.wait_timeout,
                               poll_interval=e.poll_interval, info=run.dist)
               if e.wait else range(e.begin_ckpt, e.end_ckpt + 1))
    for n in numbers:
        path = run.checkpoints.numbered_path(n)
        if not os.path.isfile(path):
            log.warning("checkpoint %s does not exist; skipped", path)
            continue
        results = EvalResults(os.path.join(folder, f"ckpt_{n}.json"), writer=run.dist.is_main)
        generative = not is_classifier(config)  # a classifier has a loss and an accuracy only
        todo = distributed.broadcast_from_main(
            [part for part, on in (("loss", e.enable_loss), ("bpd", e.enable_bpd and generative),
                                   ("samples", e.enable_sampling and generative),
                                   ("metrics", e.enable_sampling and bool(e.metrics) and generative))
             if on and part not in results], run.dist)
        if not todo:
            log.info("checkpoint %d: already evaluated (%s)", n, results.path)
            out[n] = results.data
            continue
        try:
            step, failed = load_for_inference(run, path, use_ema=True), 0
        except checkpoint.DamagedCheckpoint as err:
            log.warning("skipping %s", err)
            step, failed = None, 1
            damaged.append(f"{path} ({err.reason})")
        if _sums_over_ranks(run, [failed])[0]:  # skipped by all ranks if damaged on any
            continue
        results.put("step", step)
        if "loss" in todo:
            results.put("loss", eval_loss(run))
        if "bpd" in todo:
            results.put("bpd", eval_bpd(run))
        if "samples" in todo or "metrics" in todo:
            info, x, indices = eval_samples(run, n, folder)
            results.put("samples", info)
            if config.data.dataset == "DIGITS":
                results.put("digits_judge", eval_digits_judge(run, x, indices))
            if "metrics" in todo and x.dim() == 4:
                results.put("metrics", eval_metrics(run, x, indices))
        if run.dist.is_main:
            log.info("checkpoint %d: %s", n, json.dumps(results.data))
        out[n] = results.data
    if damaged and not out:
        raise checkpoint.CheckpointError(f"no intact checkpoint to evaluate in eval.begin_ckpt..eval.end_ckpt = "
                                         f"{e.begin_ckpt}..{e.end_ckpt}; tried: {'; '.join(damaged)}")
    return out


# ----------------------------------------------------------------------------- sampling

def load_config_file(path: str):
    """A config from a ``configs/*.py`` file (its ``get_config()``) or from a run's ``config.json``."""
    if path.endswith(".json"):
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    return config_file.load_config_file(path)


def load_classifier(config, sde: sde_lib.SDE, device: torch.device) -> Tuple[Callable, int]:
    """The noise-conditional classifier of ``sampling.classifier_workdir`` (newest checkpoint, EMA weights)
    as ``(classifier_fn(x, t) -> logits, num_classes)``; refuses one trained on other data or another SDE."""
    s = config.sampling
    path = s.classifier_config or os.path.join(s.classifier_workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.sampling.classifier_config: no classifier config at {path} (give the "
                                "configs/*.py file it was trained with, or its run's config.json)")
    clf = load_config_file(path)
    where = ("sampling.classifier_workdir", s.classifier_workdir)
    if clf.training.get("objective") != "classifier":
        raise _fail(*where, f"{path} is not a classifier's config (training.objective = "
                            f"{clf.training.get('objective')!r}); train one with training.objective='classifier'")
    for key in ("image_size", "num_channels", "centered"):
        if clf.data.get(key) != config.data.get(key):
            raise _fail(*where, f"the classifier was trained with data.{key} = {clf.data.get(key)!r}, the score "
                                f"network with {config.data.get(key)!r}")
    clf_sde, t = get_sde(clf), torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    if type(clf_sde) is not type(sde) or not all(torch.allclose(a, b) for a, b in zip(clf_sde.marginal_coeffs(t),
                                                                                       sde.marginal_coeffs(t))):
        raise _fail(*where, f"the classifier was trained for another SDE ({type(clf_sde).__name__} with "
                            f"training.sde = {clf.training.sde!r}); it must see the noise levels of the score network")
    newest = checkpoint.CheckpointDir(s.classifier_workdir).newest()
    if newest is None:
        raise FileNotFoundError(f"config.sampling.classifier_workdir = {s.classifier_workdir!r}: no checkpoint "
                                "there; train the classifier first")
    model = create_model(clf).to(device)
    state = checkpoint.load(newest, map_location=device)
    model.load_state_dict(state["model"])
    ema = ExponentialMovingAverage(model.parameters(), decay=clf.model.ema_rate)
    ema.load_state_dict(state["ema"])
    ema.copy_to(model.parameters())
    model.eval()
    check_labels_in_range(config, sampling_labels(config), model.num_classes, "the classifier")
    return get_classifier_fn(clf_sde, model, continuous=clf.training.continuous), model.num_classes


def sampling_label_cycle(run: Run, classifier_classes: int = 0) -> Optional[List[int]]:
    """The class labels sampled rows run through (sample ``i`` gets ``cycle[i % len(cycle)]``, see
    ``sampling.labels``): the null label for unconditional rows of a class-conditional network; ``None`` when
    the network is unconditional and nothing steers."""
    s, k = run.config.sampling, run.config.model.get("num_classes") or 0
    values = sampling_labels(run.config)
    if values == [-1] or (values is None and s.task != "none" and s.guidance == "none"):
        return [null_label(k)] if k else None
    if values is None:
        target = classifier_classes if s.guidance == "classifier" else k
        return list(range(target)) if target else None
    return values


def guided_score_fn(run: Run, labels: Optional[torch.Tensor], classifier_fn: Optional[Callable] = None):
    """The score of one batch by ``sampling.guidance``: the network's own (with ``labels`` if it is
    class-conditional), classifier-free guidance with the null label, or classifier guidance."""
    s, k = run.config.sampling, run.config.model.get("num_classes") or 0
    if s.guidance == "cfg":
        return guidance.classifier_free_guidance_from_model(run.score_fn(), labels, s.guidance_scale, null_label(k))
    score_fn = run.score_fn(class_labels=labels if k else None)
    if s.guidance == "classifier":
        return guidance.classifier_guidance(score_fn, classifier_fn, labels, scale=s.guidance_scale)
    return score_fn


def task_images(run: Run) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``sampling.num_samples`` test images (data range ``[0, 1]``) and their labels."""
    num = run.config.sampling.num_samples
    test = datasets.get_dataloader(run.config, "test", infinite=False, shuffle=False, batch_size=num)
    x, y = next(iter(test))
    if x.shape[0] < num:
        raise _fail("sampling.num_samples", num, f"image tasks take test-split images and there are {x.shape[0]}")
    return x, y


def task_observation(run: Run, images: torch.Tensor, indices: Sequence[int]) -> guidance.Observation:
    """The observation of ``images`` (data range ``[0, 1]``), the test images of the draw's rows ``indices``, in
    the network's data space on the run's device. Row ``i``'s random mask and noise come from a stream of its
    own, seeded by ``(seed, i)`` alone: an observation does not depend on the batch, the shard or the process
    that draws it, nor on the checkpoint."""
    s = run.config.sampling
    seeds = noise.sample_seeds(step_seed(run.config.seed, _OBSERVATION), 0, list(indices))
    return image_tasks.make_observation(
        s.task, run.scaler(images.to(run.device)), mask=s.mask, mask_fraction=s.mask_fraction,
        factor=s.superres_factor, noise_std=s.task_noise_std, generator=noise.RowNoise(seeds))


def check_task_sampler(run: Run, observation: guidance.Observation) -> None:
    """Refuse a replacement task whose sampler cannot take ``observation=``, naming the score transforms."""
    s = run.config.sampling
    if s.task_method != "replace":
        return
    try:
        sampler_from_config(run.config, run.sde, observation.y.shape[0], run.device).check_observation(observation)
    except ValueError as e:
        raise _fail("sampling.sampler", s.sampler, f"{e} (or set sampling.task_method to 'dps' or 'pigdm', "
                    "score transforms that work with every sampler)") from e


def task_condition(run: Run, images: torch.Tensor, classifier_fn: Optional[Callable]):
    """``condition(batch, labels)`` for :func:`draw_samples`: the rows ``batch`` (sample indices) are drawn
    given the observation of their test images ``images[batch]`` (:func:`task_observation`), by replacement in
    the sampler or by a DPS / Pi-GDM score transform (``sampling.task_method``)."""
    s = run.config.sampling

    def condition(batch: torch.Tensor, labels: Optional[torch.Tensor]):
        observation = task_observation(run, images[batch], batch.tolist())
        score_fn = guided_score_fn(run, labels, classifier_fn)
        if s.task_method == "replace":
            return score_fn, observation
        return guidance.posterior_guidance(score_fn, run.sde, observation, method=s.task_method,
                                           scale=s.task_guidance_scale, std=s.task_likelihood_std or None), None
    return condition


def task_identity(config) -> Dict[str, Any]:
    """The fields of ``sampling.task`` that a draw's samples depend on, for its shards' manifest."""
    s = config.sampling
    if s.task == "none":
        return {}
    fields = {"task": s.task, "task_noise_std": s.task_noise_std, "task_method": s.task_method}
    if s.task == "inpaint":
        fields.update(mask=s.mask, mask_fraction=s.mask_fraction if s.mask == "random" else None)
    if s.task == "superres":
        fields.update(superres_factor=s.superres_factor)
    if s.task_method != "replace":
        fields.update(task_guidance_scale=s.task_guidance_scale, task_likelihood_std=s.task_likelihood_std)
    return fields


def save_task_draw(run: Run, everything: Dict[str, np.ndarray], images: torch.Tensor, image_labels: torch.Tensor,
                   stem: str) -> None:
    """Rank 0's ``.npz`` and ``.png`` of a finished image-task draw: the stored samples, the observations
    (made again, row by row as they were drawn), the test images and their labels."""
    bs = run.config.sampling.batch_size
    shown = torch.cat([run.inverse_scaler(image_tasks.observation_image(task_observation(
        run, images[i:i + bs], range(i, min(i + bs, images.shape[0]))))).float().cpu()
        for i in range(0, images.shape[0], bs)])
    labels = everything.get("labels")
    save_task_samples(sample_tensor(everything["samples"], sample_shape(run.config)), shown, images, image_labels,
                      stem, class_labels=None if labels is None else torch.from_numpy(labels))


def sample(config, workdir: str) -> str:
    """``sampling.num_samples`` samples from checkpoint ``sampling.ckpt`` (0: the newest state), or from
    ``sampling.original_checkpoint`` (a file released with the paper's code), with the configured sampler,
    as ``<workdir>/<sampling.folder>/<name>.npz`` and ``.png``; returns the stem.

    The draw is cut into shards of ``sampling.shard_size`` samples, ``<stem>_shards/samples_<a>-<b>.npz``
    (``scoresde.shards``), split over the ranks of ``torchrun`` and resumed at the first missing shard when
    the same command runs again; rank 0 then assembles the ``.npz`` and ``.png``. Sample ``i`` depends only
    on ``(seed, step, i)``, so the result does not depend on the number of processes or on where a draw was
    interrupted. An image task (``sampling.task``) is sharded the same way: row ``i`` is drawn given the
    observation of test image ``i``, whose random mask and noise depend on ``(seed, i)`` alone.

    With class labels and ``sampling.guidance`` the rows are drawn for their labels (the grid has one row per
    label); with ``sampling.task`` each row is drawn given an observation of a test image, and the grid shows
    rows of observation | samples | original. Every field is checked before the network is loaded."""
    if is_classifier(config):
        raise _fail("training.objective", "classifier", "a classifier draws no samples; use it for classifier "
                    "guidance of a score model: --config.sampling.guidance=classifier "
                    "--config.sampling.classifier_workdir=<this workdir>")
    run = setup(config, workdir)
    s = config.sampling
    classifier_fn, classifier_classes = (load_classifier(config, run.sde, run.device) if s.guidance == "classifier"
                                         else (None, 0))
    cycle = sampling_label_cycle(run, classifier_classes)
    condition = None
    if s.task != "none":
        images, image_labels = task_images(run)
        first = torch.arange(min(s.batch_size, s.num_samples))
        check_task_sampler(run, task_observation(run, images[first], first.tolist()))
        condition = task_condition(run, images, classifier_fn)
    elif s.guidance != "none":
        condition = lambda batch, rows: (guided_score_fn(run, rows, classifier_fn), None)  # noqa: E731
    if s.original_checkpoint:  # a checkpoint released with the paper's PyTorch code
        path = s.original_checkpoint
        model, info = load_original_checkpoint(path, config, use_ema=s.use_ema, map_location=run.device)
        run.model.load_state_dict(model.state_dict())
        run.model.eval()
        step = info.step or 0
    else:
        if s.ckpt == 0:  # the newest intact state, meta or numbered; damaged ones skipped with a warning
            found = run.checkpoints.load_newest(map_location=run.device)
            if found is None:
                raise FileNotFoundError(f"no checkpoint to sample from in {workdir} (sampling.ckpt = 0); "
                                        f"train first")
            path, state = found
            step = _ready_for_inference(run, state, path, s.use_ema)
        else:
            path = run.checkpoints.numbered_path(s.ckpt)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no checkpoint {path} to sample from (sampling.ckpt = {s.ckpt}); "
                                        f"numbered checkpoints present: {run.checkpoints.numbers() or 'none'}")
            step = load_for_inference(run, path, use_ema=s.use_ema)
    name = f"step_{step}_{s.sampler}"
    if s.guidance != "none":
        name += f"_{s.guidance}{s.guidance_scale:g}"
    if s.task != "none":
        name += f"_{s.task}" + (f"_{s.mask}" if s.task == "inpaint" else "") + (f"_{s.task_method}"
                                                                                if s.task_method != "replace" else "")
    stem = os.path.join(workdir, s.folder, f"{name}_seed{config.seed}")
    identity = draw_identity(run, step, cycle, use_ema=s.use_ema, guidance=s.guidance,
                             guidance_scale=s.guidance_scale if s.guidance != "none" else None,
                             classifier_workdir=s.classifier_workdir if s.guidance == "classifier" else None,
                             original_checkpoint=s.original_checkpoint or None, **task_identity(config))
    store = open_shards(run, stem + "_shards", s.num_samples, s.shard_size, identity, "sampling.folder")
    draw_shards(run, store, s.batch_size, step, label_cycle=cycle, condition=condition, progress=True)
    if run.dist.is_main:
        everything = store.load_all()
        if s.task == "none":
            save_sample_array(everything["samples"], stem, labels=everything.get("labels"))
        else:
            save_task_draw(run, everything, images, image_labels, stem)
        manifest = store.finish()
        log.info("%d samples from %s (step %d) with %s, %d score evaluations, %d process(es): %s.npz / .png "
                 "(shards in %s)", s.num_samples, path, step, s.sampler, manifest["nfe"], run.dist.world_size, stem,
                 store.folder)
    return stem
