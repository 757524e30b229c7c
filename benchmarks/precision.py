"""bf16 autocast against fp32 for the convolutions of the digits and CIFAR-10 networks on this CPU, and what
``training.mixed_precision = "auto"`` decides here (``scoresde.precision``).

A 3x3 convolution (forward) at each shape, the two precisions interleaved, median and min of ``--repeats``
after one warm-up call; the ratio is bf16 time / fp32 time. On a CPU without native bf16 PyTorch computes a
bf16 convolution with its reference kernel (``aten::_slow_conv2d``) instead of oneDNN, which is what "auto"
avoids.

    python benchmarks/precision.py --threads 1 --repeats 3
"""
import argparse
import os
import statistics
import time

import torch

from common import markdown_table  # also puts the repository on sys.path

from scoresde import precision  # noqa: E402

# (batch, channels, side): the digits network's first two resolutions at its training batch of 32
# (configs/edm/digits.py: 32 channels at 8x8, 64 at 4x4), and the CIFAR-10 network's first two at batch 8
# (configs/vp/cifar10.py: 128 channels at 32x32, 256 at 16x16)
SHAPES = {"digits 8x8, 32 ch, batch 32": (32, 32, 8), "digits 4x4, 64 ch, batch 32": (32, 64, 4),
          "CIFAR-10 32x32, 128 ch, batch 8": (8, 128, 32), "CIFAR-10 16x16, 256 ch, batch 8": (8, 256, 16)}


def _time(conv, x, bf16: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        conv(x)
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, (batch, channels, side) in SHAPES.items():
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        x = torch.randn(batch, channels, side, side)
        times = {False: [], True: []}
        for bf16 in (False, True):
            _time(conv, x, bf16)  # warm-up
        for _ in range(args.repeats):
            for bf16 in (False, True):
                times[bf16].append(_time(conv, x, bf16))
        flops = 2 * batch * channels * channels * 9 * side * side
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        rows.append([name, f"{1e3 * fp32:.1f} / {1e3 * min(times[False]):.1f}",
                     f"{1e3 * bf16:.1f} / {1e3 * min(times[True]):.1f}", f"{bf16 / fp32:.1f}x",
                     f"{flops / fp32 / 1e9:.1f} / {flops / bf16 / 1e9:.1f}"])
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; oneDNN bf16: "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}; native bf16 (scoresde.precision): "
          f"{precision.cpu_has_native_bf16()}; mixed_precision='auto' here: {precision.resolve('auto', 'cpu')}; "
          f"threads {args.threads}; load {os.getloadavg()[0]:.1f}\n")
    print(markdown_table(["3x3 convolution, forward", "fp32 ms (median / min)", "bf16 ms (median / min)",
                          "bf16 / fp32", "GFLOP/s fp32 / bf16"], rows))


if __name__ == "__main__":
    main()
