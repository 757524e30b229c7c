"""Image readers without TensorFlow or torchvision: CIFAR-10 pickles, MNIST idx files, the
scikit-learn digits, and folders of image files.

Every reader gives ``uint8`` pixels in ``[C, H, W]`` layout. Small data sets live in memory as
one ``uint8`` tensor (:class:`TensorImageDataset`); large ones are decoded per image with PIL
(:class:`ImageFileDataset`). Items are ``(x, y)`` with ``x`` float32 ``[C, H, W]`` in ``[0, 1]``;
loaders call :meth:`ImageDataset.get_batch` instead, which stays ``uint8`` so that the conversion to
float happens once per batch.
"""
import abc
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .download import CIFAR10_ARCHIVE, CIFAR10_FOLDER

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
Batch = Tuple[Tensor, Tensor]


# ----------------------------------------------------------------------------- datasets

class ImageDataset(Dataset, abc.ABC):
    """Base class: items ``(x float32 [C,H,W] in [0,1], label int)``; subclasses give ``load_uint8``."""

    @abc.abstractmethod
    def load_uint8(self, index: int) -> Tuple[Tensor, int]:
        """``(uint8 [C, H, W], label)`` of one image."""

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        image, label = self.load_uint8(index)
        return image.float().div_(255.0), label

    def get_batch(self, indices: Sequence[int]) -> Batch:
        """``(uint8 [b, C, H, W], int64 [b])``; what the loaders fetch."""
        images, labels = zip(*(self.load_uint8(i) for i in indices))
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class TensorImageDataset(ImageDataset):
    """All images in memory as one ``uint8 [N, C, H, W]`` tensor, labels ``int64 [N]``."""

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} "
                            f"{tuple(images.shape)}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images, self.labels = images.contiguous(), labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def load_uint8(self, index: int) -> Tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def get_batch(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[index], self.labels[index]


class ImageFileDataset(ImageDataset):
    """Image files decoded with PIL on access.

    Each image is converted to grey (``num_channels=1``) or RGB (3); then, as in the paper's
    pipelines, optionally centre-cropped first (``crop_size``: an int, e.g. 140 for CelebA, or
    ``"square"`` for the largest centred square, LSUN at 256), then resized so that its shorter
    side is ``image_size`` (antialiased ``resample``: ``"bilinear"``, or ``"bicubic"``) and
    centre-cropped to ``image_size x image_size``.
    """

    def __init__(self, files: Sequence[str], labels: Optional[Sequence[int]] = None, *,
                 image_size: int, num_channels: int = 3, crop_size=None, resample: str = "bilinear",
                 class_names: Optional[List[str]] = None, check_files: bool = True):
        check_num_channels(num_channels, (1, 3))
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
        if crop_size is not None and crop_size != "square" and not isinstance(crop_size, int):
            raise ValueError(f"crop_size must be None, an int or 'square', got {crop_size!r}")
        self.files = list(files)
        self.labels = [0] * len(self.files) if labels is None else [int(y) for y in labels]
        if len(self.labels) != len(self.files):
            raise ValueError(f"got {len(self.labels)} labels for {len(self.files)} files")
        self.image_size, self.num_channels, self.crop_size = int(image_size), num_channels, crop_size
        self.resample, self.class_names = resample, class_names
        if check_files:
            check_image_files(self.files, min_size=crop_size if isinstance(crop_size, int) else 1)

    def __len__(self) -> int:
        return len(self.files)

    def load_uint8(self, index: int) -> Tuple[Tensor, int]:
        try:
            return self._load_uint8(index)
        except (OSError, SyntaxError, ValueError) as e:  # PIL's decode errors
            raise ValueError(f"cannot read the image {self.files[index]} ({type(e).__name__}: {e}); "
                             f"delete or replace it") from e

    def _load_uint8(self, index: int) -> Tuple[Tensor, int]:
        with Image.open(self.files[index]) as img:
            img = img.convert("L" if self.num_channels == 1 else "RGB")
            if self.crop_size is not None:
                square = min(img.width, img.height) if self.crop_size == "square" else self.crop_size
                img = center_crop(img, square)
            img = resize_center_crop(img, self.image_size, self.resample)
            array = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, -1)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), self.labels[index]


def _checked_images_record(files: Sequence[str], min_size: int) -> Optional[str]:
    """Where a passed check of exactly these files (paths, sizes, modification times) is recorded:
    ``$XDG_CACHE_HOME/scoresde/checked_images/<sha256>`` (default ``~/.cache``); ``None`` if a file
    cannot be stat'ed (the check then reports it)."""
    h = hashlib.sha256(f"min_size={min_size}\n".encode())
    try:
        for path in files:
            st = os.stat(path)
            h.update(f"{os.path.abspath(path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    except OSError:
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "scoresde", "checked_images", h.hexdigest())


def check_image_files(files: Sequence[str], min_size: int = 1, cache: bool = True) -> None:
    """Open every file and check its data (``PIL.Image.verify``: the header, and for PNG every chunk's
    CRC, so garbage, empty, non-image and truncated PNG files are found) and that it is at least
    ``min_size`` pixels on its shorter side. A bad file is a ``ValueError`` naming it, raised when the
    data set is built rather than mid-training. (A truncated JPEG passes ``verify`` and is reported,
    with its name, when it is decoded.) With ``cache``, a passed check is recorded (see
    :func:`_checked_images_record`), so an unchanged set of files is checked once, not at every start."""
    record = _checked_images_record(files, min_size) if cache else None
    if record is not None and os.path.isfile(record):
        return
    _check_each_image(files, min_size)
    if record is not None:
        try:
            os.makedirs(os.path.dirname(record), exist_ok=True)
            open(record, "w").close()
        except OSError:  # no writable cache: checked again next time
            pass


def _check_each_image(files: Sequence[str], min_size: int) -> None:
    for path in files:
        try:
            with Image.open(path) as img:
                size = img.size
                img.verify()
        except Exception as e:  # noqa: BLE001  (PIL raises OSError, SyntaxError, struct.error, ...)
            raise ValueError(f"{path} is not a readable image ({type(e).__name__}: {e}); delete or replace "
                             f"it ({len(files)} image files in the data set)") from e
        if min(size) < min_size:
            raise ValueError(f"{path} is {size[0]}x{size[1]}, smaller than the {min_size}x{min_size} centre "
                             f"crop of this data set; delete or replace it")


# ----------------------------------------------------------------------------- PIL transforms

def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The centred ``size x size`` window: box offsets ``((W - size) // 2, (H - size) // 2)``.
    For CelebA's 178x218 images and ``size=140`` that is the paper's box (19, 39, 159, 179)."""
    if img.width < size or img.height < size:
        raise ValueError(f"cannot crop {size}x{size} from an image of {img.width}x{img.height}")
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize_center_crop(img: Image.Image, size: int, resample: str = "bilinear") -> Image.Image:
    """Resize so the shorter side is ``size`` (PIL's filters antialias when shrinking), then take
    the centred square: the paper's ``resize_small`` + ``central_crop``."""
    if img.width != size or img.height != size:
        scale = size / min(img.width, img.height)
        shape = (max(size, round(img.width * scale)), max(size, round(img.height * scale)))
        img = img.resize(shape, _RESAMPLE[resample])
    return center_crop(img, size) if img.width != img.height else img


# ----------------------------------------------------------------------------- tensor transforms

def check_num_channels(num_channels: int, allowed: Sequence[int], name: str = "data.num_channels"):
    if num_channels not in allowed:
        raise ValueError(f"{name}={num_channels!r} is not supported here; allowed: {list(allowed)}")


def match_channels(images: Tensor, num_channels: int) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, num_channels, H, W]``: grey images are repeated to 3 channels."""
    c = images.shape[1]
    if c == num_channels:
        return images
    if c == 1 and num_channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise ValueError(f"data.num_channels={num_channels} but the images have {c} channel(s)")


def resize_uint8(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Antialiased bilinear resize of ``uint8 [N, C, H, W]`` to ``[N, C, size, size]``."""
    if images.shape[-2:] == (size, size):
        return images
    out = [F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
           for part in images.split(chunk)]
    return torch.cat(out)


def pad_to_size(images: Tensor, size: int) -> Tensor:
    """Fit small square ``uint8 [N, C, h, h]`` images to ``size``: nearest-neighbour upsampling by
    the integer factor ``k = size // h`` (each pixel becomes a ``k x k`` block, so pixel values stay
    exact), then zero-padding (centred) up to ``size``. ``size < h`` falls back to
    :func:`resize_uint8`. E.g. digits 8 -> 32 is ``k=4``; MNIST 28 -> 32 is ``k=1`` plus 2 pixels
    of padding on each side."""
    h = images.shape[-1]
    if size < h:
        return resize_uint8(images, size)
    k = size // h
    images = images.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    before = (size - k * h) // 2
    after = size - k * h - before
    return F.pad(images, (before, after, before, after))


# ----------------------------------------------------------------------------- CIFAR-10

class _RefusedPickle(pickle.UnpicklingError):
    """A CIFAR batch that names a class outside the allowed set (tampered, not merely damaged)."""


class _CIFARUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batches contain (dicts, lists, bytes and numpy arrays), so a
    tampered file cannot run code."""
    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise _RefusedPickle(f"CIFAR batch refers to {module}.{name}, which is not allowed")
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _unpickle_cifar_batch(blob: bytes, name: str) -> Tuple[np.ndarray, np.ndarray]:
    try:
        d = _CIFARUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except _RefusedPickle:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError) as e:  # what a damaged pickle raises
        raise ValueError(f"CIFAR batch {name!r} is not a readable pickle ({type(e).__name__}: {e})") from e
    data = d.get(b"data", d.get("data")) if isinstance(d, dict) else None
    labels = d.get(b"labels", d.get("labels")) if isinstance(d, dict) else None
    if data is None or labels is None:
        raise ValueError(f"CIFAR batch {name!r} has no 'data'/'labels' entries")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(labels):
        raise ValueError(f"CIFAR batch {name!r}: data of shape {data.shape} with {len(labels)} "
                         f"labels; expected [N, 3072]")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def find_cifar10(root: str) -> Optional[str]:
    """The ``cifar-10-batches-py`` folder or the archive under ``root`` (``root`` may itself be
    either), or ``None``."""
    for candidate in (root, os.path.join(root, CIFAR10_FOLDER)):
        if os.path.isfile(os.path.join(candidate, "test_batch")):
            return candidate
    for candidate in (root, os.path.join(root, CIFAR10_ARCHIVE)):
        if os.path.isfile(candidate):
            return candidate
    return None


def cifar10_batch_names(split: str) -> List[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]


def _read_cifar_blobs(source: str, names: Sequence[str]) -> Dict[str, bytes]:
    if os.path.isdir(source):
        blobs = {}
        for name in names:
            with open(os.path.join(source, name), "rb") as f:
                blobs[name] = f.read()
        return blobs
    blobs = {}
    with tarfile.open(source) as archive:   # one sequential pass over the gzip stream
        for member in archive:
            base = os.path.basename(member.name)
            if member.isfile() and base in names:
                blobs[base] = archive.extractfile(member).read()
    missing = sorted(set(names) - set(blobs))
    if missing:
        raise ValueError(f"CIFAR-10 archive {source!r} lacks {missing}")
    return blobs


def read_cifar10(source: str, split: str) -> Tuple[Tensor, Tensor]:
    """Read the pickled CIFAR-10 batches (``data_batch_1..5`` for train, ``test_batch`` for test)
    from the extracted folder or the ``.tar.gz`` itself: ``uint8 [N, 3, 32, 32]``, ``int64 [N]``.
    Each row of ``b'data'`` is 1024 red, then 1024 green, then 1024 blue values, row-major.
    A damaged archive or batch file is a ``ValueError`` that names it and says to delete it."""
    names = cifar10_batch_names(split)
    folder = os.path.isdir(source)
    what = (f"delete the folder {source} and extract the archive again (or set data.download=True)" if folder
            else f"delete {source} and download it again (data.download=True)")
    try:
        blobs = _read_cifar_blobs(source, names)
        parts = [_unpickle_cifar_batch(blobs[n], n) for n in names]
    except _RefusedPickle:
        raise
    except (tarfile.TarError, EOFError, zlib.error, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f"corrupt CIFAR-10 {'batch folder' if folder else 'archive'} {source}: {e}; {what}") from e
    except OSError as e:
        if isinstance(e, FileNotFoundError) and folder:
            raise FileNotFoundError(f"CIFAR-10 folder {source} lacks {os.path.basename(e.filename)}; {what}") from e
        if isinstance(e, gzip.BadGzipFile) or (not folder and e.errno is None):
            raise ValueError(f"corrupt CIFAR-10 archive {source}: {e}; {what}") from e
        raise
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


# ----------------------------------------------------------------------------- MNIST (idx files)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (``.gz`` or raw): magic ``0 0 <type> <ndim>``, then ``ndim`` big-endian
    uint32 sizes, then the values. A damaged file is a ``ValueError`` naming it and saying to delete it."""
    advice = "; delete it and download it again"
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a truncated or damaged .gz
        raise ValueError(f"corrupt archive {path!r} ({type(e).__name__}: {e}){advice}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path!r} is not an idx file (bad magic number){advice}")
    ndim = raw[3]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path!r} is truncated inside its header{advice}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    count = int(np.prod(dims))
    if len(raw) != 4 + 4 * ndim + count * dtype.itemsize:
        raise ValueError(f"{path!r}: size does not match its header dims {dims} (truncated?){advice}")
    return np.frombuffer(raw, dtype, count=count, offset=4 + 4 * ndim).reshape(dims)


MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def mnist_search_dirs(root: str) -> List[str]:
    return [root, os.path.join(root, "MNIST", "raw"), os.path.join(root, "MNIST"),
            os.path.join(root, "mnist")]


def find_file(dirs: Sequence[str], name: str) -> Optional[str]:
    """``name`` or ``name.gz`` in the first of ``dirs`` that has it."""
    for folder in dirs:
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def read_mnist(images_path: str, labels_path: str) -> Tuple[Tensor, Tensor]:
    """``uint8 [N, 1, 28, 28]`` and ``int64 [N]`` from a pair of idx files."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(f"{images_path!r} / {labels_path!r}: expected uint8 [N, H, W] images and "
                         f"[N] labels, got {images.shape} and {labels.shape}")
    return (torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)))


# ----------------------------------------------------------------------------- scikit-learn digits

DIGITS_NUM_TEST = 297   # 1797 images: 1500 train, 297 test


def read_digits(split: str) -> Tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 handwritten digits as ``uint8 [N, 1, 8, 8]`` (grey levels ``0..16``
    scaled by ``255 / 16`` and rounded), with a fixed split: a permutation drawn with seed 0
    (independent of the run's seed) puts 297 images in test and 1500 in train."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the DIGITS data set needs scikit-learn: pip install scikit-learn "
                          "(or the 'digits' extra of scoresde)") from e
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    index = np.sort(order[DIGITS_NUM_TEST:] if split == "train" else order[:DIGITS_NUM_TEST])
    return torch.from_numpy(images[index]), torch.from_numpy(digits.target[index].astype(np.int64))


# ----------------------------------------------------------------------------- folders of images

def find_images(folder: str) -> List[str]:
    """Every ``.png``/``.jpg``/``.jpeg``/``.webp`` file under ``folder`` (recursive, any case),
    sorted by path relative to ``folder``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    return sorted(found, key=lambda p: os.path.relpath(p, folder))


def labels_from_folders(folder: str, files: Sequence[str]) -> Tuple[List[int], List[str]]:
    """Class index of each file from its first sub-folder under ``folder`` (sorted names)."""
    tops = [os.path.relpath(f, folder).split(os.sep)[0] for f in files]
    loose = [f for f, top in zip(files, tops) if top == os.path.basename(f)]
    if loose:
        raise ValueError(f"labels from sub-folders were asked for, but {len(loose)} image(s) lie "
                         f"directly in {folder!r} (e.g. {loose[0]!r})")
    class_names = sorted(set(tops))
    index = {name: i for i, name in enumerate(class_names)}
    return [index[top] for top in tops], class_names
