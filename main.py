"""Command line: train, evaluate or sample a score-based model from an ml-collections config.

    python main.py --config configs/vp/digits.py --workdir runs/digits --mode train
    python main.py --config configs/vp/digits.py --workdir runs/digits --mode eval
    python main.py --config configs/vp/digits.py --workdir runs/digits --mode sample \\
        --config.sampling.sampler=ode --config.sampling.options.ode.rtol=1e-3

Any config field can be overridden with ``--config.<path>=<value>``. Several processes (GPUs or
CPU processes) through ``torchrun --nproc_per_node=K main.py ...``. Restarting a training command
resumes from the newest checkpoint in ``--workdir``.
"""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs, samples, evaluation results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to run.")
flags.DEFINE_string("eval_folder", None, "Evaluation results folder under workdir (default: config.eval.eval_folder).")
flags.mark_flags_as_required(["config", "workdir"])


def _log_to(workdir: str, mode: str) -> None:
    """Log to the console and to ``<workdir>/<mode>.log`` (rank 0 only writes the file)."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    handlers = [console]
    if os.environ.get("RANK", "0") == "0":
        os.makedirs(workdir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(workdir, f"{mode}.log")))  # with tracebacks
    logging.basicConfig(level=logging.DEBUG, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import run_lib  # after flag parsing, so --help stays fast

    _log_to(FLAGS.workdir, FLAGS.mode)
    try:
        if FLAGS.mode == "train":
            run_lib.train(FLAGS.config, FLAGS.workdir)
        elif FLAGS.mode == "eval":
            run_lib.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.eval_folder)
        else:
            run_lib.sample(FLAGS.config, FLAGS.workdir)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError, ImportError) as e:
        # a configuration, data or divergence problem: say what it is, without a traceback
        logging.error("%s: %s", type(e).__name__, e)
        logging.debug("traceback", exc_info=True)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
