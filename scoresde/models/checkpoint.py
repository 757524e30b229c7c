"""Loading the checkpoints released with the paper's PyTorch code.

Such a file is a ``torch.save``d dict ``{'model', 'ema', 'optimizer', 'step'}``; the model keys
carry DataParallel's ``module.`` prefix; the optimizer state holds numpy float64 scalars
pickled under the numpy 1.x name ``numpy.core.multiarray.scalar``. It is read with PyTorch's
restricted (``weights_only=True``) unpickler, which admits tensors and plain containers, plus
an allow-list of numpy scalar and dtype constructors under their numpy 1.x and 2.x names:
nothing that can run code. Every mismatch with the network is an error, never ``strict=False``.
"""
import dataclasses
import os
import pickle
import struct
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from scoresde.models.factory import create_model

_PREFIX = "module."


def _numpy_safe_globals() -> List[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray
    scalar = multiarray.scalar
    allowed: List[Any] = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes as numpy.dtypes.*DType
    for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType",
                 "Int32DType", "Int64DType", "UInt8DType", "BoolDType"):
        if dtypes is not None and hasattr(dtypes, name):
            allowed.append(getattr(dtypes, name))
    return allowed


def restricted_load(path, map_location="cpu") -> Any:
    """``torch.load`` through the restricted unpickler with the numpy allow-list above.

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` when the pickle asks for anything
    else (e.g. ``os.system``) and ``ValueError`` naming the file when it is empty, truncated or not a
    PyTorch checkpoint at all."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint file {path!r} is empty (0 bytes): it was not written completely; "
                         "download or copy it again")
    unreadable = (f"checkpoint file {path!r} ({os.path.getsize(path)} bytes) is not a readable PyTorch "
                  "checkpoint: it is damaged, truncated or another kind of file; download or copy it again")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = [line for line in str(err).splitlines() if "GLOBAL" in line]
        if not refused:  # not a pickle of objects at all: random bytes or a cut-off stream
            raise ValueError(unreadable) from None
        raise ValueError(f"refused to load {path!r}: it holds objects outside the allow-list of "
                         f"tensors, containers and numpy scalars ({refused[0].strip()[:300]})") from None
    except PermissionError:
        raise
    # what torch.load raises on a cut-off or garbled file: a pickle stream ending early (EOFError, IndexError),
    # a zip archive without its directory (RuntimeError from PytorchStreamReader, OSError on seeking)
    except (EOFError, IndexError, UnicodeDecodeError, OSError, struct.error):
        raise ValueError(unreadable) from None
    except RuntimeError as err:
        if not any(word in str(err) for word in ("PytorchStreamReader", "zip archive", "corrupted", "EOF")):
            raise
        raise ValueError(unreadable) from None


@dataclasses.dataclass
class CheckpointInfo:
    """What ``load_original_checkpoint`` found besides the weights."""
    step: Optional[int]
    used_ema: bool
    ema_state: Optional[Dict]            # {'decay', 'num_updates', 'shadow_params'}
    optimizer_state: Optional[Dict]      # for resuming training: optimizer.load_state_dict(...)


def _strip_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if state and all(k.startswith(_PREFIX) for k in state):
        return {k[len(_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _fmt(names, limit=8) -> str:
    names = list(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """``ValueError`` listing missing keys, unexpected keys and shape mismatches, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_fmt(mismatched)}")
    if problems:
        raise ValueError("the checkpoint does not match the network built from the config ("
                         f"config.model.name = {type(model).__name__}); " + "; ".join(problems))


def _ema_parameters(model: nn.Module, state: Dict[str, torch.Tensor], ema: Dict) -> Dict[str, torch.Tensor]:
    """Pair the unnamed ``ema['shadow_params']`` with parameter names: the original list follows
    the original parameter order with frozen parameters left out. That order is the order of
    the parameter keys in the checkpoint's model state_dict, restricted to trainable ones."""
    if not isinstance(ema, dict) or "shadow_params" not in ema:
        raise ValueError("the checkpoint's 'ema' entry has no 'shadow_params' list")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    names = [k for k in state if k in trainable]
    shadow = list(ema["shadow_params"])
    if len(shadow) != len(names):
        raise ValueError(f"ema.shadow_params has {len(shadow)} tensors but the network has "
                         f"{len(names)} trainable parameters")
    for i, (name, tensor) in enumerate(zip(names, shadow)):
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise ValueError(f"ema.shadow_params[{i}] has shape {tuple(tensor.shape)} but parameter "
                             f"{name} has {tuple(state[name].shape)}")
    return dict(zip(names, shadow))


def load_original_checkpoint(path, config, *, use_ema: bool = True,
                             map_location="cpu") -> Tuple[nn.Module, CheckpointInfo]:
    """Build ``create_model(config)`` and load a checkpoint of the paper's PyTorch code into it.

    ``use_ema=True`` (default) loads the EMA shadow weights, the ones the paper samples with;
    ``False`` loads the raw training weights. Returns ``(model, info)`` with the model in eval
    mode on ``map_location``. Raises ``ValueError`` on any key or shape mismatch."""
    path = os.fspath(path)
    ckpt = restricted_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path!r} is not a checkpoint of the paper's code: expected a dict with "
                         f"'model' (and 'ema', 'optimizer', 'step'), got "
                         f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__}")
    if use_ema and "ema" not in ckpt:
        raise ValueError(f"{path!r} has no 'ema' entry; pass use_ema=False to load the raw weights")
    model = create_model(config)
    state = _strip_prefix(ckpt["model"])
    check_state_dict(model, state)
    if use_ema:
        state.update(_ema_parameters(model, state, ckpt["ema"]))
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    step = ckpt.get("step")
    info = CheckpointInfo(step=int(step) if step is not None else None, used_ema=use_ema,
                          ema_state=ckpt.get("ema"), optimizer_state=ckpt.get("optimizer"))
    return model, info
