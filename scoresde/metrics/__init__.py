"""Sample-quality metrics with the FID Inception-v3 network (TF graph 2015-12-05) in pure PyTorch.

Typical use (images uint8 ``[N, H, W, C]`` 0..255, or float ``[N, C, H, W]`` 0..1)::

    extractor = InceptionFeatureExtractor(weights=None, device="cuda")
    ref = load_or_compute_dataset_stats(path, train_images, {"dataset": "cifar10", "split": "train",
                                                            "resolution": 32}, extractor)
    evaluate_samples(samples, ref, extractor)  # {"fid": ..., "kid": ..., "inception_score": ..., ...}

For the embedded 8x8 digits, a small classifier judge (:mod:`scoresde.metrics.digits`)::

    evaluate_digits(samples, cache_dir="runs/digits")  # {"samples": {...}, "real_test": {...}}
"""
from .digits import DigitsJudge, evaluate_digits, load_digits_judge, to_digits_8x8, train_digits_judge
from .evaluate import evaluate_features, evaluate_samples
from .extractor import InceptionFeatureExtractor, InceptionFeatures
from .inception import FIDInceptionV3, preprocess, tf_bilinear_resize
from .scores import frechet_distance, inception_score, kernel_inception_distance
from .stats import (FeatureStatistics, StatisticsAccumulator, compute_statistics, dataset_stats_path,
                    load_or_compute_dataset_stats, load_statistics, save_statistics)
from .weights import download_weights, resolve_weights

__all__ = [
    "DigitsJudge", "evaluate_digits", "load_digits_judge", "to_digits_8x8", "train_digits_judge",
    "FIDInceptionV3", "FeatureStatistics", "InceptionFeatureExtractor", "InceptionFeatures",
    "StatisticsAccumulator", "compute_statistics", "dataset_stats_path", "download_weights",
    "evaluate_features", "evaluate_samples", "frechet_distance", "inception_score", "kernel_inception_distance",
    "load_or_compute_dataset_stats", "load_statistics", "preprocess", "resolve_weights",
    "save_statistics", "tf_bilinear_resize",
]
