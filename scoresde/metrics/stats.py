"""Feature statistics (mean, covariance, a subset of features for KID) and their ``.npz`` cache.

The cache is written atomically with a SHA-256 checksum file (``<file>.json``, as checkpoints have): a damaged
cache is set aside and computed again, never read.

File format (``save_statistics``): ``mu [D]``, ``sigma [D, D]`` (float64), ``num_images`` (int),
``meta`` (a JSON string: dataset, split, resolution, preprocessing, ...) and optionally ``features
[M, D]`` (float32, a uniform random subset of at most ``max_features`` rows, used for KID).
``load_statistics`` also reads pytorch-fid's and other tools' files holding only ``mu`` and ``sigma``.
"""
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import numpy as np
import torch

from ..checkpoint import DamagedCheckpoint, atomic_write_checked, verify
from .extractor import InceptionFeatureExtractor

log = logging.getLogger(__name__)

DEFAULT_MAX_FEATURES = 10000


@dataclass
class FeatureStatistics:
    """Gaussian statistics of a set of features: ``mu [D]``, ``sigma [D, D]``; ``features [M, D]`` a
    subset kept for KID (``None`` if not kept); ``meta`` what they were computed from."""
    mu: np.ndarray
    sigma: np.ndarray
    num_images: Optional[int] = None
    features: Optional[np.ndarray] = None
    meta: Dict[str, Any] = field(default_factory=dict)


class StatisticsAccumulator:
    """Streaming mean and covariance (float64, sums shifted by the first batch's mean for accuracy),
    plus a uniform random subset of at most ``max_features`` feature rows (reservoir sampling)."""

    def __init__(self, max_features: int = DEFAULT_MAX_FEATURES, seed: Optional[int] = 0):
        self.max_features = max_features
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self.shift = self.s1 = self.s2 = None
        self.reservoir = []

    def update(self, features) -> None:
        f = np.asarray(features, np.float64)
        if f.ndim != 2:
            raise ValueError(f"expected features [B, D], got shape {f.shape}")
        if self.shift is None:
            d = f.shape[1]
            self.shift, self.s1, self.s2 = f.mean(axis=0), np.zeros(d), np.zeros((d, d))
        c = f - self.shift
        self.s1 += c.sum(axis=0)
        self.s2 += c.T @ c
        if self.max_features <= 0:
            self.n += f.shape[0]
            return
        for row in np.asarray(features, np.float32):
            if len(self.reservoir) < self.max_features:
                self.reservoir.append(row)
            else:
                j = self.rng.integers(0, self.n + 1)
                if j < self.max_features:
                    self.reservoir[j] = row
            self.n += 1

    def result(self, meta: Optional[Dict[str, Any]] = None) -> FeatureStatistics:
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 images, got {self.n}")
        mean_c = self.s1 / self.n
        sigma = (self.s2 - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
        features = np.stack(self.reservoir) if self.reservoir else None
        return FeatureStatistics(self.shift + mean_c, sigma, self.n, features, dict(meta or {}))


def compute_statistics(features, meta: Optional[Dict[str, Any]] = None,
                       max_features: int = DEFAULT_MAX_FEATURES, seed: Optional[int] = 0) -> FeatureStatistics:
    """Statistics of features ``[N, D]``: mean, unbiased covariance, and up to ``max_features`` rows."""
    acc = StatisticsAccumulator(max_features, seed)
    acc.update(features)
    return acc.result(meta)


def save_statistics(path, stats: FeatureStatistics) -> Path:
    """Write ``stats`` to ``path`` (``.npz``) atomically: a temporary file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(mu=np.asarray(stats.mu, np.float64), sigma=np.asarray(stats.sigma, np.float64),
                  num_images=np.int64(-1 if stats.num_images is None else stats.num_images),
                  meta=np.array(json.dumps(stats.meta, sort_keys=True)))
    if stats.features is not None:
        arrays["features"] = np.asarray(stats.features, np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_checked(str(path), lambda f: f.write(buffer.getvalue()))
    return path


def check_finite(stats: FeatureStatistics, source) -> FeatureStatistics:
    """Refuse statistics with NaN/inf entries (broken images or a broken file), naming their source."""
    bad = {name: int(np.size(a) - np.isfinite(a).sum()) for name, a in
           (("mu", stats.mu), ("sigma", stats.sigma), ("features", stats.features)) if a is not None}
    bad = {name: n for name, n in bad.items() if n}
    if bad:
        counts = ", ".join(f"{n} in {k}" for k, n in bad.items())
        raise ValueError(f"the statistics of {source} hold NaN/inf values ({counts}): the images or the file are "
                         f"broken; recompute them from finite images")
    return stats


def is_statistics_file(path) -> bool:
    """Whether ``path`` is an ``.npz`` holding ``mu`` and ``sigma``, or ``pool_3`` features."""
    with np.load(path, allow_pickle=False) as data:
        return ("mu" in data.files and "sigma" in data.files) or "pool_3" in data.files


def load_statistics(path) -> FeatureStatistics:
    """Read statistics written by ``save_statistics``, any ``.npz`` with keys ``mu`` and ``sigma``
    (pytorch-fid, ...), or one holding all features under ``pool_3`` (the paper's TF code's files)."""
    with np.load(path, allow_pickle=False) as data:
        if ("mu" not in data.files or "sigma" not in data.files) and "pool_3" in data.files:
            return check_finite(compute_statistics(data["pool_3"], meta={"source": f"pool_3 features in {path}"}),
                                path)
        if "mu" not in data.files or "sigma" not in data.files:
            raise ValueError(f"{path} is not a statistics file: it needs keys 'mu' and 'sigma' (or "
                             f"'pool_3'), has {data.files}")
        num = int(data["num_images"]) if "num_images" in data.files else -1
        return check_finite(FeatureStatistics(
            mu=data["mu"].astype(np.float64), sigma=data["sigma"].astype(np.float64),
            num_images=None if num < 0 else num,
            features=data["features"] if "features" in data.files else None,
            meta=json.loads(str(data["meta"])) if "meta" in data.files else {}), path)


def _batches(images, batch_size: int):
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return (images[i:i + batch_size] for i in range(0, len(images), batch_size))
    return iter(images)


def load_or_compute_dataset_stats(cache_path, images: Union[np.ndarray, torch.Tensor, Iterable],
                                  meta: Dict[str, Any], extractor: InceptionFeatureExtractor,
                                  batch_size: int = 50, max_features: int = DEFAULT_MAX_FEATURES,
                                  seed: Optional[int] = 0) -> FeatureStatistics:
    """Statistics of a dataset, computed once and cached at ``cache_path``.

    ``images``: an array/tensor of images, or an iterable of batches (e.g. a data loader), in the image
    convention of ``extractor``; it is only read when the cache is absent. ``meta`` records what the
    statistics describe (e.g. ``{"dataset": "cifar10", "split": "train", "resolution": 32}``); the
    extractor's ``resize`` mode and the number of images are added. A cached file whose ``meta``
    disagrees raises ``ValueError`` rather than silently mixing datasets.
    """
    cache_path = Path(cache_path)
    # compare in the form the file stores (JSON): a tuple comes back as a list
    meta = json.loads(json.dumps(dict(meta, resize=extractor.resize)))
    if cache_path.is_file():
        try:
            verify(str(cache_path))
        except DamagedCheckpoint as err:
            log.warning("cached statistics %s are damaged (%s): set aside as %s.damaged and computed again",
                        cache_path, err.reason, cache_path.name)
            os.replace(cache_path, str(cache_path) + ".damaged")
    if cache_path.is_file():
        stats = load_statistics(cache_path)
        wrong = {k: (stats.meta.get(k), v) for k, v in meta.items() if stats.meta.get(k) != v}
        if wrong:
            raise ValueError(f"cached statistics {cache_path} were computed for other data "
                             f"(key: (cached, requested)): {wrong}; delete the file or use another path")
        return stats
    acc = StatisticsAccumulator(max_features, seed)
    for feats in extractor.iter_features(_batches(images, batch_size)):
        acc.update(feats.pool)
    meta["num_images"] = acc.n
    stats = acc.result(meta)
    save_statistics(cache_path, stats)
    return stats


def dataset_stats_path(workdir, dataset: str, split: str, resolution: int, resize: str = "tf") -> Path:
    """Conventional cache path: ``<workdir>/inception_stats/<dataset>_<split>_<resolution>_<resize>.npz``."""
    return Path(workdir) / "inception_stats" / f"{dataset}_{split}_{resolution}_{resize}.npz"
