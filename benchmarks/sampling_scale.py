"""Sampling at scale on this machine: per-row noise overhead, and samples per second with 1 and 2 processes.

(a) Per-row noise (``seeds=``, :class:`scoresde.noise.RowNoise`) against one shared ``torch.Generator``, with
    pc (euler_maruyama + langevin, two score calls and two noise draws per step) and the small conv net of
    ``benchmarks/common.py`` on a batch of 64 images 3x32x32. The two set-ups are timed interleaved, repeat by
    repeat, alternating which goes first; the overhead is the difference of the per-step times as a share of the shared-generator step.
(b) Samples per second of the same draw (``--num`` samples, batch 64, per-row seeds) split over 1 and over 2
    torchrun processes (Gloo, one thread each), and 1 process with 2 threads: wall time from a barrier before
    the draw to a barrier after it.

    python benchmarks/sampling_scale.py [--steps 20] [--repeats 5] [--num 256]
"""
import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import IMAGE_SHAPE, markdown_table, small_conv_score

from scoresde import noise, sde_lib
from scoresde.sampling import get_sampler

WORKER = r'''
import sys, time, json, torch, torch.distributed as dist
sys.path.insert(0, {bench!r})
from common import IMAGE_SHAPE, small_conv_score
from scoresde import noise, sde_lib
from scoresde.sampling import get_sampler
torch.set_num_threads({threads})
world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
if world > 1:
    dist.init_process_group("gloo")
rank = dist.get_rank() if world > 1 else 0
conv = small_conv_score()
net = lambda x, t: conv(x, t) - x   # a restoring term keeps the untrained net's Langevin steps finite
sde = sde_lib.VPSDE()
batch = IMAGE_SHAPE[0]
batches = list(range(rank, {num} // batch, world))          # batch b holds samples b*batch .. (b+1)*batch - 1
sampler = get_sampler("pc", sde=sde, shape=IMAGE_SHAPE, predictor="euler_maruyama", corrector="langevin", N={steps})
with torch.no_grad():
    sampler(net, seeds=noise.sample_seeds(0, 0, range(batch)))   # warm-up
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for b in batches:
        sampler(net, seeds=noise.sample_seeds(0, 0, range(b * batch, (b + 1) * batch)))
    if world > 1:
        dist.barrier()
    wall = time.perf_counter() - start
if rank == 0:
    print(json.dumps({{"wall": wall}}))
if world > 1:
    dist.destroy_process_group()
'''


def per_row_overhead(steps: int, repeats: int):
    """Interleaved timings of pc with a shared generator and with per-row seeds: (shared, per_row) lists of s/step."""
    torch.set_num_threads(1)
    conv = small_conv_score()
    net = lambda x, t: conv(x, t) - x   # noqa: E731  (a restoring term keeps the untrained net's Langevin steps finite)
    sampler = get_sampler("pc", sde=sde_lib.VPSDE(), shape=IMAGE_SHAPE, predictor="euler_maruyama",
                          corrector="langevin", N=steps)
    seeds = noise.sample_seeds(0, 0, range(IMAGE_SHAPE[0]))
    runs = {"shared": lambda: sampler(net, generator=torch.Generator().manual_seed(0)),
            "per_row": lambda: sampler(net, seeds=seeds)}
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()                                   # warm-up
        for r in range(repeats):
            order = list(runs.items())
            for name, fn in (order if r % 2 == 0 else order[::-1]):  # alternate which goes first
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) / steps)
    draw = {}
    x = torch.empty(IMAGE_SHAPE)
    rows = noise.RowNoise(seeds)
    g = torch.Generator().manual_seed(0)
    for name, fn in (("shared", lambda: torch.randn(IMAGE_SHAPE, generator=g)), ("per_row", lambda: rows.randn(x.shape))):
        fn()
        start = time.perf_counter()
        for _ in range(50):
            fn()
        draw[name] = (time.perf_counter() - start) / 50
    return times, draw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples_per_second(procs: int, threads: int, steps: int, num: int) -> float:
    bench = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "worker.py"
        script.write_text(WORKER.format(bench=bench, threads=threads, steps=steps, num=num))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={procs}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall = json.loads(proc.stdout.strip().splitlines()[-1])["wall"]
    return num / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="pc steps N (two score calls each)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of (a); runs of (b)")
    parser.add_argument("--num", type=int, default=256, help="samples drawn in (b), a multiple of 64")
    args = parser.parse_args()

    times, draw = per_row_overhead(args.steps, args.repeats)
    shared, per_row = times["shared"], times["per_row"]
    diffs = [p - s for s, p in zip(shared, per_row)]
    print(f"(a) pc step (euler_maruyama + langevin), small conv net, batch {'x'.join(map(str, IMAGE_SHAPE))}, "
          f"1 thread, {args.repeats} interleaved repeats of N={args.steps}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}\n")
    print(markdown_table(["noise", "ms per step (min)", "ms per step (median)", "one noise draw ms"], [
        ["one shared generator", f"{min(shared) * 1e3:.2f}", f"{statistics.median(shared) * 1e3:.2f}",
         f"{draw['shared'] * 1e3:.3f}"],
        ["per-row seeds", f"{min(per_row) * 1e3:.2f}", f"{statistics.median(per_row) * 1e3:.2f}",
         f"{draw['per_row'] * 1e3:.3f}"]]))
    print(f"\noverhead of per-row noise: {(min(per_row) - min(shared)) / min(shared) * 100:+.1f}% (min), "
          f"{statistics.median(diffs) / statistics.median(shared) * 100:+.1f}% (median of paired differences) "
          f"of a step; noise draws alone: {2 * (draw['per_row'] - draw['shared']) / statistics.median(shared) * 100:+.1f}%"
          " of a step (two draws per step)\n")

    rows = []
    for procs, threads in ((1, 1), (2, 1), (1, 2)):
        rates = [samples_per_second(procs, threads, args.steps, args.num) for _ in range(max(1, args.repeats // 2))]
        rows.append([procs, threads, f"{max(rates):.2f}", f"{statistics.median(rates):.2f}"])
    print(f"(b) {args.num} samples, pc N={args.steps}, batch {IMAGE_SHAPE[0]}, per-row seeds, torchrun + Gloo\n")
    print(markdown_table(["processes", "threads each", "samples/s (best)", "samples/s (median)"], rows))


if __name__ == "__main__":
    main()
