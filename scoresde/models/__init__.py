"""Score networks (NCSN++ / DDPM++, DDPM, NCSNv2), noise-conditional classifiers, their registry, EMA,
the network-to-score (and network-to-classifier) conversion and the loader for the paper's released
checkpoints.

Every network is called as ``model(x, noise_labels, class_labels=None)`` with ``x`` [B, C, H, W]
and ``noise_labels`` [B]; see ``get_score_fn`` for what the labels are for each SDE.
"""
from scoresde.models.registry import get_model, list_models, register_model
from scoresde.models import classifier, ddpm, mlp, ncsnpp, ncsnv2  # noqa: F401  (register every network)
from scoresde.models.classifier import get_classifier_fn
from scoresde.models.checkpoint import CheckpointInfo, load_original_checkpoint, restricted_load
from scoresde.models.ema import ExponentialMovingAverage
from scoresde.models.factory import count_parameters, create_model
from scoresde.models.score_fn import (PREDICTIONS, EDMDenoiser, ScoreFunction, edm_coefficients, edm_loss_weight,
                                      get_model_fn, get_score_fn)

__all__ = [
    "register_model", "get_model", "list_models", "create_model", "count_parameters",
    "get_model_fn", "get_score_fn", "ScoreFunction", "PREDICTIONS", "EDMDenoiser", "edm_coefficients",
    "edm_loss_weight", "get_classifier_fn", "ExponentialMovingAverage",
    "load_original_checkpoint", "restricted_load", "CheckpointInfo",
]
