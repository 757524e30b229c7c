"""Data sets, scalers and loaders, without TensorFlow or torchvision.

``get_dataset(config, split=...)`` builds a ``Dataset`` of ``(x, label)`` with ``x`` float32
``[C, H, W]`` in ``[0, 1]`` (before scaling; 2-D toys: float ``[2]``), from ``config.data``:

=============  ==============================================================================
dataset        source (under ``data.root``)
=============  ==============================================================================
CIFAR10        ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``; ``data.download=True``
               fetches the archive; its md5 (``data.archive_md5``, default the official one) is
               checked for a present archive too, once (cached in ``<archive>.md5``)
MNIST          idx files ``train-images-idx3-ubyte(.gz)`` ... (also under ``MNIST/raw``),
               zero-padded / nearest-upsampled to ``image_size``
CELEBA         ``img_align_celeba/``: centre 140x140 crop, resized to ``image_size``; split by
               ``list_eval_partition.txt`` or, without it, by the standard image-id ranges
               (``test`` = CelebA's validation partition, as in the paper's code)
LSUN           ``<category>_train/`` and ``<category>_val/`` folders of exported images
FFHQ,          a folder of images (``train/`` and ``test/`` or ``val/`` sub-folders if present,
CelebAHQ,      else the whole folder for both splits); shorter side resized to ``image_size``,
IMAGEFOLDER    centre crop; ``data.class_folders=True`` labels by first sub-folder
DIGITS         scikit-learn's 8x8 digits (no download), nearest-upsampled + zero-padded
TOY            ``data.toy_name`` in :data:`TOY_DISTRIBUTIONS`, ``data.num_toy_points`` points
               drawn from ``config.seed`` (train) and a seed derived from it (test)
=============  ==============================================================================

Custom data: put the images in a folder (any sub-folders) and use ``dataset='IMAGEFOLDER'``
with ``root`` pointing at it; or register a builder ``(config, split) -> Dataset`` with
``@DATASETS.register('NAME')``, returning a :class:`TensorImageDataset` (``uint8`` images in
memory), an :class:`ImageFileDataset` (files) or any data set with ``get_batch(indices)``.

``get_dataloader`` / ``get_data_iterators`` wrap a data set in a :class:`DataStream` (seeded
shuffling, per-rank sharding, random flip, uniform dequantisation, exact resume from a step);
``get_data_scaler`` / ``get_data_inverse_scaler`` map ``[0, 1]`` to the model's range and back.
"""
import os
from typing import Optional, Tuple

import torch

from ..registry import Registry
from .download import (CIFAR10_ARCHIVE, CIFAR10_FOLDER, CIFAR10_MD5, CIFAR10_URL, download_cifar10,
                       download_url, extract_archive, file_digest, verify_archive)
from .images import (ImageDataset, ImageFileDataset, TensorImageDataset, center_crop, check_image_files, find_cifar10,
                     find_file, find_images, labels_from_folders, match_channels, mnist_search_dirs,
                     pad_to_size, read_cifar10, read_digits, read_idx, read_mnist, resize_center_crop,
                     resize_uint8, check_num_channels, MNIST_FILES)
from .loader import DataStream, EpochBatchSampler, dequantize_counts, random_flip, step_seed
from .toy import (TOY_DISTRIBUTIONS, PointDataset, checkerboard, eight_gaussians,
                  eight_gaussians_mixture, sample_toy, swiss_roll, two_moons)

__all__ = [
    "DATASETS", "get_dataset", "get_dataloader", "get_data_iterators", "get_data_scaler",
    "get_data_inverse_scaler", "center", "uncenter", "identity", "dequantize_counts", "random_flip",
    "DataStream", "ImageDataset", "TensorImageDataset", "ImageFileDataset", "PointDataset",
    "download_url", "download_cifar10", "extract_archive", "file_digest", "verify_archive", "check_image_files",
    "read_cifar10", "read_idx",
    "read_mnist", "read_digits", "find_images", "pad_to_size", "resize_uint8", "center_crop",
    "resize_center_crop", "TOY_DISTRIBUTIONS", "sample_toy", "eight_gaussians",
    "eight_gaussians_mixture", "checkerboard", "swiss_roll", "two_moons",
    "CIFAR10_URL", "CIFAR10_MD5",
]

DATASETS = Registry("dataset")
SPLITS = ("train", "test")
CELEBA_CROP = 140
CELEBA_VALID_FIRST_ID = 162771     # standard partition: ids 1..162770 train, 162771..182637 val,
CELEBA_TEST_FIRST_ID = 182638      # 182638..202599 test
DEFAULT_NUM_TOY_POINTS = 10000
_MISSING = object()


# ----------------------------------------------------------------------------- config access

def _field(cfg, name: str, default=_MISSING, prefix: str = "data"):
    value = getattr(cfg, name, default)
    if value is _MISSING:
        raise ValueError(f"config.{prefix}.{name} is required")
    return value


def _root(config) -> str:
    root = _field(config.data, "root", None)
    if not root:
        raise ValueError(f"config.data.root must name the folder that holds the "
                         f"{config.data.dataset} data set")
    return os.path.expanduser(str(root))


def _image_size(config) -> int:
    size = _field(config.data, "image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"config.data.image_size must be a positive int, got {size!r}")
    return size


def _num_channels(config, allowed) -> int:
    channels = _field(config.data, "num_channels", allowed[-1])
    check_num_channels(channels, allowed)
    return channels


def _not_found(what: str, looked: str, how: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found: looked for {looked}. {how}")


# ----------------------------------------------------------------------------- in-memory data sets

def _in_memory(images, labels, config, fit) -> TensorImageDataset:
    images = fit(images, _image_size(config))
    return TensorImageDataset(match_channels(images, _num_channels(config, (1, 3))), labels)


@DATASETS.register("CIFAR10")
def _cifar10(config, split: str) -> TensorImageDataset:
    root = _root(config)
    _num_channels(config, (3,))
    md5 = _field(config.data, "archive_md5", None) or CIFAR10_MD5
    source = find_cifar10(root)
    if source is None and _field(config.data, "download", False):
        source = download_cifar10(root, md5=md5)
    if source is None:
        raise _not_found(
            "CIFAR-10", f"{os.path.join(root, CIFAR10_FOLDER)} and {os.path.join(root, CIFAR10_ARCHIVE)}",
            f"Set config.data.download=True to download it there from {CIFAR10_URL} "
            f"(md5 {md5}), or put the archive (or its extracted folder) there.")
    if os.path.isfile(source):  # the archive itself, found in place: checked once (cached next to it)
        verify_archive(source, md5, how=f" (data.download=True, or by hand from {CIFAR10_URL})")
    return _in_memory(*read_cifar10(source, split), config, resize_uint8)


@DATASETS.register("MNIST")
def _mnist(config, split: str) -> TensorImageDataset:
    root = _root(config)
    dirs = mnist_search_dirs(root)
    paths = [find_file(dirs, name) for name in MNIST_FILES[split]]
    if None in paths:
        raise _not_found(
            f"MNIST {split} split", f"{' and '.join(n + '(.gz)' for n in MNIST_FILES[split])} in "
            f"{', '.join(dirs)}",
            "Download the four idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from "
            f"https://ossci-datasets.s3.amazonaws.com/mnist/ (or yann.lecun.com/exdb/mnist) into {root}.")
    return _in_memory(*read_mnist(*paths), config, pad_to_size)


@DATASETS.register("DIGITS")
def _digits(config, split: str) -> TensorImageDataset:
    return _in_memory(*read_digits(split), config, pad_to_size)


# ----------------------------------------------------------------------------- folders of images

def _image_folder(config, folder: str, what: str, how: str, *, files=None,
                  **transform) -> ImageFileDataset:
    if files is None:
        if not os.path.isdir(folder):
            raise _not_found(what, f"a folder of images at {folder}", how)
        files = find_images(folder)
    if not files:
        raise _not_found(what, f"png/jpg/jpeg/webp images under {folder} (the folder has none)", how)
    labels = class_names = None
    if _field(config.data, "class_folders", False):
        labels, class_names = labels_from_folders(folder, files)
    return ImageFileDataset(files, labels, image_size=_image_size(config),
                            num_channels=_num_channels(config, (1, 3)), class_names=class_names,
                            **transform)


def _split_folder(root: str, split: str) -> str:
    """``root/train`` or ``root/test`` (``root/val``) when the data set has split folders, else ``root``."""
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return root


def _celeba_split(files, split: str, partition_file: Optional[str]):
    """CelebA's standard partition, from ``list_eval_partition.txt`` (0 train, 1 validation,
    2 test) if present, else from the image ids (``000001.jpg``; validation is ids 162771..182637).
    Our ``'test'`` split is CelebA's validation partition, as in the paper's code."""
    wanted = 0 if split == "train" else 1
    if partition_file is not None:
        with open(partition_file) as f:
            part = {name: int(p) for name, p in (line.split() for line in f if line.strip())}
        return [p for p in files if part.get(os.path.basename(p)) == wanted]
    stems = [os.path.splitext(os.path.basename(p))[0] for p in files]
    if not all(s.isdigit() for s in stems):
        raise ValueError(f"CelebA images are not named by id (e.g. {files[0]!r}); put "
                         f"list_eval_partition.txt next to img_align_celeba")
    return [p for p, s in zip(files, stems) if (int(s) >= CELEBA_VALID_FIRST_ID) == bool(wanted)
            and int(s) < CELEBA_TEST_FIRST_ID]


@DATASETS.register("CELEBA")
def _celeba(config, split: str) -> ImageFileDataset:
    root = _root(config)
    folder = os.path.join(root, "img_align_celeba")
    folder = root if not os.path.isdir(folder) and os.path.basename(root) == "img_align_celeba" else folder
    how = ("Download img_align_celeba.zip (and list_eval_partition.txt) from "
           "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and extract it into " + root + ".")
    if not os.path.isdir(folder):
        raise _not_found("CelebA", f"a folder of images at {folder}", how)
    partitions = [os.path.join(d, "list_eval_partition.txt") for d in (root, os.path.dirname(folder))]
    partition = next((p for p in partitions if os.path.isfile(p)), None)
    files = _celeba_split(find_images(folder), split, partition)
    return _image_folder(config, folder, f"CelebA {split} split", how, files=files,
                         crop_size=CELEBA_CROP, resample="bilinear")


@DATASETS.register("LSUN")
def _lsun(config, split: str) -> ImageFileDataset:
    root, category = _root(config), _field(config.data, "category")
    folder = os.path.join(root, f"{category}_{'train' if split == 'train' else 'val'}")
    how = (f"Download the {category} lmdb from https://github.com/fyu/lsun and export its images "
           f"(e.g. its data.py export) into {folder}.")
    # the paper: resize_small + central_crop at 128; otherwise crop the centred square first,
    # then a bicubic resize
    transform = (dict(resample="bilinear") if _image_size(config) == 128
                 else dict(crop_size="square", resample="bicubic"))
    return _image_folder(config, folder, f"LSUN {category} {split} split", how, **transform)


def _register_image_folder(name: str, how: str) -> None:
    def build(config, split: str) -> ImageFileDataset:
        root = _root(config)
        return _image_folder(config, _split_folder(root, split), name, how.format(root=root))
    DATASETS.register(name)(build)


_register_image_folder("FFHQ", "Download FFHQ images from https://github.com/NVlabs/ffhq-dataset "
                               "into {root}.")
_register_image_folder("CelebAHQ", "Build CelebA-HQ with https://github.com/tkarras/progressive_growing_of_gans "
                                   "and put its images (png/jpg) into {root}.")
_register_image_folder("IMAGEFOLDER", "Put your images (png/jpg/jpeg/webp, any sub-folders) into {root}.")


# ----------------------------------------------------------------------------- 2-D toys

@DATASETS.register("TOY")
def _toy(config, split: str) -> PointDataset:
    name = _field(config.data, "toy_name")
    n = _field(config.data, "num_toy_points", DEFAULT_NUM_TOY_POINTS)
    if name not in TOY_DISTRIBUTIONS:
        raise ValueError(f"config.data.toy_name={name!r} is unknown; available: "
                         f"{', '.join(TOY_DISTRIBUTIONS.list())}")
    generator = torch.Generator().manual_seed(step_seed(_field(config, "seed", 0, "config"),
                                                        SPLITS.index(split)))
    return PointDataset(*sample_toy(name, n, generator=generator))


# ----------------------------------------------------------------------------- public API

def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def get_dataset(config, *, split: str = "train"):
    """The ``config.data.dataset`` data set's ``split`` (``'train'`` or ``'test'``): items
    ``(x float32 [C, H, W] in [0, 1], label int)``; for ``TOY``, ``(x float32 [2], label int)``."""
    _check_split(split)
    name = _field(config.data, "dataset")
    if name not in DATASETS:
        raise ValueError(f"config.data.dataset={name!r} is unknown; available: {', '.join(DATASETS.list())}")
    return DATASETS.get(name)(config, split)


def _per_rank_batch_size(config, split: str, world_size: int) -> int:
    field = "training" if split == "train" else "eval"
    total = _field(getattr(config, field), "batch_size", prefix=field)
    if total % world_size:
        raise ValueError(f"config.{field}.batch_size={total} is the global batch size and must be "
                         f"divisible by world_size={world_size}")
    return total // world_size


def get_dataloader(config, split: str = "train", *, rank: int = 0, world_size: int = 1,
                   seed: Optional[int] = None, start_step: int = 0, infinite: Optional[bool] = None,
                   shuffle: Optional[bool] = None, batch_size: Optional[int] = None,
                   device=None, dataset=None, raw: bool = False) -> DataStream:
    """A :class:`DataStream` over ``get_dataset(config, split=split)`` (or ``dataset``).

    * batch size per rank: ``batch_size``, else ``config.training.batch_size`` (train) or
      ``config.eval.batch_size`` (test) divided by ``world_size`` (they are global sizes);
    * ``seed`` defaults to ``config.seed``; ``start_step`` resumes at that global batch;
    * train: infinite, shuffled, ``drop_last``, random flips if ``config.data.random_flip``;
      test: one pass per ``iter()``, in order, no flips, the last batch may be short (with
      ``world_size > 1`` the ``DistributedSampler`` pads by repeating a few examples);
    * uniform dequantisation on both splits if ``config.data.uniform_dequantization``;
    * ``config.data.num_workers`` worker processes (default 0 for in-memory data, else
      ``min(2, cpu_count)``), persistent; pinned memory only when CUDA exists.
    Images come out float32 in ``[0, 1]``, not yet scaled: apply :func:`get_data_scaler`;
    ``raw=True`` yields the stored ``uint8`` counts instead (no flips, no dequantisation).
    """
    _check_split(split)
    train = split == "train"
    dataset = get_dataset(config, split=split) if dataset is None else dataset
    images = isinstance(dataset, ImageDataset)
    default_workers = min(2, os.cpu_count() or 1) if isinstance(dataset, ImageFileDataset) else 0
    num_workers = _field(config.data, "num_workers", default_workers)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"config.data.num_workers must be an int >= 0, got {num_workers!r}")
    infinite = train if infinite is None else infinite
    return DataStream(
        dataset, batch_size=batch_size or _per_rank_batch_size(config, split, world_size),
        seed=_field(config, "seed", 0, "config") if seed is None else seed,
        rank=rank, world_size=world_size,
        shuffle=(train or infinite) if shuffle is None else shuffle, drop_last=train,
        infinite=infinite, random_flip=images and train and bool(_field(config.data, "random_flip", False)),
        uniform_dequantization=images and bool(_field(config.data, "uniform_dequantization", False)),
        num_workers=num_workers, device=device, start_step=start_step, stream_id=SPLITS.index(split),
        raw=raw)


def get_data_iterators(config, *, rank: int = 0, world_size: int = 1, start_step: int = 0,
                       eval_start_step: int = 0, device=None) -> Tuple[DataStream, DataStream]:
    """``(train, eval)`` streams, both infinite and shuffled (the eval one for periodic eval losses;
    for one ordered pass over the test split use ``get_dataloader(config, 'test')``)."""
    train = get_dataloader(config, "train", rank=rank, world_size=world_size,
                           start_step=start_step, device=device)
    evaluation = get_dataloader(config, "test", rank=rank, world_size=world_size, infinite=True,
                                start_step=eval_start_step, device=device)
    return train, evaluation


# ----------------------------------------------------------------------------- scalers

def identity(x):
    return x


def center(x):
    """``[0, 1] -> [-1, 1]``: ``2 x - 1``."""
    return x * 2.0 - 1.0


def uncenter(x):
    """``[-1, 1] -> [0, 1]``: ``(x + 1) / 2``."""
    return (x + 1.0) / 2.0


def _is_centered(config) -> bool:
    return bool(_field(config.data, "centered", False)) and _field(config.data, "dataset") != "TOY"


def get_data_scaler(config):
    """:func:`center` if ``config.data.centered`` (not for ``TOY`` points), else :func:`identity`."""
    return center if _is_centered(config) else identity


def get_data_inverse_scaler(config):
    """The inverse of :func:`get_data_scaler`."""
    return uncenter if _is_centered(config) else identity
