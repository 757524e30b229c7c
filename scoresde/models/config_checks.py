"""Reading and checking the config fields that build a network.

Every failure is a ``ValueError`` (or ``TypeError``) whose message names the field, e.g.
``config.model.resblock_type = 'resnet' is not one of ['biggan', 'ddpm']``.
"""
from typing import Any, Iterable, List, NamedTuple, Sequence

_REQUIRED = object()


def field(config, path: str, default: Any = _REQUIRED) -> Any:
    """``config.<path>`` (dotted, e.g. ``'model.nf'``), or ``default`` when it is absent."""
    node = config
    for part in path.split("."):
        try:
            node = node[part] if hasattr(node, "__getitem__") and not isinstance(node, str) else getattr(node, part)
        except (KeyError, AttributeError):
            if default is _REQUIRED:
                raise ValueError(f"config.{path} is required but missing") from None
            return default
    return node


def choice(config, path: str, allowed: Sequence[str], default: Any = _REQUIRED) -> str:
    """A string option, lower-cased, checked against ``allowed``."""
    value = field(config, path, default)
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"config.{path} = {value!r} is not one of {sorted(allowed)}")
    return value.lower()


def positive_int(config, path: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
    value = field(config, path, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config.{path} = {value!r} must be an integer >= {minimum}")
    return value


def positive_float(config, path: str, default: Any = _REQUIRED) -> float:
    value = field(config, path, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"config.{path} = {value!r} must be a positive number")
    return float(value)


def int_tuple(config, path: str, default: Any = _REQUIRED, allow_empty: bool = True) -> List[int]:
    value = field(config, path, default)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"config.{path} = {value!r} must be a sequence of positive integers")
    value = list(value)
    if (not value and not allow_empty) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"config.{path} = {value!r} must be a "
                         f"{'' if allow_empty else 'non-empty '}sequence of positive integers")
    return value


def num_classes(config) -> int:
    """``config.model.num_classes``: 0 / None / absent means unconditional."""
    value = field(config, "model.num_classes", None)
    if value is None or value == 0:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.model.num_classes = {value!r} must be a positive integer, 0 or None")
    return value


def resolution_pyramid(config, num_resolutions: int) -> List[int]:
    """``[image_size, image_size/2, ...]`` with ``num_resolutions`` levels; checks divisibility."""
    image_size = positive_int(config, "data.image_size")
    factor = 2 ** (num_resolutions - 1)
    if image_size % factor:
        raise ValueError(
            f"config.data.image_size = {image_size} cannot be halved {num_resolutions - 1} times "
            f"(config.model.ch_mult has {num_resolutions} levels): it must be a multiple of {factor}")
    return [image_size // 2 ** i for i in range(num_resolutions)]


def attn_resolutions(config, pyramid: Sequence[int]) -> List[int]:
    res = int_tuple(config, "model.attn_resolutions")
    bad = [r for r in res if r not in pyramid]
    if bad:
        raise ValueError(f"config.model.attn_resolutions = {tuple(res)} has {bad} not in the "
                         f"resolution pyramid {list(pyramid)} of this image size and ch_mult")
    return res


def check_num_scales(config) -> int:
    return positive_int(config, "model.num_scales")


class UNetFields(NamedTuple):
    """The fields every U-Net here (NCSN++/DDPM++, DDPM) reads the same way."""
    nf: int
    ch_mult: List[int]
    num_res_blocks: int
    num_resolutions: int
    attn_levels: List[int]       # pyramid levels (0 = full resolution) that carry attention
    dropout: float
    resamp_with_conv: bool


def unet_fields(config) -> UNetFields:
    """Read and check ``model.nf``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions`` (against the
    resolution pyramid of ``data.image_size``), ``dropout`` and ``resamp_with_conv``."""
    nf = positive_int(config, "model.nf")
    ch_mult = int_tuple(config, "model.ch_mult", allow_empty=False)
    num_res_blocks = positive_int(config, "model.num_res_blocks")
    pyramid = resolution_pyramid(config, len(ch_mult))
    attn = attn_resolutions(config, pyramid)
    dropout = float(field(config, "model.dropout"))
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"config.model.dropout = {dropout} must be in [0, 1)")
    return UNetFields(nf, ch_mult, num_res_blocks, len(ch_mult),
                      [i for i, r in enumerate(pyramid) if r in attn], dropout,
                      bool(field(config, "model.resamp_with_conv")))
