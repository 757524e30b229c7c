"""Controllable generation on the digits, judged by a scikit-learn classifier trained on the real digits.

Takes the workdir of a trained digits run, class-conditional (``configs/vp/digits_cond.py``: label dropout,
so one network gives both scores) or not, and measures, with its newest checkpoint (EMA weights):

* classifier-free guidance: for each scale, ``--per-class`` samples of every class 0..9; the share the
  judge assigns to the requested class (scale 0 is the unconditional model: about 10% by chance);
* with ``--classifier-workdir``, the same for classifier guidance by that noise-conditional classifier (of
  any score model of the same data, e.g. the unconditional ``configs/vp/digits.py``);
* inpainting from the top half: every test digit's top half observed (noise-free, the unconditional score,
  through the null label of a class-conditional network), by replacement in the sampler (``--inpaint-methods``
  adds Pi-GDM / DPS guidance); the share the
  judge assigns to the digit's own label, next to what a classifier of top halves alone gets right (how
  much of the label the observed half holds).

The judge is the library's digits judge (``scoresde.metrics.digits``: an RBF support-vector classifier on the
1,500 training digits at 8x8, samples average-pooled back to 8x8); its accuracy on the 297 test digits is
printed as the ceiling. Seeds are fixed: the same workdir gives the same table.

    python benchmarks/guidance_digits.py --workdir runs/digits_cond
    python benchmarks/guidance_digits.py --workdir runs/digits_cond --config configs/vp/digits_cond.py \
        --scales 0 1 2 4 --per-class 50 --threads 1
    python benchmarks/guidance_digits.py --workdir runs/digits --config configs/vp/digits.py \
        --classifier-workdir runs/digits_clf --inpaint 0
"""
import argparse
import ast
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import run_lib  # noqa: E402
from scoresde import guidance, image_tasks  # noqa: E402
from scoresde.datasets import pad_to_size, read_digits  # noqa: E402
from scoresde.datasets.loader import step_seed  # noqa: E402
from scoresde.metrics.digits import load_digits_judge  # noqa: E402
from scoresde.models.common import null_label  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a trained class-conditional digits run")
    p.add_argument("--config", default="configs/vp/digits_cond.py", help="the config it was trained with")
    p.add_argument("--classifier-workdir", default="",
                   help="also measure classifier guidance with this noise-conditional classifier run")
    p.add_argument("--ckpt", type=int, default=0, help="numbered checkpoint (0: the newest state)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--per-class", type=int, default=20, help="CFG samples per class and scale")
    p.add_argument("--inpaint", type=int, default=297, help="test digits to inpaint (0: skip)")
    p.add_argument("--inpaint-methods", nargs="+", default=["replace"],
                   choices=["replace", "pigdm", "dps"], help="replacement, or Pi-GDM / DPS guidance")
    p.add_argument("--likelihood-std", type=float, default=0.05,
                   help="the likelihood width of Pi-GDM and DPS (the observation itself is noise-free)")
    p.add_argument("--sampler", default="", help="a sampler in place of the config's (sampling.sampler)")
    p.add_argument("--option", nargs="*", default=[], metavar="NAME=VALUE",
                   help="sampler options, e.g. corrector=langevin snr=0.16 (values parsed as Python literals)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def digits(split: str, size: int):
    """The DIGITS images of ``split`` at ``size`` as the data set makes them, float ``[N, size^2]`` in
    ``[0, 1]``, and their labels."""
    images, labels = read_digits(split)
    return (pad_to_size(images, size).float() / 255.0).reshape(len(images), -1).numpy(), labels.numpy()


def judge_with_accuracy():
    """The library's digits judge and its accuracy on the 297 test digits."""
    judge = load_digits_judge()
    images, labels = read_digits("test")
    return judge, float((judge.predict(images) == labels.numpy()).mean())


def sample_in_batches(run, labels: torch.Tensor, score_fn_for, seed: int, observations=None):
    """Samples (data range, CPU) for ``labels`` [N], ``batch_size`` rows at a time, the configured sampler."""
    out, bs = [], run.config.sampling.batch_size
    for i, start in enumerate(range(0, labels.shape[0], bs)):
        rows = labels[start:start + bs].to(run.device)
        sampler = run_lib.sampler_from_config(run.config, run.sde, rows.shape[0], run.device)
        generator = torch.Generator(device=run.device).manual_seed(step_seed(seed, i))
        extra = {} if observations is None else {"observation": observations[i]}
        x, _ = sampler(score_fn_for(rows), generator=generator, **extra)
        out.append(run.inverse_scaler(x).cpu())
    return torch.cat(out)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = run_lib.load_config_file(args.config)
    k = config.model.get("num_classes") or 0
    if not k and not args.classifier_workdir:
        raise SystemExit(f"{args.config} is not class-conditional (model.num_classes unset): give "
                         "--classifier-workdir to measure classifier guidance")
    config.sampling.batch_size = args.batch_size
    config.sampling.classifier_workdir = args.classifier_workdir
    if args.sampler:
        config.sampling.sampler = args.sampler
    for item in args.option:
        name, _, value = item.partition("=")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a plain string, e.g. langevin
        config.sampling.options[config.sampling.sampler][name] = value
    config.sampling.num_samples = max(args.inpaint, 1)  # the test digits run_lib.task_images takes
    run = run_lib.setup(config, args.workdir)
    path = run.checkpoints.newest() if args.ckpt == 0 else run.checkpoints.numbered_path(args.ckpt)
    step = run_lib.load_for_inference(run, path, use_ema=True)
    size = config.data.image_size
    judge, judge_accuracy = judge_with_accuracy()
    sampler = config.sampling.sampler
    options = {key: v for key, v in config.sampling.options[sampler].items() if v is not None}
    print(f"workdir {args.workdir} (step {step}); sampler {sampler} {options}; {args.threads} thread(s); seed {args.seed}")
    print(f"judge: scoresde.metrics.digits (RBF SVC on the 1500 training digits at 8x8), {judge_accuracy:.1%} "
          "right on the 297 test digits\n")

    kinds = [("classifier-free", 1)] if k else []
    if args.classifier_workdir:
        classifier_fn, classes = run_lib.load_classifier(config, run.sde, run.device)
        kinds.append(("classifier", 3))
    print("| guidance | scale | samples | judge agrees with the requested label | seconds |")
    print("|---|---|---|---|---|")
    for kind, stream in kinds:
        requested = run_lib.cyclic_labels(range(k or classes), (k or classes) * args.per_class)
        for scale in args.scales:
            if kind == "classifier-free":
                score_fn_for = lambda rows: guidance.classifier_free_guidance_from_model(  # noqa: E731
                    run.score_fn(), rows, scale, null_label(k))
            else:
                score_fn_for = lambda rows: guidance.classifier_guidance(  # noqa: E731
                    run.score_fn(class_labels=rows if k else None), classifier_fn, rows, scale)
            start = time.time()
            x = sample_in_batches(run, requested, score_fn_for, step_seed(args.seed, stream, int(round(scale * 1000))))
            agree = float((judge.predict(x) == requested.numpy()).mean())
            print(f"| {kind} | {scale:g} | {x.shape[0]} | {agree:.1%} | {time.time() - start:.0f} |")

    if args.inpaint:
        n = args.inpaint
        num_rows = math.ceil(n / args.batch_size) * args.batch_size
        images, labels = run_lib.task_images(run)
        repeat = torch.arange(num_rows) % n                  # whole batches: the first images again at the end
        images, labels = images[repeat], labels[repeat]
        truth = labels[:n].numpy()
        observations = [image_tasks.make_observation("inpaint", run.scaler(images[i:i + args.batch_size].to(run.device)),
                                                     mask="half")
                        for i in range(0, num_rows, args.batch_size)]
        null = torch.full((num_rows,), null_label(k), dtype=torch.long)  # unused by an unconditional network
        unconditional = lambda rows: run.score_fn(class_labels=rows if k else None)  # noqa: E731
        print(f"\ninpainting {n} test digits from their top half (unconditional score)\n")
        print("| method | the judge gives the digit its own label | seconds |")
        print("|---|---|---|")
        for method in args.inpaint_methods:
            start = time.time()
            if method == "replace":
                x = sample_in_batches(run, null, unconditional, step_seed(args.seed, 2), observations=observations)
            else:
                batches = iter(observations)
                x = sample_in_batches(run, null, lambda rows: guidance.posterior_guidance(
                    unconditional(rows), run.sde, next(batches), method=method,
                    std=args.likelihood_std), step_seed(args.seed, 2))
            kept = float((judge.predict(x[:n]) == truth).mean())
            name = method if method == "replace" else f"{method} (likelihood std {args.likelihood_std:g})"
            print(f"| {name} | {kept:.1%} | {time.time() - start:.0f} |")
        top = np.arange(size * size) < size * (size // 2)  # the observed rows, flattened
        x_train, y_train = digits("train", size)
        from sklearn.svm import SVC
        top_judge = SVC(C=10.0, gamma="scale").fit(x_train[:, top], y_train)
        top_accuracy = float((top_judge.predict(images[:n].reshape(n, -1).numpy()[:, top]) == truth).mean())
        whole = float((judge.predict(images[:n]) == truth).mean())
        print(f"| (the originals) | {whole:.1%} | |")
        print(f"\nHow much the top half says: an SVC trained on top halves alone names {top_accuracy:.1%} of these "
              "digits rightly.")


if __name__ == "__main__":
    main()
