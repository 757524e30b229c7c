"""Training throughput (images/s) of a config's full training step on this machine.

The step is ``run_lib.train_step`` itself (loss, backward, warm-up, clipping, Adam, EMA), fed
synthetic images in [0, 1] so that no dataset is needed; the median over ``--steps`` timed steps
after ``--warmup`` untimed ones.

    python benchmarks/training.py                       # DDPM++ continuous (configs/vp/cifar10.py), batch 8
    python benchmarks/training.py --batch-size 8 --mixed-precision bf16 --threads 2
"""
import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import run_lib  # noqa: E402
from scoresde import precision  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="vp.cifar10", help="module under configs/ (default: vp.cifar10)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--mixed-precision", default="no", choices=precision.SETTINGS)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="", help="'' = CUDA if available, else CPU")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = importlib.import_module(f"configs.{args.config}").get_config()
    config.training.batch_size = args.batch_size
    config.training.mixed_precision = args.mixed_precision
    config.device = args.device
    run = run_lib.setup(config, "/tmp/scoresde-benchmark-unused")
    loss_fn = run_lib.make_loss_fn(run, train=True)
    shape = (args.batch_size, config.data.num_channels, config.data.image_size, config.data.image_size)
    data = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.warmup + args.steps):
        batch = (torch.rand(shape, generator=data), torch.zeros(args.batch_size, dtype=torch.long))
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run_lib.train_step(run, run.model, loss_fn, batch, step)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    params = sum(p.numel() for p in run.model.parameters())
    print("| config | params | device | threads | batch | precision | step (s, median) | images/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.config} | {params:,} | {run.device} | {torch.get_num_threads()} | {args.batch_size} | "
          f"{args.mixed_precision} | {median:.3f} | {args.batch_size / median:.1f} |")


if __name__ == "__main__":
    main()
