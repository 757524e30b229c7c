"""Samplers chosen by name: ``get_sampler(name, sde=..., shape=..., **options)(score_fn) -> (x, nfe)``."""
from .base import CountingScore, Sampler, get_sampler, list_samplers, register_sampler

__all__ = ["CountingScore", "Sampler", "get_sampler", "list_samplers", "register_sampler"]
