"""Conditional samplers against exact posteriors (``scoresde.guidance.problems``): error and cost per method.

Problems (every row observes the same ``y``; exact scores from ``scoresde.analytic``, VP SDE, float64):

(G) a correlated Gaussian prior in 4-D with two noisy random linear measurements (noise 0.1): error is the
    standardised error of the mean, ``sqrt(B) |L^{-1} (mean(x) - m)|`` (about 1.9 for exact draws, 99% below
    3.6), and the worst per-coordinate variance ratio;
(M) the issue's mixture: 8-D, two unit-variance Gaussians at +-1, coordinates 0-3 observed at 0.1 with noise 0.1:
    the mean of the unobserved coordinates against the exact 0.3766, in standard errors.

Methods: replacement (``pc``, Euler-Maruyama, 200 steps; with a Langevin corrector), DPS and Pi-GDM guidance with
the same ``pc`` sampler, and ``smc`` with K = 1, 4, 16, 64 particles (N = 400 steps for G, 100 for M). NFE counts
score calls; an ``smc`` call scores ``B K`` rows and back-propagates through them, so "rows x NFE" is the work.

Run: ``python benchmarks/guidance.py`` (``--quick``: B = 500, K up to 16).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402  (also puts the repository on sys.path)

from scoresde import guidance, sde_lib  # noqa: E402
from scoresde.guidance.problems import gaussian_linear_problem, mixture_inpainting_problem  # noqa: E402
from scoresde.sampling import get_sampler  # noqa: E402

F64 = torch.float64


def methods(sde, score_fn, obs, batch, dim, smc_steps, particles):
    """``(name, sampler, score_fn, observation)`` for every method compared."""
    def pc(corrector="none"):
        return get_sampler("pc", sde=sde, shape=(batch, dim), dtype=F64, predictor="euler_maruyama",
                           corrector=corrector, N=200)
    rows = [("replacement", pc(), score_fn, obs, 1),
            ("replacement + langevin", pc("langevin"), score_fn, obs, 1),
            ("dps (scale 0.3)", pc(), guidance.posterior_guidance(score_fn, sde, obs, "dps", scale=0.3), None, 1),
            ("dps (scale 1)", pc(), guidance.posterior_guidance(score_fn, sde, obs, "dps"), None, 1),
            ("pigdm", pc(), guidance.posterior_guidance(score_fn, sde, obs, "pigdm"), None, 1)]
    for K in particles:
        rows.append((f"smc K={K}", get_sampler("smc", sde=sde, shape=(batch, dim), dtype=F64, particles=K,
                                               N=smc_steps), score_fn, obs, K))
    return rows


def run(problem_name, batch, particles, seed=0):
    sde = sde_lib.VPSDE()
    if problem_name == "G":
        problem = gaussian_linear_problem(batch)
        dim, steps = 4, 400
    else:
        problem = mixture_inpainting_problem(batch)
        dim, steps = 8, 100
    score_fn = problem.prior.score_fn(sde)
    table = []
    for name, sampler, fn, obs, K in methods(sde, score_fn, problem.observation, batch, dim, steps, particles):
        start = time.perf_counter()
        x, nfe = sampler(fn, generator=torch.Generator().manual_seed(seed), observation=obs)
        seconds = time.perf_counter() - start
        if not torch.isfinite(x).all() or x.abs().max() > 1e6:
            error = "diverged"
        elif problem_name == "G":
            ratio = problem.variance_ratio(x)
            worst = ratio[(ratio - 1).abs().argmax()].item()
            error = f"{problem.standardised_error(x):.1f} / {worst:.2f}"
        else:
            mean, se = problem.estimate(x)
            error = f"{mean:.3f} ({(mean - problem.unknown_mean) / se:+.1f} se)"
        table.append([name, nfe, batch * K, f"{seconds:.1f}", error])
        print(f"{problem_name} {name}: {error}, {seconds:.1f} s", file=sys.stderr)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, particles = (500, (1, 4, 16)) if args.quick else (2000, (1, 4, 16, 64))
    print(f"B = {batch} rows, {args.threads} thread(s), torch {torch.__version__}\n")
    g = run("G", batch, particles)
    print("(G) Gaussian prior, linear measurements: standardised error of the mean (exact draws: ~1.9) / worst "
          "variance ratio")
    print(markdown_table(["method", "NFE", "rows per call", "seconds", "error / variance ratio"], g))
    m = run("M", batch, particles)
    print(f"\n(M) mixture, 4 of 8 coordinates observed: mean of the unobserved ones (exact "
          f"{mixture_inpainting_problem(1).unknown_mean:.4f})")
    print(markdown_table(["method", "NFE", "rows per call", "seconds", "mean (error in standard errors)"], m))


if __name__ == "__main__":
    main()
