"""The first run, measured: train each candidate config on the embedded digits, evaluate it, judge its samples.

For every candidate: ``run_lib.train`` then ``run_lib.evaluate`` (bits/dim on the first 128 test images, the
eval loss, ``--samples`` samples with the candidate's sampler at its NFE, and the digits judge of
``scoresde.metrics.digits``: the share of confident samples, max p(y|x) > 0.9, and the digit Inception
score exp E[KL(p(y|x) || p(y))], beside the same scores of the 297 real test digits). Wall times of the two
phases are reported, with the thread count and the load average, since the machine may be shared.

    python benchmarks/first_run.py --workdir runs/first_run [--candidates vp8_dsm,vp8_edm] [--samples 1000]

A candidate's directory is reused when it exists (training and evaluation resume and skip what is done), so a
long comparison can be interrupted and run again; ``--fresh`` deletes it first.
"""
import argparse
import json
import os
import shutil
import time

import torch

from common import markdown_table  # also puts the repository on sys.path

import run_lib  # noqa: E402
from configs.edm import digits as edm_digits  # noqa: E402
from configs.vp import digits  # noqa: E402


def _digits_8x8(steps: int, **changes):
    """``configs/vp/digits.py`` at the digits' own 8x8 (the 16x16 images are these pixels doubled)."""
    config = digits.get_config()
    config.data.image_size = 8
    config.training.n_iters = steps
    config.training.snapshot_freq = steps
    config.training.snapshot_freq_for_preemption = 500
    config.eval.begin_ckpt = config.eval.end_ckpt = 1
    config.sampling.sampler = "dpmpp_2m_sde"
    config.sampling.options.dpmpp_2m_sde.nfe = 50
    config.update_from_flattened_dict(changes)
    return config


def _baseline():
    """Today's first run, unchanged: 16x16, 1,200 steps, pc (Euler-Maruyama, N = 200) for its samples."""
    return digits.get_config()


CANDIDATES = {
    "vp16_dsm_1200 (today)": _baseline,
    "vp8_dsm_3000": lambda: _digits_8x8(3000),
    "vp8_edm_3000": lambda: _digits_8x8(3000, **{"training.loss": "edm"}),
    "vp8_edm_2400 (configs/edm/digits.py)": edm_digits.get_config,   # = _digits_8x8(2400, training.loss="edm")
    "vp8_eps_minsnr5_3000": lambda: _digits_8x8(3000, **{"training.min_snr_gamma": 5.0}),
}
SHORT = {name.split(" ")[0]: name for name in CANDIDATES}


def run_candidate(name: str, workdir: str, samples: int, fresh: bool):
    """The candidate's row: measured now, or read back from ``<workdir>/first_run.json`` when an earlier run
    measured it (so that the table of a long comparison can be printed again without training again)."""
    record = os.path.join(workdir, "first_run.json")
    if fresh and os.path.isdir(workdir):
        shutil.rmtree(workdir)
    if os.path.isfile(record):
        with open(record) as f:
            return json.load(f)
    config = CANDIDATES[name]()
    config.eval.num_samples = samples
    config.eval.bpd_num_images = 128
    load = os.getloadavg()[0]
    start = time.perf_counter()
    run_lib.train(config, workdir)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    results = run_lib.evaluate(config, workdir)
    eval_s = time.perf_counter() - start
    last = results[max(results)]
    judge = last["digits_judge"]
    s = config.sampling
    nfe_setting = s.options[s.sampler].get("nfe") or s.options[s.sampler].get("N")
    row = {"name": name, "steps": config.training.n_iters, "image": config.data.image_size, "train_s": train_s,
           "eval_s": eval_s, "bpd": last["bpd"]["bpd"], "sampler": f"{s.sampler} ({nfe_setting})",
           "is": judge["samples"]["inception_score"], "confident": judge["samples"]["confident"],
           "real_is": judge["real_test"]["inception_score"], "real_confident": judge["real_test"]["confident"],
           "histogram": judge["samples"]["class_histogram"], "load": (load + os.getloadavg()[0]) / 2,
           "threads": torch.get_num_threads()}
    with open(record, "w") as f:
        json.dump(row, f)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/first_run")
    parser.add_argument("--candidates", default=",".join(SHORT), help=f"comma-separated, of {list(SHORT)}")
    parser.add_argument("--samples", type=int, default=1000, help="samples judged per candidate")
    parser.add_argument("--fresh", action="store_true", help="delete a candidate's directory first")
    parser.add_argument("--real-grid", default="", help="also write the first 64 real test digits (8x8) as a "
                        "PNG grid laid out as the training snapshots' grids, e.g. assets/digits_real.png")
    args = parser.parse_args()
    if args.real_grid:
        from scoresde.datasets import read_digits
        from scoresde.images import legible_scale, save_image_grid
        real = read_digits("test")[0][:64].permute(0, 2, 3, 1).numpy()       # uint8 [64, 8, 8, 1]
        save_image_grid(real, args.real_grid, padding=1, scale=legible_scale(real))
        print(f"real test digits: {args.real_grid}")
    names = [SHORT.get(n.strip(), n.strip()) for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; choose from {list(SHORT)}")
    rows = []
    for name in names:
        workdir = os.path.join(args.workdir, name.split(" ")[0])
        row = dict(run_candidate(name, workdir, args.samples, args.fresh), name=name)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{args.samples} samples judged per candidate; load: the 1-minute load average, the mean of its values "
          f"at the start and at the end of the candidate's run\n")
    print(markdown_table(
        ["candidate", "image", "steps", "threads", "train s", "eval s", "load", "bits/dim", "sampler (NFE)", "digit IS",
         "confident", "real digits: IS, confident"],
        [[r["name"], f"{r['image']}x{r['image']}", r["steps"], r.get("threads", 1), f"{r['train_s']:.0f}",
          f"{r['eval_s']:.0f}", f"{r['load']:.1f}", f"{r['bpd']:.3f}", r["sampler"], f"{r['is']:.2f}",
          f"{r['confident']:.0%}", f"{r['real_is']:.2f}, {r['real_confident']:.0%}"] for r in rows]))


if __name__ == "__main__":
    main()
