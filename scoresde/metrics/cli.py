"""Command line: FID (and KID) between two sets of images, for samples made elsewhere.

    python -m scoresde.metrics fid PATH1 PATH2 [--weights FILE] [--device cuda] ...
    python -m scoresde.metrics stats PATH OUT.npz [--dataset NAME --split NAME]
    scoresde-fid PATH1 PATH2 ...            (same as the ``fid`` command)

Each PATH is a folder of images (png, jpg, ... read with PIL, all of one size: checked over the whole
folder before any work), an ``.npz`` of uint8 images ``[N, H, W, C]`` under the key ``samples`` or
``arr_0``, an ``.npy`` of such images, or a statistics ``.npz`` (keys ``mu``, ``sigma``; written by the
``stats`` command, pytorch-fid or others). KID needs features on both sides, so it is skipped for
statistics files that hold only ``mu`` and ``sigma``. A set of fewer than 2,048 images (FID) or fewer
than ``--kid-subset-size`` (KID) gets a warning; NaN/inf statistics and any other bad input end with
one line on stderr and exit status 2.
"""
import argparse
import sys
import zipfile
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
from PIL import Image

from .extractor import InceptionFeatureExtractor
from .inception import RESIZE_MODES
from .scores import frechet_distance, kernel_inception_distance
from .stats import (DEFAULT_MAX_FEATURES, FeatureStatistics, StatisticsAccumulator, check_finite,
                    is_statistics_file, load_statistics, save_statistics)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_KEYS = ("samples", "arr_0")
MIN_FID_IMAGES = 2048  # the feature dimension: fewer images give a singular covariance
ACCEPTED = ("a folder of images, an .npz of uint8 images [N, H, W, C] under 'samples' or 'arr_0', an .npy "
            "of such images, or a statistics .npz (keys 'mu', 'sigma')")


def _check_one_size(files: List[Path]) -> None:
    """Every image of a folder must have the size of the first: checked on all headers before any
    feature is computed, not batch by batch."""
    first = None
    for f in files:
        try:
            with Image.open(f) as im:
                size = im.size
        except Exception as e:  # noqa: BLE001  (PIL raises OSError, SyntaxError, ...)
            raise ValueError(f"{f} is not a readable image ({type(e).__name__}: {e}); delete or replace it") from e
        if first is None:
            first = (f, size)
        elif size != first[1]:
            raise ValueError(f"the images of a folder must share one size: {first[0]} is {first[1][0]}x{first[1][1]} "
                             f"but {f} is {size[0]}x{size[1]}")


def _folder_batches(files: List[Path], batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(files), batch_size):
        arrays = []
        for f in files[i:i + batch_size]:
            try:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im.convert("RGB")))
            except (OSError, SyntaxError, ValueError) as e:
                raise ValueError(f"cannot decode the image {f} ({type(e).__name__}: {e}); delete or replace it") from e
        yield np.stack(arrays)


def _check_zip(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz archive (not a zip file; a text file or a damaged copy?); "
                         f"give {ACCEPTED}")


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:  # a pickle or not an array file at all
        raise ValueError(f"{path} is not a NumPy array file ({e}); give {ACCEPTED}") from e


def _image_array(path: Path):
    """``(images, description)`` of an ``.npz`` (key ``samples`` or ``arr_0``) or an ``.npy`` of images."""
    if path.suffix.lower() == ".npy":
        images, where = _load_array(path), str(path)
    else:
        _check_zip(path)
        with np.load(path, allow_pickle=False) as data:
            key = next((k for k in IMAGE_KEYS if k in data.files), None)
            if key is None:
                raise ValueError(f"{path} holds neither images (keys {IMAGE_KEYS}) nor statistics (keys 'mu', "
                                 f"'sigma'); it has {data.files}")
            images, where = data[key], f"{path}:{key}"
    if images.ndim == 3:  # [N, H, W] grayscale
        images = images[..., None]
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"{where} holds an array of shape {images.shape}; expected images [N, H, W, C] "
                         f"(uint8 0..255) or [N, H, W]")
    return images, f"{len(images)} images in {where}"


def _image_batches(path: Path, batch_size: int):
    """``(batches, description)`` for a folder of images, an ``.npz`` or an ``.npy`` of images."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
        _check_one_size(files)
        return _folder_batches(files, batch_size), f"{len(files)} images in {path}"
    if path.suffix.lower() not in (".npz", ".npy"):
        raise ValueError(f"{path}: cannot read a {path.suffix or 'suffix-less'} file; give {ACCEPTED}")
    images, description = _image_array(path)
    return (images[i:i + batch_size] for i in range(0, len(images), batch_size)), description


class _LazyExtractor:
    """Builds the network only when some path holds images (statistics files need no weights)."""

    def __init__(self, args):
        self.args, self.extractor = args, None

    def get(self) -> InceptionFeatureExtractor:
        if self.extractor is None:
            a = self.args
            self.extractor = InceptionFeatureExtractor(a.weights, device=a.device, resize=a.resize,
                                                       download=not a.no_download)
        return self.extractor


def statistics_of(path: str, lazy: _LazyExtractor, batch_size: int,
                  max_features: int = DEFAULT_MAX_FEATURES) -> FeatureStatistics:
    """Statistics of a PATH in any of the accepted forms."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_file() and p.suffix.lower() == ".npz":
        _check_zip(p)
        if is_statistics_file(p):
            return load_statistics(p)
    batches, description = _image_batches(p, batch_size)
    extractor = lazy.get()
    acc = StatisticsAccumulator(max_features)
    for feats in extractor.iter_features(batches):
        acc.update(feats.pool)
    stats = acc.result({"source": description, "resize": extractor.resize, "num_images": acc.n})
    check_finite(stats, description)
    return stats


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def warn_if_small(path: str, stats: FeatureStatistics, kid_subset_size: Optional[int] = None) -> None:
    """Warn (stderr) about a set too small for a meaningful FID (fewer images than the 2,048 feature
    dimensions: a singular covariance and a large upward bias) or KID (fewer rows than its subsets)."""
    n = stats.num_images
    if n is not None and n < MIN_FID_IMAGES:
        _warn(f"{path}: {n} images are too few for a meaningful FID (fewer than {MIN_FID_IMAGES:,}, the feature "
              f"dimension, so the covariance is singular and FID is biased upward); compare FIDs only at one "
              f"size, 10,000 or more (the paper: 50,000)")
    if kid_subset_size is not None and stats.features is not None and len(stats.features) < kid_subset_size:
        _warn(f"{path}: {len(stats.features)} feature rows for KID, fewer than its subsets of "
              f"--kid-subset-size {kid_subset_size}: KID uses smaller subsets and its spread is large")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="Inception weights file (default: search, then download)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--batch-size", type=_positive_int, default=50, help="images per batch (>= 1)")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="tf",
                        help="input pipeline: the TF graph's own (default) or pytorch-fid's")
    parser.add_argument("--no-download", action="store_true", help="never download the weights")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _fid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path1")
    parser.add_argument("path2")
    _add_common(parser)
    parser.add_argument("--no-kid", action="store_true", help="skip KID")
    parser.add_argument("--kid-subsets", type=_positive_int, default=100)
    parser.add_argument("--kid-subset-size", type=_positive_int, default=1000)


def run_fid(args) -> int:
    lazy = _LazyExtractor(args)
    s1 = statistics_of(args.path1, lazy, args.batch_size)
    s2 = statistics_of(args.path2, lazy, args.batch_size)
    if s1.mu.shape != s2.mu.shape:
        raise ValueError(f"{args.path1} has {s1.mu.shape[0]}-dimensional statistics but {args.path2} has "
                         f"{s2.mu.shape[0]}: they come from different networks")
    kid_size = None if args.no_kid else args.kid_subset_size
    warn_if_small(args.path1, s1, kid_size)
    warn_if_small(args.path2, s2, kid_size)
    fid = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    if not np.isfinite(fid):
        raise ValueError(f"FID is {fid} between {args.path1} and {args.path2}: the statistics are degenerate")
    print(f"FID: {fid:.6f}")
    if args.no_kid:
        return 0
    if s1.features is None or s2.features is None:
        print("KID: unavailable (a statistics file holds only mu and sigma, no features)")
    else:
        kid, std = kernel_inception_distance(s1.features, s2.features, args.kid_subsets, args.kid_subset_size)
        if not np.isfinite(kid):
            raise ValueError(f"KID is {kid} between {args.path1} and {args.path2}: the features hold NaN/inf")
        print(f"KID: {kid:.6f} +- {std:.6f}")
    return 0


def run_stats(args) -> int:
    stats = statistics_of(args.path, _LazyExtractor(args), args.batch_size, args.max_features)
    warn_if_small(args.path, stats)
    stats.meta.update({k: v for k, v in (("dataset", args.dataset), ("split", args.split)) if v})
    save_statistics(args.out, stats)
    print(f"wrote statistics of {stats.num_images} images to {args.out}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scoresde.metrics", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fid = sub.add_parser("fid", help="FID (and KID) between two folders / .npz files")
    _fid_arguments(fid)
    fid.set_defaults(run=run_fid)
    st = sub.add_parser("stats", help="save the statistics of a folder / .npz of images")
    st.add_argument("path")
    st.add_argument("out", help="output .npz")
    _add_common(st)
    st.add_argument("--dataset", default=None)
    st.add_argument("--split", default=None)
    st.add_argument("--max-features", type=_non_negative_int, default=DEFAULT_MAX_FEATURES,
                    help="feature rows kept in the file for KID")
    st.set_defaults(run=run_stats)
    args = parser.parse_args(argv)
    return _report_errors(args.run, args)


def fid_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``scoresde-fid`` console script: ``scoresde-fid PATH1 PATH2 [options]``."""
    parser = argparse.ArgumentParser(prog="scoresde-fid", description="FID (and KID) between two sets of images")
    _fid_arguments(parser)
    return _report_errors(run_fid, parser.parse_args(argv))


def _report_errors(run, args) -> int:
    """Run a command; a user error (missing file, bad input) is one line on stderr and exit status 2
    (``--debug``: the traceback instead)."""
    try:
        return run(args)
    except Exception as e:  # noqa: BLE001  (every failure is one line; --debug re-raises)
        if args.debug:
            raise
        message = " ".join(f"{type(e).__name__}: {e}".split())
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
