"""Accuracy of the fast solvers against closed-form truth: relative RMS error of the probability-flow map.

Three problems, every deterministic solver x schedule, NFE in {5, 10, 20, 50} (``--quick``: {10, 20}):

(a) isotropic Gaussian data N(0, 0.5^2 I) in the EDM/VE parameterisation, sigma from 80 to 0.002
    (``VESDE(sigma_min=0.002, sigma_max=80)`` from T = 1 to eps = 1e-9, i.e. sigma 80 -> 0.002 (1 + 1e-8));
    truth: the exact map ``analytic.Gaussian.flow_map``;
(b) a diagonal Gaussian, per-dimension std 0.05..0.5 (and a mean in [-0.5, 0.5]) under ``VPSDE()``,
    T = 1 -> eps = 1e-3; truth: the exact map;
(c) a 2-D Gaussian mixture (4 components, std 0.1..0.2) under ``VPSDE()``; truth: ``scipy.integrate.solve_ivp``
    (DOP853, rtol = atol = 1e-9) of the same probability-flow ODE.

The error is ``||x - x_ref|| / ||x_ref||`` over the whole batch (float64, ``denoise=False``), starting every
solver from the same prior draw. The stochastic solvers are measured on (c) by the moments of what they draw:
the error of the mode weights and of the covariance. Run: ``python benchmarks/solvers.py`` (``--quick`` for a
smaller run).

Error control (issue 13), on the same problems:

- ``dpm_adaptive`` (orders 2, 3) at rtol 1e-2 / 1e-3 / 1e-4 (atol = rtol / 100): the NFE used and the error;
- ``tolerance=`` on ``dpmpp_2m``, ``dpmpp_3m``, ``unipc``: the budget chosen, the pilot's calls and the error;
- ``sde_adaptive`` at rtol 5e-2 / 1e-2 / 1e-3 (atol = rtol; ``--quick``: the first two; 1e-4 would take tens of
  thousands of calls): the NFE used and a distributional error (the relative
  error of the per-dimension std on (a), (b) against the exact marginal at eps, the largest mode-weight error
  on (c)), next to Euler-Maruyama (``pc``, no corrector) at the same NFE, on 4000 rows (``--quick``: 1000);
- ``schedule="optimized"``: UniPC-3 and DPM-Solver++(2M) with the times fitted on pilot rows (other draws than
  the batch's; 16 rows on (a), (b), 512 on the 2-D (c)), the error on the batch and the fit's score calls.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402  (also puts the repository on sys.path)

from scoresde import analytic, sde_lib  # noqa: E402
from scoresde.sampling import get_sampler  # noqa: E402
import scoresde.sampling.fast  # noqa: E402,F401  (registers the solvers)

SOLVERS = [("euler", {}), ("ddim", {}), ("heun", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
           ("unipc", {"order": 2}), ("unipc", {"order": 3}),
           ("dpm_2", {}), ("lms", {}), ("ipndm", {}), ("deis", {}), ("dpm_solver", {})]
#: stochastic solvers, measured by the moments of the samples they draw on the mixture (c)
STOCHASTIC = [("ddim", {"eta": 1.0}), ("dpmpp_2m_sde", {}), ("euler_ancestral", {}), ("dpm_2_ancestral", {}),
              ("dpmpp_2s_ancestral", {}), ("dpmpp_sde", {}), ("dpmpp_3m_sde", {}),
              ("dpmpp_sde", {"noise": "brownian"})]
STOCHASTIC_ROWS = 20000
SCHEDULES = ["uniform", "logsnr", "edm", "quadratic"]
BATCH = 256


def probability_flow_reference(sde, score_fn, x: torch.Tensor, t0: float, t1: float, tol: float = 1e-9):
    """Solve ``dx/dt = f(x, t) - g(t)^2 score(x, t) / 2`` from ``t0`` to ``t1`` with scipy (float64)."""
    shape = x.shape

    def rhs(t, y):
        xt = torch.from_numpy(y).reshape(shape)
        tt = torch.full((shape[0],), t, dtype=torch.float64)
        drift, _ = sde.reverse(score_fn, probability_flow=True).sde(xt, tt)
        return drift.reshape(-1).numpy()

    sol = solve_ivp(rhs, (t0, t1), x.reshape(-1).numpy(), method="DOP853", rtol=tol, atol=tol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape)


def problems():
    """``name -> (sde, eps, score_fn, x_T, reference(eps))``, float64."""
    gen = torch.Generator().manual_seed(0)
    out = {}

    ve = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)
    iso = analytic.Gaussian.diagonal(torch.zeros(64), torch.full((64,), 0.5))
    x = ve.prior_sampling((BATCH, 64), generator=gen, dtype=torch.float64)
    out["(a) VE isotropic"] = (ve, 1e-9, iso.score_fn(ve), x, lambda eps, x=x: iso.flow_map(ve, x, ve.T, eps))

    vp = sde_lib.VPSDE()
    diag = analytic.Gaussian.diagonal(torch.linspace(-0.5, 0.5, 64), torch.linspace(0.05, 0.5, 64))
    x = vp.prior_sampling((BATCH, 64), generator=gen, dtype=torch.float64)
    out["(b) VP diagonal"] = (vp, vp.default_eps, diag.score_fn(vp), x,
                              lambda eps, x=x: diag.flow_map(vp, x, vp.T, eps))

    mix = benchmark_mixture()
    x = vp.prior_sampling((BATCH, 2), generator=gen, dtype=torch.float64)
    cache = {}

    def mixture_reference(eps, x=x):
        if eps not in cache:
            cache[eps] = probability_flow_reference(vp, mix.score_fn(vp), x, vp.T, eps)
        return cache[eps]

    out["(c) VP mixture"] = (vp, vp.default_eps, mix.score_fn(vp), x, mixture_reference)
    return out


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref))


def solver_label(name, extra):
    return name + "".join(f"({k}={v})" for k, v in extra.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="NFE 10 and 20 only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small tensors: extra intra-op threads only cost time on a shared machine
    nfes = [10, 20] if args.quick else [5, 10, 20, 50]
    probs = problems()

    errors = {}  # (problem, solver label, schedule, nfe) -> error
    seconds = {}  # (problem, solver label) -> wall seconds per score call, over every schedule and budget
    for pname, (sde, eps, score_fn, x, reference) in probs.items():
        for name, extra in SOLVERS:
            wall, calls = 0.0, 0
            for schedule in SCHEDULES:
                for nfe in nfes:
                    sampler = get_sampler(name, sde=sde, shape=x.shape, eps=eps, nfe=nfe, schedule=schedule,
                                          denoise=False, dtype=torch.float64, **extra)
                    start = time.perf_counter()
                    y, used = sampler(score_fn, x_init=x)
                    wall, calls = wall + time.perf_counter() - start, calls + used
                    assert used == nfe, (name, nfe, used)
                    errors[pname, solver_label(name, extra), schedule, nfe] = relative_error(y, reference(sampler.eps))
            seconds[pname, solver_label(name, extra)] = wall / calls

    headers = ["solver", "schedule"] + [f"{p.split()[0]} {n}" for p in probs for n in nfes]
    rows = [[solver_label(n, e), s] + [f"{errors[p, solver_label(n, e), s, k]:.1e}" for p in probs for k in nfes]
            for n, e in SOLVERS for s in SCHEDULES]
    print("Relative RMS error vs the exact probability-flow map, by problem and NFE "
          "(float64, same prior draw, denoise=False)\n")
    print(markdown_table(headers, rows))

    print(f"\nms per NFE (wall time / score calls over every schedule and budget; batch {BATCH}, float64, one "
          "thread; the closed-form scores cost little, so this is mostly the solver's own work)\n")
    print(markdown_table(["solver"] + [p.split()[0] for p in probs],
                         [[solver_label(n, e)] + [f"{seconds[p, solver_label(n, e)] * 1e3:.3f}" for p in probs]
                          for n, e in SOLVERS]))

    print_goals(errors, list(probs), nfes)
    print_stochastic(nfes)
    print_error_control(probs, errors, nfes, args.quick)


def mixture_moments(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor):
    """The error of the mode weights (max |w - w_exact|, rows given to the nearest mode centre) and of the
    covariance (``||C - C_exact||_F / ||C_exact||_F``) of the samples ``x``."""
    x = x.double()
    nearest = torch.cdist(x, means).argmin(dim=1)
    w = torch.bincount(nearest, minlength=len(weights)).double() / x.shape[0]
    return float((w - weights).abs().max()), float(torch.linalg.matrix_norm(torch.cov(x.T) - exact_covariance())
                                                   / torch.linalg.matrix_norm(exact_covariance()))


def benchmark_mixture():
    return analytic.GaussianMixture([0.4, 0.3, 0.2, 0.1],
                                    torch.tensor([[-1.0, -1.0], [1.0, -0.5], [0.0, 1.0], [1.2, 1.2]]),
                                    torch.tensor([0.1, 0.15, 0.2, 0.1]))


def exact_covariance() -> torch.Tensor:
    mix = benchmark_mixture()
    w, mu, var = mix.weights, mix.means, mix.vars
    mean = w @ mu
    second = (w[:, None, None] * (mu[:, :, None] * mu[:, None, :] + torch.diag_embed(var))).sum(0)
    return second - mean[:, None] * mean[None, :]


def print_stochastic(nfes):
    """The stochastic solvers on the mixture (c) under VP: the sample's mode weights and covariance against the
    exact ones, ``STOCHASTIC_ROWS`` rows (exact draws of that many rows: 0.005 / 0.003)."""
    vp = sde_lib.VPSDE()
    mix = benchmark_mixture()
    rows = []
    for name, extra in STOCHASTIC:
        cells = []
        for nfe in nfes:
            sampler = get_sampler(name, sde=vp, shape=(STOCHASTIC_ROWS, 2), nfe=nfe, dtype=torch.float64, **extra)
            x, used = sampler(mix.score_fn(vp), generator=torch.Generator().manual_seed(0))
            assert used == nfe, (name, nfe, used)
            w_err, c_err = mixture_moments(x, mix.weights, mix.means)
            cells.append(f"{w_err:.3f} / {c_err:.3f}")
        rows.append([solver_label(name, extra)] + cells)
    print(f"\nStochastic solvers on (c), VP, logsnr schedule, {STOCHASTIC_ROWS} rows, denoise=True: mode-weight "
          "error / relative covariance error\n")
    print(markdown_table(["solver"] + [f"{n} NFE" for n in nfes], rows))


def print_goals(errors, pnames, nfes):
    """The goals of issue 6: on (a) the best solver/schedule at most 4e-2 at 10 NFE and 1e-2 at 20 NFE; on (b)
    and (c) at least 2x smaller error than Euler with the same schedule at the same NFE."""
    labels = [solver_label(n, e) for n, e in SOLVERS[1:]]
    print("\nGoals (best = the smallest error over solvers and schedules at that NFE):")
    for nfe, goal in [(10, 4e-2), (20, 1e-2)]:
        if nfe in nfes:
            err, label, schedule = min((errors[pnames[0], lb, s, nfe], lb, s) for lb in labels for s in SCHEDULES)
            print(f"- (a) {nfe} NFE: best {label} / {schedule} {err:.1e} (goal <= {goal:.0e}: "
                  f"{'met' if err <= goal else 'NOT met'})")
    for pname in pnames[1:]:
        for nfe in nfes:
            err, label, schedule = min((errors[pname, lb, s, nfe], lb, s) for lb in labels for s in SCHEDULES)
            ratio = errors[pname, "euler", schedule, nfe] / err
            default = errors[pname, "euler", "logsnr", nfe] / errors[pname, "unipc(order=3)", "logsnr", nfe]
            print(f"- {pname.split()[0]} {nfe} NFE: best {label} / {schedule} {err:.1e}, Euler / {schedule} "
                  f"{errors[pname, 'euler', schedule, nfe]:.1e}: {ratio:.1f}x (goal >= 2: "
                  f"{'met' if ratio >= 2 else 'NOT met'}); the default unipc / logsnr: {default:.1f}x")
    print("\nEuler error / best solver's error with the same schedule (the best solver in brackets):\n")
    rows = []
    for pname in pnames[1:]:
        for schedule in SCHEDULES:
            cells = []
            for nfe in nfes:
                err, label = min((errors[pname, lb, schedule, nfe], lb) for lb in labels)
                cells.append(f"{errors[pname, 'euler', schedule, nfe] / err:.1f}x ({label})")
            rows.append([pname.split()[0], schedule] + cells)
    print(markdown_table(["problem", "schedule"] + [f"{n} NFE" for n in nfes], rows))


def print_error_control(probs, errors, nfes, quick):
    """The tables of issue 13: adaptive solvers, ``tolerance=`` and ``schedule="optimized"``."""
    rtols = [1e-2, 1e-3, 1e-4]
    pnames = list(probs)
    short = [p.split()[0] for p in pnames]

    print("\nAdaptive DPM-Solver: NFE used / relative error vs the exact map, by rtol (atol = rtol / 100):\n")
    rows = []
    for order in (2, 3):
        cells = []
        for pname in pnames:
            sde, eps, score_fn, x, reference = probs[pname]
            for rtol in rtols:
                sampler = get_sampler("dpm_adaptive", sde=sde, shape=x.shape, eps=eps, order=order, rtol=rtol,
                                      atol=rtol / 100, max_nfe=20000, denoise=False, dtype=torch.float64)
                y, used = sampler(score_fn, x_init=x)
                cells.append(f"{used} / {relative_error(y, reference(eps)):.1e}")
        rows.append([f"dpm_adaptive(order={order})"] + cells)
    print(markdown_table(["solver"] + [f"{p} {r:.0e}" for p in short for r in rtols], rows))

    print("\ntolerance=: chosen NFE (+ pilot calls on 16 rows) / relative error on the batch (max_nfe=20000):\n")
    rows = []
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        cells = []
        for pname in pnames:
            sde, eps, score_fn, x, reference = probs[pname]
            for tol in rtols:
                sampler = get_sampler(name, sde=sde, shape=x.shape, eps=eps, tolerance=tol, max_nfe=20000,
                                      denoise=False, dtype=torch.float64)
                y, _ = sampler(score_fn, x_init=x)
                stats = sampler.last_stats
                cells.append(f"{stats['nfe_chosen']} (+{stats['pilot_nfe']}) / "
                             f"{relative_error(y, reference(eps)):.1e}")
        rows.append([name] + cells)
    print(markdown_table(["solver"] + [f"{p} tol {r:.0e}" for p in short for r in rtols], rows))

    print_sde_adaptive(probs, quick)

    print("\nschedule='optimized' (fitted on pilot rows, seed 0): relative error on the batch "
          "(fit calls in brackets), against the best named schedule:\n")
    rows = []
    best_a10 = None
    for name, extra in (("unipc", {"order": 3}), ("dpmpp_2m", {})):
        label = solver_label(name, extra)
        for nfe in nfes:
            cells = []
            for pname in pnames:
                sde, eps, score_fn, x, reference = probs[pname]
                sampler = get_sampler(name, sde=sde, shape=x.shape, eps=eps, nfe=nfe, schedule="optimized",
                                      denoise=False, dtype=torch.float64, **extra)
                y, _ = sampler(score_fn, x_init=x)
                err = relative_error(y, reference(eps))
                best, schedule = min((errors[pname, label, s, nfe], s) for s in SCHEDULES)
                cells.append(f"{err:.1e} ({sampler.schedule_fit['calls']}) vs {best:.1e} {schedule}")
                if pname == pnames[0] and nfe == 10 and (best_a10 is None or err < best_a10[0]):
                    best_a10 = (err, label)
            rows.append([label, nfe] + cells)
    print(markdown_table(["solver", "NFE"] + short, rows))
    if best_a10 is not None:
        print(f"\n- (a) 10 NFE with schedule='optimized': best {best_a10[1]} {best_a10[0]:.1e} "
              f"(goal <= 5e-3: {'met' if best_a10[0] <= 5e-3 else 'NOT met'})")


def print_sde_adaptive(probs, quick):
    """``sde_adaptive`` against Euler-Maruyama at the same NFE, by a distributional error (see the module)."""
    rows_n = 1000 if quick else 4000
    print(f"\nsde_adaptive: NFE used / distributional error ({rows_n} rows; Euler-Maruyama at that NFE in "
          "brackets):\n")
    gen = torch.Generator().manual_seed(1)
    cells_by_rtol = {}
    for pname, (sde, eps, score_fn, _, _) in probs.items():
        x = sde.prior_sampling((rows_n, probs[pname][3].shape[1]), generator=gen, dtype=torch.float64)
        for rtol in ((5e-2, 1e-2) if quick else (5e-2, 1e-2, 1e-3)):
            sampler = get_sampler("sde_adaptive", sde=sde, shape=x.shape, eps=eps, rtol=rtol, atol=rtol,
                                  max_nfe=20000, denoise=False, dtype=torch.float64)
            y, used = sampler(score_fn, x_init=x, seeds=list(range(rows_n)))
            em = get_sampler("pc", sde=sde, shape=x.shape, eps=eps, predictor="euler_maruyama", corrector="none",
                             N=used, denoise=False, dtype=torch.float64)
            y_em, _ = em(score_fn, x_init=x, seeds=list(range(rows_n)))
            ours, theirs = distribution_error(pname, sde, eps, y), distribution_error(pname, sde, eps, y_em)
            cells_by_rtol.setdefault(rtol, []).append(f"{used} / {ours:.1e} ({theirs:.1e})")
    rows = [[f"sde_adaptive rtol={r:.0e}"] + cells for r, cells in cells_by_rtol.items()]
    print(markdown_table(["solver"] + [p.split()[0] for p in probs], rows))


def distribution_error(pname, sde, eps, y):
    """(a), (b): ``||std_hat - std_eps|| / ||std_eps||`` over the dimensions, against the exact marginal at ``eps``;
    (c): the largest error of the mode weights (rows assigned to the nearest mean)."""
    t = torch.tensor([eps], dtype=torch.float64)
    alpha, sigma = (float(v) for v in sde.marginal_coeffs(t))
    if pname.startswith("(c)"):
        mix = benchmark_mixture()
        nearest = torch.cdist(y, mix.means * alpha).argmin(dim=1)
        weights = torch.bincount(nearest, minlength=len(mix.weights)).double() / y.shape[0]
        return float((weights - mix.weights).abs().max())
    std = torch.full((64,), 0.5, dtype=torch.float64) if pname.startswith("(a)") else \
        torch.linspace(0.05, 0.5, 64, dtype=torch.float64)
    std_eps = torch.sqrt(alpha ** 2 * std ** 2 + sigma ** 2)
    return float(torch.linalg.vector_norm(y.std(0) - std_eps) / torch.linalg.vector_norm(std_eps))


if __name__ == "__main__":
    main()
