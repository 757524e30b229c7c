"""One call for the evaluation loop: FID, KID and IS of samples against reference statistics."""
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .extractor import Images, InceptionFeatureExtractor, InceptionFeatures
from .scores import frechet_distance, inception_score, kernel_inception_distance
from .stats import FeatureStatistics, compute_statistics, load_statistics


def evaluate_samples(samples: Images, ref_stats: Union[FeatureStatistics, str, Path],
                     extractor: InceptionFeatureExtractor, batch_size: int = 50,
                     layout: Optional[str] = None, **kwargs) -> Dict[str, Any]:
    """FID, KID and Inception Score of ``samples`` against ``ref_stats`` (statistics or their file).

    ``samples``: ``[N, H, W, C]`` or ``[N, C, H, W]``, uint8 0..255 or float 0..1 (see ``extractor``).
    Extracts the features ``batch_size`` images at a time, then calls ``evaluate_features`` (which
    takes the other keyword arguments and describes the returned dict).
    """
    feats = extractor.features(samples, batch_size=batch_size, layout=layout)
    return evaluate_features(feats, ref_stats, logits_unavailable_reason=extractor.logits_unavailable_reason,
                             **kwargs)


def evaluate_features(features: InceptionFeatures, ref_stats: Union[FeatureStatistics, str, Path],
                      logits_unavailable_reason: Optional[str] = None, is_splits: int = 10,
                      kid_subsets: int = 100, kid_subset_size: int = 1000,
                      seed: Optional[int] = 0) -> Dict[str, Any]:
    """FID, KID and IS of already extracted ``features`` (e.g. gathered while sampling in rounds).

    Returns a JSON-serialisable dict with ``fid``, ``kid``, ``kid_std``, ``inception_score``,
    ``inception_score_std``, ``num_samples`` and ``unavailable`` (metric -> reason). A metric that
    cannot be computed is ``None`` and its reason is in ``unavailable``: KID when the reference
    statistics hold no features (e.g. a pytorch-fid file), IS when the weights have no 1008-class head.
    """
    if not isinstance(ref_stats, FeatureStatistics):
        ref_stats = load_statistics(ref_stats)
    n = features.pool.shape[0]
    stats = compute_statistics(features.pool, max_features=0)
    result: Dict[str, Any] = {"fid": frechet_distance(stats.mu, stats.sigma, ref_stats.mu, ref_stats.sigma),
                              "kid": None, "kid_std": None, "inception_score": None,
                              "inception_score_std": None, "num_samples": n, "unavailable": {}}
    if ref_stats.features is None:
        result["unavailable"]["kid"] = ("the reference statistics hold only mu and sigma, no features; "
                                        "recompute them with load_or_compute_dataset_stats to get KID")
    else:
        result["kid"], result["kid_std"] = kernel_inception_distance(
            features.pool, ref_stats.features, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    if features.logits is None:
        result["unavailable"]["inception_score"] = logits_unavailable_reason or "no logits were extracted"
    elif n < is_splits:
        result["unavailable"]["inception_score"] = f"{n} samples are fewer than the {is_splits} splits"
    else:
        result["inception_score"], result["inception_score_std"] = inception_score(features.logits, is_splits)
    return result
