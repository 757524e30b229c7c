"""Checksummed, atomic downloads and archive extraction (urllib + tarfile/zipfile only)."""
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from typing import Optional

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"

_CHUNK = 1 << 20


def file_digest(path: str, algorithm: str) -> str:
    """Hex digest (``'md5'`` or ``'sha256'``) of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected_digest(md5: Optional[str], sha256: Optional[str]):
    if md5 is not None and sha256 is not None:
        raise ValueError("give at most one of md5 and sha256")
    if md5 is not None:
        return "md5", md5.lower()
    if sha256 is not None:
        return "sha256", sha256.lower()
    return None, None


def download_url(url: str, path: str, *, md5: Optional[str] = None, sha256: Optional[str] = None,
                 timeout: float = 60.0) -> str:
    """Download ``url`` to the file ``path`` and return ``path``.

    The bytes go to a temporary file next to ``path`` and are renamed onto it only once the
    checksum (``md5`` or ``sha256``, hex) matches, so an interrupted or corrupt download never
    leaves a file at ``path``. An existing ``path`` with the right checksum is kept as is.
    Raises ``ValueError`` on a checksum mismatch (nothing is left behind).
    """
    algorithm, expected = _expected_digest(md5, sha256)
    if os.path.isfile(path) and (algorithm is None or file_digest(path, algorithm) == expected):
        return path
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".part")
    try:
        h = hashlib.new(algorithm) if algorithm else None
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                if h is not None:
                    h.update(chunk)
        if h is not None and h.hexdigest() != expected:
            raise ValueError(f"checksum mismatch for {url}: expected {algorithm} {expected}, "
                             f"got {h.hexdigest()}; the download was discarded")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def extract_archive(archive: str, folder: str) -> None:
    """Extract a ``.tar(.gz)`` or ``.zip`` into ``folder``.

    Members are unpacked into a temporary folder inside ``folder`` and each top-level entry is then
    renamed into place, so a half-extracted tree never appears under its final name. Tar members
    that would land outside ``folder`` (absolute paths, ``..``, links) are refused.
    """
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder, prefix=".extract-")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                _extract_tar(t, tmp)
        else:
            raise ValueError(f"archive {archive!r} is neither a tar nor a zip file")
        for name in os.listdir(tmp):
            target = os.path.join(folder, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(tmp, name), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_tar(archive: tarfile.TarFile, folder: str) -> None:
    if hasattr(tarfile, "data_filter"):     # Python >= 3.11.4 / 3.10.12 / 3.9.17
        archive.extractall(folder, filter="data")
        return
    base = os.path.realpath(folder)
    for member in archive.getmembers():
        target = os.path.realpath(os.path.join(folder, member.name))
        if not (member.isfile() or member.isdir()) or not target.startswith(base + os.sep):
            raise ValueError(f"refusing to extract {member.name!r}: a link, device or a path "
                             f"outside {folder!r}")
    archive.extractall(folder)


def download_cifar10(root: str, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> str:
    """Download ``cifar-10-python.tar.gz`` into ``root`` (md5-verified, atomic), extract it there and
    return the path of the extracted ``cifar-10-batches-py`` folder. ``url``/``md5`` default to the
    official archive (a mirror or a test archive can be given)."""
    archive = download_url(url, os.path.join(root, CIFAR10_ARCHIVE), md5=md5)
    extract_archive(archive, root)
    return os.path.join(root, CIFAR10_FOLDER)
