"""Which autocast a run uses: ``training.mixed_precision`` is ``"auto"`` (the default), ``"no"`` (fp32),
``"bf16"`` or ``"fp16"`` (GPU only, with a GradScaler). The autocast covers the training step, the eval loss
and sampling; bits/dim are always computed in fp32.

``"auto"`` takes bf16 autocast on a CPU that computes bf16 natively, and fp32 everywhere else:

- x86 with AVX512-BF16 or AMX, or ARM with its bf16 instructions, where PyTorch sends bf16 convolutions and
  matrix products to oneDNN (``torch.ops.mkldnn._is_mkldnn_bf16_supported``);
- not a CPU without them: there PyTorch computes a bf16 convolution with its reference kernel
  (``aten::_slow_conv2d``), which made the digits network's training step 12-13x slower and the CIFAR-10
  network's convolutions 60-75x slower on an AVX2 EPYC (``benchmarks/precision.py``);
- not a GPU: the paper's results are fp32, and a GPU run asks for ``"bf16"`` or ``"fp16"`` by name.

Rank 0 decides for all ranks of a run (``run_lib.setup``); the decision is logged and recorded with the samples.

bf16 is safe for quality where it is taken: ``configs/edm/digits.py`` trained under bf16 autocast scored as the
fp32 runs do (``benchmarks/first_run.py``: digit IS 6.38 and 65.6% confident samples against 6.36 ± 0.14 and
65.7% ± 2.0% for fp32 at three seeds; README, "First run").
"""
import platform
from typing import Optional

import torch

MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SETTINGS = ("auto", *MIXED_PRECISION)

_X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 convolutions and matrix products in hardware through oneDNN: AVX512-BF16
    or AMX on x86; on ARM, what oneDNN reports (it checks the bf16 instructions there). ``False`` where this
    PyTorch build cannot tell."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        if platform.machine().lower() in _X86:
            # oneDNN also reports bf16 on AVX512 CPUs without the bf16 instructions (it emulates them)
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return True
    except (AttributeError, RuntimeError):
        return False


def resolve(setting: str, device) -> str:
    """The precision a run on ``device`` uses for ``training.mixed_precision = setting``: ``"auto"`` becomes
    ``"bf16"`` on a CPU with native bf16 (:func:`cpu_has_native_bf16`) and ``"no"`` elsewhere; any other
    setting is itself."""
    if setting not in SETTINGS:
        raise ValueError(f"training.mixed_precision = {setting!r}: must be one of {list(SETTINGS)}")
    if setting != "auto":
        return setting
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "no"


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a resolved precision (``None``: fp32, no autocast)."""
    return MIXED_PRECISION[precision]


__all__ = ["MIXED_PRECISION", "SETTINGS", "cpu_has_native_bf16", "resolve", "autocast_dtype"]
