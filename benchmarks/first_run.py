"""The first run, measured: train each candidate config on the embedded digits, evaluate it, judge its samples.

For every candidate: ``run_lib.train`` then ``run_lib.evaluate`` (bits/dim on the first 128 test images, the
eval loss, ``--samples`` samples with the candidate's sampler at its NFE, and the digits judge of
``scoresde.metrics.digits``: the share of confident samples, max p(y|x) > 0.9, and the digit Inception
score exp E[KL(p(y|x) || p(y))], beside the same scores of the 297 real test digits). Wall times of the two
phases are reported, with the thread count and the load average, since the machine may be shared.

    python benchmarks/first_run.py --workdir runs/first_run [--candidates vp8_dsm,vp8_edm] [--samples 1000]

The precision question of issue 12: ``configs/edm/digits.py`` trained under bf16 autocast (``vp8_edm_2400_bf16``,
sampled in fp32; ``vp8_edm_2400_bf16_sampled_bf16``, the same network sampled under bf16 too) is set against
the same config in fp32 at three seeds, and the script prints the bf16 rows' distance from the seeds' mean in
their standard deviations.

A candidate's directory is reused when it exists (training and evaluation resume and skip what is done), so a
long comparison can be interrupted and run again; ``--fresh`` deletes it first.
"""
import argparse
import json
import os
import shutil
import statistics
import time

import torch

from common import markdown_table  # also puts the repository on sys.path

import run_lib  # noqa: E402
from scoresde import precision  # noqa: E402
from configs.edm import digits as edm_digits  # noqa: E402
from configs.vp import digits  # noqa: E402


def _edm_digits(**changes):
    """``configs/edm/digits.py`` with ``changes`` (dotted config fields)."""
    config = edm_digits.get_config()
    config.update_from_flattened_dict(changes)
    return config


def _digits_8x8(steps: int, **changes):
    """The 8x8 set-up of ``configs/edm/digits.py`` (the 16x16 images of ``configs/vp/digits.py`` are these
    pixels doubled) with the paper's DSM loss for ``steps`` steps, then ``changes``."""
    return _edm_digits(**{"training.loss": "dsm", "training.n_iters": steps, "training.snapshot_freq": steps,
                          **changes})


def _baseline():
    """Today's first run, unchanged: 16x16, 1,200 steps, pc (Euler-Maruyama, N = 200) for its samples."""
    return digits.get_config()


CANDIDATES = {
    "vp16_dsm_1200 (today)": _baseline,
    "vp8_dsm_3000": lambda: _digits_8x8(3000),
    "vp8_edm_3000": lambda: _digits_8x8(3000, **{"training.loss": "edm"}),
    "vp8_edm_2400 (configs/edm/digits.py)": edm_digits.get_config,
    "vp8_eps_minsnr5_3000": lambda: _digits_8x8(3000, **{"training.min_snr_gamma": 5.0}),
    # the spread between seeds (network initialisation, batches, the loss's and the sampler's noise), against
    # which the bf16 candidates' differences are read
    "vp8_edm_2400_seed1": lambda: _edm_digits(**{"seed": 1, "training.mixed_precision": "no"}),
    "vp8_edm_2400_seed2": lambda: _edm_digits(**{"seed": 2, "training.mixed_precision": "no"}),
    # training under bf16 autocast (training.mixed_precision = "bf16"), sampled in fp32 ...
    "vp8_edm_2400_bf16": lambda: _edm_digits(**{"training.mixed_precision": "bf16"}),
    # ... and the same network sampled under bf16 autocast too
    "vp8_edm_2400_bf16_sampled_bf16": lambda: _edm_digits(**{"training.mixed_precision": "bf16"}),
}
SHORT = {name.split(" ")[0]: name for name in CANDIDATES}
# Changes to a candidate's config for its evaluation only.
EVAL_CHANGES = {"vp8_edm_2400_bf16": {"training.mixed_precision": "no"},
                # bits/dim are computed in fp32 under any autocast: vp8_edm_2400_bf16's are this network's
                "vp8_edm_2400_bf16_sampled_bf16": {"eval.enable_bpd": False}}
# A candidate that evaluates another candidate's trained network instead of training its own.
TRAINED_BY = {"vp8_edm_2400_bf16_sampled_bf16": "vp8_edm_2400_bf16"}

# configs/edm/digits.py at three seeds (those that ran in fp32 count), and trained under bf16 autocast (sampled
# in fp32, then in bf16)
SEEDS = ["vp8_edm_2400", "vp8_edm_2400_seed1", "vp8_edm_2400_seed2"]
BF16 = ["vp8_edm_2400_bf16", "vp8_edm_2400_bf16_sampled_bf16"]


def _precision(config) -> str:
    """The precision the run used: ``training.mixed_precision`` with "auto" decided for this machine."""
    used = precision.resolve(config.training.mixed_precision, config.device or "cpu")
    return "fp32" if used == "no" else used


def _trained_network(name: str, workdir: str) -> float:
    """Copy the final checkpoint of candidate ``name`` (in the sibling directory named by its short name) into
    ``workdir``'s checkpoints, with its checksum file; returns that candidate's training seconds."""
    source = os.path.join(os.path.dirname(workdir), name.split(" ")[0])
    if not os.path.isfile(os.path.join(source, "first_run.json")):
        raise SystemExit(f"{workdir} evaluates the network of candidate {name!r}: run that candidate first")
    target = os.path.join(workdir, "checkpoints")
    os.makedirs(target, exist_ok=True)
    for file in os.listdir(os.path.join(source, "checkpoints")):
        shutil.copy2(os.path.join(source, "checkpoints", file), os.path.join(target, file))
    with open(os.path.join(source, "first_run.json")) as f:
        return json.load(f)["train_s"]


def run_candidate(name: str, workdir: str, samples: int, fresh: bool):
    """The candidate's row: measured now, or read back from ``<workdir>/first_run.json`` when an earlier run
    measured it (so that the table of a long comparison can be printed again without training again). A
    candidate in ``TRAINED_BY`` takes that candidate's trained network and reports its training time; one in
    ``EVAL_CHANGES`` is evaluated with those changes to its config."""
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
    if name in TRAINED_BY:
        train_s = _trained_network(TRAINED_BY[name], workdir)
    else:
        start = time.perf_counter()
        run_lib.train(config, workdir)
        train_s = time.perf_counter() - start
    train_precision = _precision(config)
    config.update_from_flattened_dict(EVAL_CHANGES.get(name, {}))
    start = time.perf_counter()
    results = run_lib.evaluate(config, workdir)
    eval_s = time.perf_counter() - start
    last = results[max(results)]
    judge = last["digits_judge"]
    s = config.sampling
    nfe_setting = s.options[s.sampler].get("nfe") or s.options[s.sampler].get("N")
    row = {"name": name, "steps": config.training.n_iters, "image": config.data.image_size, "train_s": train_s,
           "eval_s": eval_s, "bpd": last["bpd"]["bpd"] if "bpd" in last else None, "sampler": f"{s.sampler} ({nfe_setting})",
           "is": judge["samples"]["inception_score"], "confident": judge["samples"]["confident"],
           "real_is": judge["real_test"]["inception_score"], "real_confident": judge["real_test"]["confident"],
           "histogram": judge["samples"]["class_histogram"], "load": (load + os.getloadavg()[0]) / 2,
           "threads": torch.get_num_threads(), "seed": config.seed,
           "precision": f"{train_precision}/{_precision(config)}"}
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
        ["candidate", "image", "steps", "seed", "precision (train/sample)", "threads", "train s", "eval s", "load",
         "bits/dim", "sampler (NFE)", "digit IS", "confident", "real digits: IS, confident"],
        [[r["name"], f"{r['image']}x{r['image']}", r["steps"], r.get("seed", 42), r.get("precision", "fp32/fp32"),
          r.get("threads", 1), f"{r['train_s']:.0f}", f"{r['eval_s']:.0f}", f"{r['load']:.1f}",
          "—" if r["bpd"] is None else f"{r['bpd']:.3f}", r["sampler"], f"{r['is']:.2f}", f"{r['confident']:.0%}",
          f"{r['real_is']:.2f}, {r['real_confident']:.0%}"] for r in rows]))
    by_name = {r["name"].split(" ")[0]: r for r in rows}
    seeds = [by_name[n] for n in SEEDS if n in by_name and by_name[n].get("precision", "fp32/fp32") == "fp32/fp32"]
    if len(seeds) >= 2 and all(name in by_name for name in BF16):
        print(bf16_against_seeds(seeds, [by_name[n] for n in BF16]))


def bf16_against_seeds(seeds, bf16) -> str:
    """The bf16 rows' scores in standard deviations of the fp32 seeds' scores from the seeds' mean."""
    lines = ["", f"bf16 against configs/edm/digits.py in fp32 at {len(seeds)} seeds (mean ± sample standard "
             "deviation; the bf16 rows' distance from that mean in those deviations):", ""]
    rows = []
    for key, label, fmt in (("is", "digit IS", "{:.2f}"), ("confident", "confident", "{:.1%}"),
                            ("bpd", "bits/dim", "{:.3f}")):
        values = [r[key] for r in seeds]
        mean, sd = statistics.mean(values), statistics.stdev(values)
        cells = [label, f"{fmt.format(mean)} ± {fmt.format(sd)}"]
        for r in bf16:
            cells.append("—" if r[key] is None else f"{fmt.format(r[key])} ({(r[key] - mean) / sd:+.1f} sd)")
        rows.append(cells)
    return "\n".join(lines) + "\n" + markdown_table(
        ["score", "fp32 seeds", *(f"{r['name'].split(' ')[0]} ({r['precision']})" for r in bf16)], rows)


if __name__ == "__main__":
    main()
