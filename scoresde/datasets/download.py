"""Checksummed, atomic downloads and archive extraction (urllib + tarfile/zipfile only)."""
import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
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
    if os.path.isfile(path):
        if algorithm is None:
            return path
        if algorithm == "md5":
            try:
                verify_archive(path, expected)
                return path
            except ValueError:
                pass  # damaged: downloaded again below, replacing it only once the new copy checks out
        elif file_digest(path, algorithm) == expected:
            return path
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".part")
    try:
        h = hashlib.new(algorithm) if algorithm else None
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        if h is not None:
                            h.update(chunk)
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", None) or e
                raise FileNotFoundError(
                    f"could not download {url} ({reason}); if this machine is offline, download it on "
                    f"another one and put it by hand at {path}"
                    + (f" ({algorithm} {expected})" if algorithm else "")) from e
        if h is not None and h.hexdigest() != expected:
            raise ValueError(f"checksum mismatch for {url}: expected {algorithm} {expected}, "
                             f"got {h.hexdigest()}; the download was discarded")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if algorithm == "md5":
        _write_verified(path, expected)
    return path


def _verified_key(path: str, md5: str) -> dict:
    st = os.stat(path)
    return {"md5": md5, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_verified(path: str, md5: str) -> None:
    """Record next to ``path`` (``<path>.md5``) that it matched ``md5`` at its current size and time."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".md5-")
    except OSError:  # a read-only data folder: the archive is verified again next time
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_verified_key(path, md5), f)
        os.replace(tmp, path + ".md5")
    except OSError:  # e.g. a full disk: no record, verified again next time
        if os.path.exists(tmp):
            os.remove(tmp)


def verify_archive(path: str, md5: str, *, how: str = "") -> None:
    """Check that the archive ``path`` has the md5 ``md5``; ``ValueError`` ("corrupt archive", naming the
    file and saying to delete it) if not. The result is cached in ``<path>.md5`` (with the file's size
    and modification time), so an unchanged archive is hashed once, not at every start."""
    md5 = md5.lower()
    try:
        with open(path + ".md5") as f:
            if json.load(f) == _verified_key(path, md5):
                return
    except (OSError, ValueError):
        pass
    actual = file_digest(path, "md5")
    if actual != md5:
        raise ValueError(f"corrupt archive {path}: its md5 is {actual}, expected {md5} (a truncated or damaged "
                         f"download); delete it and download it again{how}")
    _write_verified(path, md5)


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
