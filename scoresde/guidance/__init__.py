"""Controllable generation: score transforms (classifier, classifier-free, DPS, Pi-GDM guidance) and linear
observations (inpainting, colourisation, super-resolution, any linear map) for replacement sampling
(``sampler(score_fn, observation=...)``) and for the asymptotically exact ``smc`` sampler.

A transform maps a ``score_fn`` to a ``score_fn``, so it composes with every sampler::

    guided = guidance.classifier_free_guidance(cond_score_fn, uncond_score_fn, scale=2.0)
    x, nfe = get_sampler("dpmpp_2m", sde=sde, shape=shape)(guided)
"""
from .masks import box_mask, half_mask, random_mask
from .observations import Colorization, Inpainting, LinearObservation, Observation, SuperResolution
from .transforms import (ClassifierFreeGuidance, ClassifierGuidance, ModelClassifierFreeGuidance, PosteriorGuidance,
                         classifier_free_guidance, classifier_free_guidance_from_model, classifier_guidance,
                         posterior_guidance)

__all__ = ["Observation", "Inpainting", "Colorization", "SuperResolution", "LinearObservation",
           "half_mask", "box_mask", "random_mask",
           "classifier_guidance", "classifier_free_guidance", "classifier_free_guidance_from_model",
           "posterior_guidance", "ClassifierGuidance", "ClassifierFreeGuidance", "ModelClassifierFreeGuidance",
           "PosteriorGuidance"]
