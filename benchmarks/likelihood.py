"""Cost of the probability-flow likelihood per score evaluation, on a batch of 64 images 3x32x32.

For two score functions (the small convolutional network of ``common.py``, as ``1e-3 x net(x, t)`` added to the
exact score of the data so that the untrained network gives a realistic NFE; and the closed-form score of the
diagonal Gaussian data alone, where the solver's own cost is what is measured beyond the score) it reports the NFE,
the wall time of one ``get_likelihood_fn(VPSDE(), rtol=atol=1e-5, RK45, rademacher)`` call and
``wall / (nfe x time of one forward + backward)``, where forward + backward is one score call followed by
one vector-Jacobian product w.r.t. its input (the least work an NFE of the estimator needs).

For comparison in the same run, ``paper-style loop`` integrates the same ODE with the per-evaluation
structure of the paper's code (separate score calls for the drift and for the divergence, NumPy copies in
and out, BLAS left multi-threaded); it is this benchmark's re-implementation of that structure, not the paper's
code itself. Its NFE counts ODE evaluations (two score calls each).
A second table compares ``torch.autograd.grad`` with ``torch.func.vjp`` for the vector-Jacobian product.

A third table times the first likelihood call of a process against the steady state: each row runs ``--cold-runs``
fresh subprocesses (``python benchmarks/likelihood.py --first-call CASE``), each of which imports scoresde, times
its first call, then the median of 5 more, and last the import of ``torch.fx.experimental.symbolic_shapes``, the
module (with sympy) that an explicit ``grad_outputs`` in ``torch.autograd.grad`` imports on first use and that
the likelihood therefore avoids: that column is the cost the first call no longer pays.

Run: ``python benchmarks/likelihood.py`` (``--quick``: 2 repeats instead of 5 and no paper-style network run;
``--threads N``: torch intra-op threads, default 1; ``--only-first-call``: the third table alone).
"""
import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGE_SHAPE, markdown_table, median_time, small_conv_score  # noqa: E402

from scoresde import analytic, sde_lib  # noqa: E402
from scoresde.likelihood import get_likelihood_fn, hutchinson_noise  # noqa: E402

TOL = 1e-5
EPS = 1e-5
#: the untrained network's output oscillates fast in t (RK45 then needs ~1100 NFE); added as a small
#: correction to the exact score it costs a full network call at a realistic NFE
NET_SCALE = 1e-3


def image_gaussian() -> analytic.Gaussian:
    g = torch.Generator().manual_seed(0)
    mean = 0.3 * torch.randn(IMAGE_SHAPE[1:], generator=g)
    std = 0.1 + 0.5 * torch.rand(IMAGE_SHAPE[1:], generator=g)
    return analytic.Gaussian.diagonal(mean, std)


def forward_backward(score_fn, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> None:
    """One score call and one vector-Jacobian product w.r.t. the input."""
    x = x.detach().requires_grad_(True)
    torch.autograd.grad(score_fn(x, t), x, grad_outputs=v)


def forward_backward_func(score_fn, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> None:
    """The same through ``torch.func.vjp``."""
    _, vjp_fn = torch.func.vjp(lambda y: score_fn(y, t), x)
    vjp_fn(v)


def paper_style_likelihood(sde, score_fn, x: torch.Tensor, v: torch.Tensor):
    """The paper's per-evaluation structure: the drift and the divergence from separate score calls,
    state copied through NumPy on the way in and out. Returns the NFE."""
    shape, B = x.shape, x.shape[0]
    nfe = [0]

    def counted(y, t):
        nfe[0] += 1
        return score_fn(y, t)

    flow = sde.reverse(counted, probability_flow=True)

    def rhs(t, y):
        xt = torch.from_numpy(y[:-B].reshape(shape)).to(x.dtype)
        tt = torch.full((B,), t, dtype=x.dtype)
        with torch.no_grad():
            drift = flow.sde(xt, tt)[0].numpy().reshape(-1)
        with torch.enable_grad():
            xt.requires_grad_(True)
            (grad,) = torch.autograd.grad((flow.sde(xt, tt)[0] * v).sum(), xt)
        div = (grad * v).sum(dim=tuple(range(1, x.dim()))).numpy().reshape(-1)
        return np.concatenate([drift, div]).astype(np.float64)

    y0 = np.concatenate([x.numpy().reshape(-1).astype(np.float64), np.zeros(B)])
    solve_ivp(rhs, (EPS, sde.T), y0, rtol=TOL, atol=TOL, method="RK45")
    return nfe[0] // 2


def run_case(name, score_fn, sde, x, t, v, repeats, warmup, paper_style=True):
    """Interleaved timings (each solve between two forward+backward medians, averaged), so that a change in
    the machine's load moves both; the ratio is the median of the per-repeat ratios."""
    likelihood_fn = get_likelihood_fn(sde, hutchinson_type="rademacher", rtol=TOL, atol=TOL, method="RK45", eps=EPS)
    solvers = [("scoresde", lambda: likelihood_fn(score_fn, x, generator=torch.Generator().manual_seed(0))[2])]
    if paper_style:
        solvers.append(("paper-style loop", lambda: paper_style_likelihood(sde, score_fn, x, v)))
    rows = []
    for label, solve in solvers:
        for _ in range(warmup):
            solve()
        walls, fbs, nfe = [], [], 0
        fb = lambda: median_time(lambda: forward_backward(score_fn, x, t, v), repeats=5, warmup=1)  # noqa: E731
        for _ in range(repeats):
            before = fb()
            start = time.perf_counter()
            nfe = solve()
            walls.append(time.perf_counter() - start)
            fbs.append(0.5 * (before + fb()))
        ratio = statistics.median(w / (nfe * f) for w, f in zip(walls, fbs))
        wall, fb = statistics.median(walls), statistics.median(fbs)
        rows.append([name, label, nfe, f"{wall:.2f}", f"{1e3 * wall / nfe:.2f}", f"{1e3 * fb:.2f}", f"{ratio:.3f}"])
    return rows


#: first-call cases: name -> (data, batch); the 2-D mixture is the README's example, the image Gaussian the above
FIRST_CALL_CASES = ("2-D mixture, batch 64", "image Gaussian, batch 64x3x32x32")


def first_call_child(case: str) -> None:
    """In a fresh process: time the first likelihood call, the steady state and the symbolic-shapes import."""
    sde = sde_lib.VPSDE()
    if case == FIRST_CALL_CASES[0]:
        data = analytic.GaussianMixture([0.3, 0.7], means=torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
                                        stds=torch.tensor([0.3, 0.5]))
        x = data.sample(64, generator=torch.Generator().manual_seed(1)).float()
    else:
        data = image_gaussian()
        x = data.sample(IMAGE_SHAPE[0], torch.Generator().manual_seed(1)).float()
    likelihood_fn = get_likelihood_fn(sde, hutchinson_type="rademacher", rtol=TOL, atol=TOL, method="RK45", eps=EPS)
    score_fn = data.score_fn(sde)
    call = lambda: likelihood_fn(score_fn, x, generator=torch.Generator().manual_seed(0))  # noqa: E731
    start = time.perf_counter()
    nfe = call()[2]
    first = time.perf_counter() - start
    steady = median_time(call, repeats=5, warmup=0)
    already = "torch.fx.experimental.symbolic_shapes" in sys.modules
    start = time.perf_counter()
    importlib.import_module("torch.fx.experimental.symbolic_shapes")  # what grad_outputs= would import
    symbolic = time.perf_counter() - start
    print(json.dumps({"first": first, "steady": steady, "nfe": nfe, "symbolic_import": symbolic,
                      "symbolic_already_imported": already}))


def first_call_table(threads: int, runs: int) -> str:
    rows = []
    for case in FIRST_CALL_CASES:
        results = []
        for _ in range(runs):
            out = subprocess.run([sys.executable, __file__, "--first-call", case, "--threads", str(threads)],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
        rows.append([case, results[0]["nfe"], f"{med('first'):.3f}", f"{med('steady'):.3f}",
                     f"{med('first') - med('steady'):.3f}",
                     "yes" if any(r["symbolic_already_imported"] for r in results) else "no",
                     f"{med('symbolic_import'):.3f}"])
    return markdown_table(["case", "NFE", "first call (s)", "steady state (s)", "first - steady (s)",
                           "symbolic shapes imported by the call", "that import alone (s)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed repeats instead of 5, no paper-style loop for the network")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine two OpenMP threads "
                             "wait on each other and every elementwise op becomes many times slower)")
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh processes per first-call row (median)")
    parser.add_argument("--only-first-call", action="store_true", help="only the first-call table")
    parser.add_argument("--first-call", choices=FIRST_CALL_CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.first_call:
        return first_call_child(args.first_call)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    first_calls = first_call_table(args.threads, args.cold_runs)
    print(f"first likelihood call in a fresh process, median of {args.cold_runs} processes, torch threads "
          f"{args.threads}, load average {load:.1f}\n")
    print(first_calls)
    if args.only_first_call:
        return
    print()
    repeats, warmup = (2, 0) if args.quick else (5, 1)

    sde = sde_lib.VPSDE()
    gauss = image_gaussian()
    x = gauss.sample(IMAGE_SHAPE[0], torch.Generator().manual_seed(1)).float()
    t = torch.full((x.shape[0],), 0.5)
    v = hutchinson_noise(x, "rademacher", torch.Generator().manual_seed(2))
    net, exact = small_conv_score(), gauss.score_fn(sde)
    network = lambda y, s: exact(y, s) + NET_SCALE * net(y, s)  # noqa: E731
    cases = [("small conv net", network), ("closed-form Gaussian", exact)]

    rows = run_case(cases[0][0], network, sde, x, t, v, repeats, warmup, paper_style=not args.quick)
    rows += run_case(cases[1][0], exact, sde, x, t, v, repeats, warmup)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"likelihood, VPSDE, RK45 rtol=atol={TOL}, rademacher, batch {tuple(x.shape)}, "
          f"torch threads {torch.get_num_threads()}, load average {load:.1f}\n")
    print(markdown_table(["score", "likelihood", "NFE", "wall (s)", "ms / NFE", "fwd+bwd (ms)",
                          "wall / (NFE x fwd+bwd)"], rows))

    vjp_rows = []
    for name, score_fn in cases:
        ag = median_time(lambda: forward_backward(score_fn, x, t, v), repeats=max(5, 3 * repeats), warmup=2)
        fv = median_time(lambda: forward_backward_func(score_fn, x, t, v), repeats=max(5, 3 * repeats), warmup=2)
        vjp_rows.append([name, f"{1e3 * ag:.2f}", f"{1e3 * fv:.2f}"])
    print()
    print(markdown_table(["score", "autograd.grad (ms)", "torch.func.vjp (ms)"], vjp_rows))


if __name__ == "__main__":
    main()
