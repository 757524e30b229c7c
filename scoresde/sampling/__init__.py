"""Samplers chosen by name: ``get_sampler(name, sde=..., shape=..., **options)(score_fn) -> (x, nfe)``.

Registered: ``pc`` and ``ancestral`` (:mod:`.pc`), ``ode`` (:mod:`.ode`, scipy), ``sde`` (:mod:`.sde`, torchsde),
the fast solvers (:mod:`.fast`, :mod:`.fast_more`), ``dpm_adaptive`` and ``sde_adaptive`` (:mod:`.adaptive`, error-controlled steps)
and ``smc`` (:mod:`.smc`, posterior sampling with an ``observation``).
Predictors and correctors of ``pc`` are chosen by name too (:mod:`.predictors`, :mod:`.correctors`).
"""
from .base import CountingScore, Sampler, get_sampler, list_samplers, register_sampler, tweedie_denoise
from .predictors import get_predictor, list_predictors, register_predictor
from .correctors import get_corrector, list_correctors, register_corrector
# each module below registers its samplers on import
from . import pc, ode, sde
from . import fast, fast_more, smc, adaptive

__all__ = ["CountingScore", "Sampler", "get_sampler", "list_samplers", "register_sampler", "tweedie_denoise",
           "get_predictor", "list_predictors", "register_predictor",
           "get_corrector", "list_correctors", "register_corrector"]
