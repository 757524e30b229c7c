"""Throughput of Inception feature extraction (the cost of FID / KID / IS) on this machine.

    python benchmarks/metrics.py [--batch-size 50] [--repeats 3] [--device cpu] [--weights FILE]

Input: a batch of uint8 32x32 RGB images (CIFAR-10 size), resized to 299x299 in the extractor, as
in evaluation. Reports the median over repeats of images per second, for the full pipeline
(conversion, one batched resize, network) and for the resize alone. Speed does not depend on the
weights: without a weights file (none given, none found offline) a random-weight network is used.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median_time  # noqa: E402  (also puts the repository on sys.path)

from scoresde.metrics import FIDInceptionV3, InceptionFeatureExtractor  # noqa: E402
from scoresde.metrics.extractor import to_float255_nchw  # noqa: E402
from scoresde.metrics.inception import preprocess  # noqa: E402


def make_extractor(weights, device) -> InceptionFeatureExtractor:
    try:
        return InceptionFeatureExtractor(weights, device=device, download=False)
    except FileNotFoundError:
        torch.manual_seed(0)
        return InceptionFeatureExtractor(network=FIDInceptionV3(), device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    extractor = make_extractor(args.weights, args.device)
    images = torch.randint(0, 256, (args.batch_size, 32, 32, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))

    def resize_only():
        with torch.inference_mode():
            preprocess(to_float255_nchw(images, extractor.device), extractor.resize)

    cpu_start = time.process_time()
    full = median_time(lambda: extractor.features(images, batch_size=args.batch_size), repeats=args.repeats)
    # CPU seconds per batch (all threads), less sensitive than wall time to other load on shared cores
    cpu = (time.process_time() - cpu_start) / (args.repeats + 1)
    resize = median_time(resize_only, repeats=args.repeats)
    n = args.batch_size
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, weights: "
          f"{extractor.weights_source}, batch {n} of uint8 32x32 -> 299x299, median of {args.repeats}")
    print(markdown_table(["stage", "wall s / batch", "images / s (wall)", "images / CPU-s"],
                         [["resize + scale", f"{resize:.4f}", f"{n / resize:.0f}", ""],
                          ["features (resize + network)", f"{full:.2f}", f"{n / full:.1f}", f"{n / cpu:.1f}"]]))


if __name__ == "__main__":
    main()
