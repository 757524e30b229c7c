"""A classifier judge for samples of the embedded 8x8 digits (the DIGITS data set): a sanity metric for CPU
runs, not a replacement for FID.

The judge is an RBF support-vector classifier (scikit-learn's ``SVC``, ``C = 10``, ``gamma = 'scale'``) on the
1,500 training digits of ``scoresde.datasets.read_digits`` at 8x8 in ``[0, 1]``, with class probabilities by
libsvm's method: a Platt sigmoid ``r_ij = 1 / (1 + exp(A f_ij + B))`` for each of the 45 one-against-one
decision values ``f_ij``, fitted on 5-fold cross-validated decision values (unshuffled stratified folds), then
pairwise coupling (Wu, Lin & Weng 2004, method 2: ``min_p sum_{i<j} (r_ji p_i - r_ij p_j)^2``, ``sum p = 1``).
Computed here because scikit-learn 1.9 deprecates ``SVC(probability=True)``; its replacement calibrates
one-against-rest scores, which call half of uniform noise a confident digit, where the pairwise
probabilities stay flat far from every digit. Nothing in the training is random, so every training gives
the same judge. It names all 297 test digits rightly (the most probable label of its probabilities: 296),
is confident (below) on 91% of them, and on none of 500 uniform-noise images.

Samples at other resolutions are brought back to 8x8 by inverting ``scoresde.datasets.pad_to_size``: the
centred zero padding is cropped and each ``k x k`` block (``k = size // 8``) averaged, so a 16x16 digit made
by the data set (each pixel a 2x2 block) pools back to its 8x8 original exactly.

Scores of a set of samples (:meth:`DigitsJudge.score`): ``confident``, the share of samples with
``max_y p(y | x) > 0.9``; ``inception_score``, the digit Inception score ``exp E_x KL(p(y | x) || p(y))``
(1 to 10; higher: confident and diverse); ``class_histogram``, the count of samples per class (the SVC's
own label, :meth:`DigitsJudge.predict`). :func:`evaluate_digits` reports them beside the same scores of the real test digits.

The judge is arrays only (support vectors, their coefficients, intercepts, the sigmoids): it is cached at
``<cache_dir>/digits_svc_v1.npz`` (written atomically, read without pickle) with the SHA-256 of its arrays;
a damaged or stale file is replaced by a fresh training.
"""
import hashlib
import io
import logging
import os
from itertools import combinations
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from .scores import inception_score

log = logging.getLogger("scoresde")

SIZE = 8
NUM_CLASSES = 10
CONFIDENCE = 0.9
RECIPE = "digits_svc_v1"  # change when the judge's recipe changes: older caches are then retrained
PAIRS = list(combinations(range(NUM_CLASSES), 2))  # libsvm's order of the one-against-one classifiers
_ARRAYS = ("support_vectors", "dual_coef", "intercept", "n_support", "gamma", "platt_a", "platt_b")


def to_digits_8x8(images: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Grey digit images as the judge reads them: float64 ``[N, 64]`` in ``[0, 1]``.

    ``images``: ``[N, 1, H, W]``, ``[N, H, W, 1]`` or ``[N, H, W]`` with ``H = W >= 8``; ``uint8`` (0..255) or
    floating point in the data range ``[0, 1]`` (clipped to it). ``H = 8 k + 2 p`` as ``pad_to_size`` makes
    it: the padding ``p`` is cropped and ``k x k`` blocks averaged."""
    x = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] < SIZE:
        raise ValueError(f"digit images must be grey squares [N, 1, H, W], [N, H, W, 1] or [N, H, W] with H = W >= "
                         f"{SIZE}, got shape {tuple(images.shape)}")
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else np.clip(x.astype(np.float64), 0.0, 1.0)
    size = x.shape[1]
    k = size // SIZE
    before = (size - k * SIZE) // 2
    x = x[:, before:before + k * SIZE, before:before + k * SIZE]
    return x.reshape(x.shape[0], SIZE, k, SIZE, k).mean(axis=(2, 4)).reshape(x.shape[0], SIZE * SIZE)


def _split(split: str):
    from scoresde.datasets import read_digits
    images, labels = read_digits(split)
    return to_digits_8x8(images), labels.numpy()


def fit_platt(f: np.ndarray, positive: np.ndarray, iterations: int = 100):
    """Platt's sigmoid ``P(positive | f) = 1 / (1 + exp(A f + B))`` by Newton's method with step halving, on
    Platt's smoothed targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` (Lin, Lin & Weng 2007). Returns
    ``(A, B)``."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    target = np.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    a, b = 0.0, float(np.log((n_neg + 1.0) / (n_pos + 1.0)))

    def loss(a, b):
        z = a * f + b  # -log p = log(1 + exp(z)), -log(1 - p) = log(1 + exp(-z))
        return float(np.sum(target * np.logaddexp(0, z) + (1 - target) * np.logaddexp(0, -z)))

    current = loss(a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(np.clip(a * f + b, -700, 700)))
        d1, d2 = target - p, p * (1 - p)
        grad = np.array([np.dot(f, d1), d1.sum()])
        hess = np.array([[np.dot(f * f, d2), np.dot(f, d2)], [np.dot(f, d2), d2.sum()]]) + 1e-12 * np.eye(2)
        if np.abs(grad).max() < 1e-9:
            break
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2
        a, b = a - scale * step[0], b - scale * step[1]
        current = loss(a, b)
    return a, b


def couple(r: np.ndarray) -> np.ndarray:
    """Pairwise coupling (Wu, Lin & Weng 2004, method 2): ``r`` [N, 45], ``r[:, k] = P(i | i or j)`` for
    ``(i, j) = PAIRS[k]``, to ``p`` [N, 10] minimising ``sum_{i<j} (r_ji p_i - r_ij p_j)^2`` with ``sum p = 1``:
    the solution of ``[[Q, 1], [1^T, 0]] [p; b] = [0; 1]``, ``Q_ii = sum_{s != i} r_si^2``, ``Q_ij = -r_ji r_ij``."""
    n, k = r.shape[0], NUM_CLASSES
    R = np.zeros((n, k, k))
    i, j = np.array(PAIRS).T
    R[:, i, j], R[:, j, i] = r, 1.0 - r
    Q = -R.transpose(0, 2, 1) * R                         # -r_ji r_ij off the diagonal
    Q[:, np.arange(k), np.arange(k)] = (R ** 2).sum(axis=1)  # sum_s r_si^2 (R_ii = 0)
    system = np.zeros((n, k + 1, k + 1))
    system[:, :k, :k], system[:, :k, k], system[:, k, :k] = Q, 1.0, 1.0
    rhs = np.zeros((n, k + 1, 1))
    rhs[:, k] = 1.0
    p = np.clip(np.linalg.solve(system, rhs)[:, :k, 0], 0.0, None)
    return p / p.sum(axis=1, keepdims=True)


class DigitsJudge:
    """A trained digits classifier (see the module docstring), held as arrays: build it with
    :func:`load_digits_judge` or :func:`train_digits_judge`."""

    def __init__(self, arrays: Dict[str, np.ndarray]):
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise ValueError(f"a digits judge needs the arrays {list(_ARRAYS)}; missing {missing}")
        self.arrays = {name: np.asarray(arrays[name]) for name in _ARRAYS}

    def checksum(self) -> str:
        """SHA-256 of the judge's arrays (names, dtypes, shapes and bytes, in a fixed order)."""
        h = hashlib.sha256()
        for name in _ARRAYS:
            a = np.ascontiguousarray(self.arrays[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """The 45 one-against-one RBF decision values ``f_ij`` [N, 45] of 8x8 digits ``x`` [N, 64] (libsvm's
        layout: positive means class ``i`` of ``PAIRS[k] = (i, j)``)."""
        a = self.arrays
        sv, coef = a["support_vectors"], a["dual_coef"]
        sq = (x ** 2).sum(1)[:, None] + (sv ** 2).sum(1)[None] - 2 * x @ sv.T
        kernel = np.exp(-float(a["gamma"]) * np.clip(sq, 0.0, None))
        starts = np.concatenate([[0], np.cumsum(a["n_support"])])
        out = np.empty((x.shape[0], len(PAIRS)))
        for k, (i, j) in enumerate(PAIRS):
            si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
            out[:, k] = kernel[:, si] @ coef[j - 1, si] + kernel[:, sj] @ coef[i, sj] + a["intercept"][k]
        return out

    def probabilities(self, images) -> np.ndarray:
        """``p(y | x)``, float64 ``[N, 10]``, of images as :func:`to_digits_8x8` takes them."""
        f = self.decision_function(to_digits_8x8(images))
        z = np.clip(self.arrays["platt_a"] * f + self.arrays["platt_b"], -700, 700)
        return couple(np.clip(1.0 / (1.0 + np.exp(z)), 1e-7, 1 - 1e-7))

    def predict(self, images) -> np.ndarray:
        """The SVC's own label of each image, int64 ``[N]``: one-against-one votes (``f_ij > 0`` votes for
        ``i``, else for ``j``), ties to the lowest class, as libsvm and ``SVC.predict`` decide."""
        f = self.decision_function(to_digits_8x8(images))
        votes = np.zeros((f.shape[0], NUM_CLASSES), np.int64)
        for k, (i, j) in enumerate(PAIRS):
            votes[:, i] += f[:, k] > 0
            votes[:, j] += f[:, k] <= 0
        return votes.argmax(axis=1)

    def score(self, images) -> Dict[str, Any]:
        """``{"num_samples", "confident", "inception_score", "class_histogram"}`` of a set of images (see the
        module docstring)."""
        p = self.probabilities(images)
        if p.shape[0] < 1:
            raise ValueError("the digits judge needs at least one image")
        return {"num_samples": int(p.shape[0]),
                "confident": float((p.max(axis=1) > CONFIDENCE).mean()),
                "inception_score": inception_score(np.log(np.clip(p, 1e-300, 1.0)), splits=1)[0],
                "class_histogram": np.bincount(self.predict(images), minlength=NUM_CLASSES).tolist()}


def train_digits_judge() -> DigitsJudge:
    """A fresh judge trained on the training digits (deterministic: no random state is involved)."""
    try:
        from sklearn.model_selection import StratifiedKFold
        from sklearn.svm import SVC
    except ImportError as e:
        raise ImportError("the digits judge needs scikit-learn: pip install scikit-learn (or the 'digits' extra "
                          "of scoresde)") from e

    def svc(x, y):
        return SVC(C=10.0, gamma="scale", decision_function_shape="ovo").fit(x, y)

    x, y = _split("train")
    held_out = np.empty((x.shape[0], len(PAIRS)))
    for fit, rest in StratifiedKFold(n_splits=5).split(x, y):
        held_out[rest] = svc(x[fit], y[fit]).decision_function(x[rest])
    sigmoids = [fit_platt(held_out[np.isin(y, pair), k], y[np.isin(y, pair)] == pair[0])
                for k, pair in enumerate(PAIRS)]
    model = svc(x, y)
    judge = DigitsJudge({"support_vectors": model.support_vectors_, "dual_coef": model.dual_coef_,
                         "intercept": model.intercept_, "n_support": model.n_support_.astype(np.int64),
                         "gamma": np.float64(model._gamma), "platt_a": np.array([a for a, _ in sigmoids]),
                         "platt_b": np.array([b for _, b in sigmoids])})
    if not np.allclose(judge.decision_function(x[:50]), model.decision_function(x[:50]), rtol=1e-9, atol=1e-9):
        raise RuntimeError("this scikit-learn's SVC lays out its one-against-one coefficients differently from "
                           "libsvm's; the digits judge cannot be built from it")
    return judge


def _read_cache(path: str) -> Optional[DigitsJudge]:
    """The cached judge, or ``None`` (with the reason logged) when it is absent, damaged or stale."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        recipe, checksum = str(arrays.pop("recipe")), str(arrays.pop("sha256"))
        if recipe != RECIPE:
            raise ValueError(f"written by recipe {recipe!r}, not {RECIPE!r}")
        judge = DigitsJudge(arrays)
        if judge.checksum() != checksum:
            raise ValueError("its checksum does not match (damaged)")
    except (ValueError, KeyError, OSError, EOFError) as e:
        log.warning("digits judge cache %s not used (%s); training the judge again", path, e)
        return None
    return judge


def load_digits_judge(cache_dir: Optional[str] = None) -> DigitsJudge:
    """The digits judge, trained at first use and cached under ``cache_dir`` (``None``: not cached)."""
    path = None if cache_dir is None else os.path.join(cache_dir, RECIPE + ".npz")
    judge = None if path is None else _read_cache(path)
    if judge is None:
        judge = train_digits_judge()
        if path is not None:
            from scoresde.checkpoint import atomic_write_bytes
            buffer = io.BytesIO()
            np.savez(buffer, recipe=np.array(RECIPE), sha256=np.array(judge.checksum()), **judge.arrays)
            atomic_write_bytes(buffer.getvalue(), path)
    return judge


def evaluate_digits(samples, judge: Optional[DigitsJudge] = None, cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """``{"samples": judge.score(samples), "real_test": judge.score(the 297 real test digits)}``; ``judge``
    defaults to :func:`load_digits_judge` with ``cache_dir``."""
    judge = judge or load_digits_judge(cache_dir)
    return {"samples": judge.score(samples), "real_test": judge.score(_split("test")[0].reshape(-1, SIZE, SIZE))}
