"""Command line: train, evaluate or sample a score-based model from an ml-collections config.

    python main.py --config configs/vp/digits.py --workdir runs/digits --mode train
    python main.py --config configs/vp/digits.py --workdir runs/digits --mode eval
    python main.py --config configs/vp/digits.py --workdir runs/digits --mode sample \\
        --config.sampling.sampler=ode --config.sampling.options.ode.rtol=1e-3

Any config field can be overridden with ``--config.<path>=<value>``. Several processes (GPUs or
CPU processes) through ``torchrun --nproc_per_node=K main.py ...``. Restarting a training command
resumes from the newest checkpoint in ``--workdir``.

A refused input (an unknown config field, a broken config file, bad data, a full disk, ...) ends with
one line on stderr, ``main.py: error: ...``, and exit status 1; ``--debug`` shows the traceback instead.
"""
import difflib
import errno
import logging
import os
import sys
import zipfile

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory: checkpoints, logs, samples, evaluation results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to run.")
flags.DEFINE_string("eval_folder", None, "Evaluation results folder under workdir (default: config.eval.eval_folder).")
flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of its one-line message.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_ERROR = 1
_LOGGING_SET_UP = False  # whether the console and log-file handlers of _log_to are in place
_DEBUG_HINT = " (--debug shows the traceback)"


class UserError(Exception):
    """A refused input, reported as one line without a traceback."""


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _exit_with(message: str) -> None:
    """The error as one line on stderr, and exit status 1."""
    line = f"main.py: error: {_one_line(message)}"
    if _LOGGING_SET_UP:
        logging.error("%s", line)  # the console and <workdir>/<mode>.log
    else:
        print(line, file=sys.stderr)
    sys.exit(EXIT_ERROR)


# ----------------------------------------------------------------------------- flag parsing errors

def _argv_value(argv, name: str):
    """The value of ``--name=V`` or ``--name V`` in ``argv``, else ``None``."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _override_paths(argv):
    """``a.b`` for each ``--config.a.b=V``, ``--config.a.b V``, ``--noconfig.a.b`` in ``argv``."""
    paths = []
    for arg in argv:
        for prefix in ("--config.", "--noconfig."):
            if arg.startswith(prefix):
                paths.append(arg[len(prefix):].split("=", 1)[0])
    return paths


def _load_config_file(path: str):
    """``get_config()`` of the config file, errors as :class:`UserError` naming the file."""
    from scoresde.config_file import ConfigFileError, load_config_file

    try:
        return load_config_file(path)
    except ConfigFileError as e:
        raise UserError(str(e)) from e


def _config_paths(config, prefix: str = ""):
    """Every field path of a ConfigDict, nested fields as ``a.b.c``."""
    paths = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if hasattr(value, "items") and callable(value.items):
            paths.extend(_config_paths(value, path + "."))
    return paths


def unknown_field_message(config, path: str):
    """``None`` if ``config.<path>`` exists, else a message that names it and suggests the nearest field
    (among its siblings when its parent exists, else among all fields)."""
    known = _config_paths(config)
    if path in known:
        return None
    parent, _, leaf = path.rpartition(".")
    if parent in known or not parent:
        siblings = [k for k in known if k.rpartition(".")[0] == parent]
        nearest = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.6)
        nearest = [f"{parent}.{nearest[0]}" if parent else nearest[0]] if nearest else []
    else:
        siblings, nearest = [], difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    if nearest:
        hint = f"did you mean --config.{nearest[0]}?"
    elif siblings:
        hint = (f"the fields of config{'.' + parent if parent else ''} are: "
                f"{', '.join(k.rpartition('.')[2] for k in siblings)}")
    else:
        hint = "no config field is close to it"
    return f"unknown config field --config.{path}: {hint}"


def flag_error_message(argv, error: Exception) -> str:
    """Say what is wrong with the command line: the config file, an override, or another flag."""
    config_path = _argv_value(argv, "config")
    if config_path is not None:
        try:
            config = _load_config_file(config_path)
        except UserError as e:
            return str(e)
        for path in _override_paths(argv):
            message = unknown_field_message(config, path)
            if message:
                return message
    return f"{_one_line(error)}; see python main.py --help"


def parse_flags(argv):
    """absl's flag parsing; its errors (an unknown ``--config.`` field, a missing or broken config file,
    a bad value) become one line unless ``--debug`` is given."""
    try:
        rest = FLAGS(argv)
        FLAGS.config.get("training")  # a config file that failed to load raises only when first used
        return rest
    except Exception as e:  # noqa: BLE001  (config_flags raises IOError, AttributeError, KeyError, ...)
        if any(arg == "--debug" or arg.lower() in ("--debug=true", "--debug=1") for arg in argv):
            raise
        _exit_with(flag_error_message(argv, e) + _DEBUG_HINT)


# ----------------------------------------------------------------------------- errors while running

_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted"}


def _chain(error: BaseException):
    """The error and those it was raised from or while handling (torch's writer turns ENOSPC into a
    RuntimeError whose context holds the OSError)."""
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def disk_error(error: BaseException):
    """The ``OSError`` of a full, read-only or forbidden file system behind ``error``, or ``None``."""
    return next((e for e in _chain(error) if isinstance(e, OSError) and e.errno in _DISK_ERRORS), None)


def previous_checkpoint(workdir: str) -> str:
    """Where the run stands on disk: the newest checkpoint, verified (every zip member's CRC), or that
    there is none."""
    from scoresde.checkpoint import CheckpointDir

    path = CheckpointDir(workdir).newest()
    if path is None:
        return f"no checkpoint had been written in {workdir} yet"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile) as e:
        bad = str(e)
    if bad is not None:
        return f"the newest checkpoint {path} is damaged ({bad})"
    return f"the previous checkpoint {path} is intact"


def _file_in_workdir(error: BaseException, workdir: str):
    """The file under ``workdir`` that the failing code was writing, when the OSError does not say (torch's
    writer does not): the ``path`` argument of the innermost frame that has one under ``workdir``."""
    base = os.path.abspath(workdir) + os.sep
    found = None
    for e in reversed(_chain(error)):
        tb = e.__traceback__
        while tb is not None:
            path = tb.tb_frame.f_locals.get("path")
            if isinstance(path, str) and os.path.abspath(path).startswith(base):
                found = path
            tb = tb.tb_next
    return found


def disk_error_message(error: OSError, workdir: str, raised: BaseException = None) -> str:
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    verb = "writing" if full or error.errno == errno.EROFS else "on"
    file = error.filename or (raised is not None and _file_in_workdir(raised, workdir))
    where = f"{verb} {file}" if file else f"{verb} a file in --workdir={workdir}"
    fix = ("free some space" if full
           else f"make --workdir={workdir} writable (or choose another)")
    return (f"{_DISK_ERRORS[error.errno]} {where}; {previous_checkpoint(workdir)}; {fix} and run the same "
            f"command again to resume")


class _LogFile(logging.FileHandler):
    """``<workdir>/<mode>.log``; if it cannot be written (disk full), one warning and the console only,
    rather than a traceback per record."""

    def handleError(self, record):
        logging.getLogger().removeHandler(self)
        error = sys.exc_info()[1]
        print(f"main.py: warning: cannot write the log file {self.baseFilename} ({_one_line(error)}); "
              f"logging to the console only", file=sys.stderr)


def _log_to(workdir: str, mode: str) -> None:
    """Log to the console and to ``<workdir>/<mode>.log`` (rank 0 only writes the file)."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    handlers = [console]
    if os.environ.get("RANK", "0") == "0":
        os.makedirs(workdir, exist_ok=True)
        handlers.append(_LogFile(os.path.join(workdir, f"{mode}.log")))  # with tracebacks
    logging.basicConfig(level=logging.DEBUG, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(message)s")
    global _LOGGING_SET_UP
    _LOGGING_SET_UP = True


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        _log_to(FLAGS.workdir, FLAGS.mode)
        import run_lib  # after flag parsing, so --help stays fast

        if FLAGS.mode == "train":
            run_lib.train(FLAGS.config, FLAGS.workdir)
        elif FLAGS.mode == "eval":
            run_lib.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.eval_folder)
        else:
            run_lib.sample(FLAGS.config, FLAGS.workdir)
    except Exception as e:  # noqa: BLE001  (every failure ends as one line; --debug re-raises)
        if FLAGS.debug:
            raise
        logging.debug("traceback", exc_info=True)  # into <workdir>/<mode>.log when it can be written
        disk = disk_error(e)
        if disk is not None:
            _exit_with(disk_error_message(disk, FLAGS.workdir, e))
        # a configuration, data or divergence problem: the message says what it is; the traceback is in
        # <workdir>/<mode>.log
        _exit_with(f"{type(e).__name__}: {e}{_DEBUG_HINT}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
