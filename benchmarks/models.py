"""Speed and memory of the DDPM++ continuous network (``configs/vp/cifar10.py``, 61.8 M
parameters, CIFAR-10 size) on the CPU.

For each batch size and variant it reports, as the median of ``--repeats`` runs after one
warm-up run:

- forward: one ``model(x, t)`` call under ``torch.no_grad()`` in eval mode (a sampler's call);
- train step: forward + backward of the continuous DSM loss (eps-prediction, ``reduce_mean``),
  a fused Adam step and the EMA update;
- peak memory: the rise of the process's peak resident set size (``resource.getrusage``
  ``ru_maxrss``) over its value after building the model, optimizer and EMA. Every variant runs in
  a fresh subprocess, so the peaks do not mix (tracemalloc cannot see PyTorch's allocator);
- loss: the training loss at a fixed input, to compare bf16 with fp32.

Times are given as wall time and as the process's CPU time (``time.process_time``): on a shared
machine the wall time includes waiting for a core, the CPU time (with ``--threads 1``) does not.
Use ``--threads 1`` when other processes share the cores: with more threads than free cores,
OpenMP's barriers stall and a step takes many times longer. ``compile`` variants spend minutes
(tens of minutes on 2 busy cores) in the first, untimed run; Inductor caches the kernels on disk.

Variants: ``fp32`` (eager), ``bf16`` (``torch.autocast('cpu', torch.bfloat16)``),
``channels_last`` (fp32, ``torch.channels_last`` weights and inputs), ``channels_last+bf16``,
``compile`` (``torch.compile`` of the network, fp32) and ``compile+bf16``.

    python benchmarks/models.py                       # batch 8 and 64, all variants
    python benchmarks/models.py --batch-sizes 8 --repeats 3 --variants fp32 bf16
    python benchmarks/models.py --profile             # top ops of one fp32 training step
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ["fp32", "bf16", "channels_last", "channels_last+bf16", "compile", "compile+bf16"]


def median_time(fn, repeats: int, warmup: int = 1):
    """Medians of wall time and of this process's CPU time (s) over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build(variant: str, batch: int, seed: int = 0):
    """The network, Adam, EMA and a fixed batch, set up for ``variant``."""
    from configs.vp.cifar10 import get_config
    from scoresde.models import ExponentialMovingAverage, create_model

    config = get_config()
    torch.manual_seed(seed)
    model = create_model(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move off the zero-output initialisation so the loss means something
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    x0 = torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(batch, 3, 32, 32, generator=g)
    t = torch.rand(batch, generator=g) * (1 - 1e-5) + 1e-5
    if "channels_last" in variant:
        model = model.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)
        noise = noise.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, fused=True)
    ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    net = torch.compile(model) if "compile" in variant else model
    return config, model, net, optimizer, ema, (x0, noise, t)


def vp_perturb(config, x0, noise, t):
    """x_t = alpha(t) x0 + sigma(t) eps for the VP SDE, and the labels 999 t."""
    from scoresde import sde_lib
    from scoresde.utils import batch_broadcast

    sde = sde_lib.VPSDE(config.model.beta_min, config.model.beta_max, config.model.num_scales)
    mean, std = sde.marginal_prob(x0, t)
    return mean + batch_broadcast(std, noise) * noise, t * 999


def run_variant(variant: str, batch: int, repeats: int) -> dict:
    config, model, net, optimizer, ema, (x0, noise, t) = build(variant, batch)
    xt, labels = vp_perturb(config, x0, noise, t)
    use_bf16 = "bf16" in variant

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16)

    def loss_fn():
        with autocast():
            out = net(xt, labels)
        return (out.float() - noise).square().mean()

    def forward():
        with torch.no_grad(), autocast():
            net(xt, labels)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        ema.update(model.parameters())

    base = maxrss_mib()
    model.eval()
    with torch.no_grad():
        loss = loss_fn().item()
    t_fwd, cpu_fwd = median_time(forward, repeats)
    peak_fwd = maxrss_mib() - base
    model.train()
    t_step, cpu_step = median_time(train_step, repeats)
    peak_step = maxrss_mib() - base
    return dict(variant=variant, batch=batch, forward_s=t_fwd, step_s=t_step, forward_cpu_s=cpu_fwd,
                step_cpu_s=cpu_step, forward_peak_mib=peak_fwd, step_peak_mib=peak_step, loss=loss)


def profile_step(batch: int, variant: str = "fp32", rows: int = 25) -> None:
    from torch.profiler import ProfilerActivity, profile

    config, model, net, optimizer, ema, (x0, noise, t) = build(variant, batch)
    xt, labels = vp_perturb(config, x0, noise, t)
    use_bf16 = "bf16" in variant

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            out = net(xt, labels)
        (out.float() - noise).square().mean().backward()
        optimizer.step()
        ema.update(model.parameters())

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in each run (default: PyTorch's choice)")
    parser.add_argument("--profile", action="store_true", help="profile one training step and exit")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child:
        result = run_variant(args.child[0], int(args.child[1]), args.repeats)
        print("RESULT " + json.dumps(result))
        return
    if args.profile:
        profile_step(args.batch_sizes[0])
        return

    results = []
    for batch in args.batch_sizes:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--child", variant, str(batch), "--repeats", str(args.repeats)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{variant} batch {batch} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"done: {variant} batch {batch}", file=sys.stderr, flush=True)

    print(f"\nDDPM++ continuous (configs/vp/cifar10.py), torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| batch | variant | forward wall / CPU (s) | train step wall / CPU (s) | "
          "peak RSS rise fwd / step (MiB) | loss |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['batch']} | {r['variant']} | {r['forward_s']:.3f} / {r['forward_cpu_s']:.3f} | "
              f"{r['step_s']:.3f} / {r['step_cpu_s']:.3f} | "
              f"{r['forward_peak_mib']:.0f} / {r['step_peak_mib']:.0f} | {r['loss']:.5f} |")


if __name__ == "__main__":
    main()
