"""Sampler overhead on a batch of 64 images 3x32x32 (VP SDE).

For each sampler: wall time, NFE, and the overhead ratio ``wall / (nfe x one score call)`` measured in the same
run, with (a) the small conv score network of ``benchmarks/common.py`` and (b) the closed-form Gaussian score
(``analytic.Gaussian.diagonal``), where the solver's own cost is what is measured (reported as ms per call).

    python benchmarks/sampling.py [--quick] [--threads 1] [--repeats 3]
"""
import argparse
import platform

import torch

from common import IMAGE_SHAPE, markdown_table, median_time, small_conv_score, time_score_call

from scoresde import analytic, sde_lib
from scoresde.sampling import get_sampler

PC_CONFIGS = {"pc (reverse_diffusion + langevin)": dict(predictor="reverse_diffusion", corrector="langevin"),
              "pc (euler_maruyama + none)": dict(predictor="euler_maruyama", corrector="none")}


def gaussian_score(sde):
    """Closed-form score of ``N(0.1, 0.5^2 I)`` data on ``3x32x32``."""
    event = IMAGE_SHAPE[1:]
    return analytic.Gaussian.diagonal(torch.full(event, 0.1), torch.full(event, 0.5)).score_fn(sde)


def measure(name, sampler, score_fn, call_time, repeats, warmup):
    result = {}

    def run():
        result["x"], result["nfe"] = sampler(score_fn, generator=torch.Generator().manual_seed(0))

    wall = median_time(run, repeats=repeats, warmup=warmup)
    nfe = result["nfe"]
    per_call = wall / nfe
    return [name, nfe, f"{wall:.2f}", f"{call_time * 1e3:.3f}", f"{per_call * 1e3:.3f}",
            f"{(per_call - call_time) * 1e3:.3f}", f"{per_call / call_time:.3f}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=100 for pc and one repeat (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    N = 100 if args.quick else 1000
    sde = sde_lib.VPSDE(N=N)

    x = torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    t = torch.full((IMAGE_SHAPE[0],), 0.5)
    net = small_conv_score()
    scores = {"conv net": net, "Gaussian": gaussian_score(sde)}
    rows = []
    for score_name, score_fn in scores.items():
        call_time = time_score_call(score_fn, x, t, repeats=30)
        samplers = {f"{label}, N={N}": get_sampler("pc", sde=sde, shape=IMAGE_SHAPE, **options)
                    for label, options in PC_CONFIGS.items()}
        samplers["ode (RK45, rtol=atol=1e-5)"] = get_sampler("ode", sde=sde, shape=IMAGE_SHAPE)
        for name, sampler in samplers.items():
            # the network is already warm from time_score_call; the Gaussian rows are cheap enough to warm up
            warmup = 0 if score_name == "conv net" else 1
            rows.append([score_name] + measure(name, sampler, score_fn, call_time, repeats, warmup))

    print(f"VP SDE, batch {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]}x{IMAGE_SHAPE[3]}, float32, "
          f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"median of {repeats}\n")
    print(markdown_table(["score", "sampler", "NFE", "wall s", "one score call ms", "ms per NFE",
                          "solver ms per NFE", "wall / (NFE x call)"], rows))
    print("\nsolver ms per NFE = ms per NFE - one score call: the sampler's own cost per score evaluation")


if __name__ == "__main__":
    main()
