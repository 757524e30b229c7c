"""Command line: FID (and KID) between two sets of images, for samples made elsewhere.

    python -m scoresde.metrics fid PATH1 PATH2 [--weights FILE] [--device cuda] ...
    python -m scoresde.metrics stats PATH OUT.npz [--dataset NAME --split NAME]
    scoresde-fid PATH1 PATH2 ...            (same as the ``fid`` command)

Each PATH is a folder of images (png, jpg, ... read with PIL, all of one size), an ``.npz`` of uint8
images ``[N, H, W, C]`` under the key ``samples`` or ``arr_0``, or a statistics ``.npz`` (keys ``mu``,
``sigma``; written by the ``stats`` command, pytorch-fid or others). KID needs features on both sides,
so it is skipped for statistics files that hold only ``mu`` and ``sigma``.
"""
import argparse
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
from PIL import Image

from .extractor import InceptionFeatureExtractor
from .inception import RESIZE_MODES
from .scores import frechet_distance, kernel_inception_distance
from .stats import (DEFAULT_MAX_FEATURES, FeatureStatistics, StatisticsAccumulator, is_statistics_file,
                    load_statistics, save_statistics)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_KEYS = ("samples", "arr_0")


def _folder_batches(files: List[Path], batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(files), batch_size):
        arrays = []
        for f in files[i:i + batch_size]:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"images in a folder must share one size, found {sorted(shapes)}")
        yield np.stack(arrays)


def _image_batches(path: Path, batch_size: int):
    """``(batches, description)`` for a folder of images or an ``.npz`` of images."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
        return _folder_batches(files, batch_size), f"{len(files)} images in {path}"
    with np.load(path, allow_pickle=False) as data:
        key = next((k for k in IMAGE_KEYS if k in data.files), None)
        if key is None:
            raise ValueError(f"{path} holds neither images (keys {IMAGE_KEYS}) nor statistics (keys 'mu', "
                             f"'sigma'); it has {data.files}")
        images = data[key]
    if images.ndim == 3:  # [N, H, W] grayscale
        images = images[..., None]
    return (images[i:i + batch_size] for i in range(0, len(images), batch_size)), \
        f"{len(images)} images in {path}:{key}"


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
    if p.is_file() and is_statistics_file(p):
        return load_statistics(p)
    batches, description = _image_batches(p, batch_size)
    extractor = lazy.get()
    acc = StatisticsAccumulator(max_features)
    for feats in extractor.iter_features(batches):
        acc.update(feats.pool)
    return acc.result({"source": description, "resize": extractor.resize, "num_images": acc.n})


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="Inception weights file (default: search, then download)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--resize", choices=RESIZE_MODES, default="tf",
                        help="input pipeline: the TF graph's own (default) or pytorch-fid's")
    parser.add_argument("--no-download", action="store_true", help="never download the weights")


def _fid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path1")
    parser.add_argument("path2")
    _add_common(parser)
    parser.add_argument("--no-kid", action="store_true", help="skip KID")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)


def run_fid(args) -> int:
    lazy = _LazyExtractor(args)
    s1 = statistics_of(args.path1, lazy, args.batch_size)
    s2 = statistics_of(args.path2, lazy, args.batch_size)
    print(f"FID: {frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma):.6f}")
    if args.no_kid:
        return 0
    if s1.features is None or s2.features is None:
        print("KID: unavailable (a statistics file holds only mu and sigma, no features)")
    else:
        kid, std = kernel_inception_distance(s1.features, s2.features, args.kid_subsets, args.kid_subset_size)
        print(f"KID: {kid:.6f} +- {std:.6f}")
    return 0


def run_stats(args) -> int:
    stats = statistics_of(args.path, _LazyExtractor(args), args.batch_size, args.max_features)
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
    st.add_argument("--max-features", type=int, default=DEFAULT_MAX_FEATURES,
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
    """Run a command; a user error (missing file, bad input) is one line on stderr and exit status 2."""
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
