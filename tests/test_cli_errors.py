"""Every refused input of ``main.py`` ends with one line on stderr (``main.py: error: ...``, naming the
field, file or argument and what to do), no traceback, and a non-zero exit; ``--debug`` shows the
traceback. Includes a full disk (a few-MB tmpfs as the workdir: ENOSPC during a checkpoint save) and a
read-only workdir, where the previous checkpoint must be intact."""
import contextlib
import hashlib
import os
import re
import subprocess
import sys

import pytest
import torch

from test_main import ROOT, TINY, write_cifar_archive

DIGITS = ["--config", "configs/vp/digits.py", *TINY, "--config.training.snapshot_sampling=False"]


def run_main(*args, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def error_line(proc) -> str:
    """The one error line of a refused command, after checking that it is one line, with no traceback
    and a non-zero exit status."""
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "main.py: error:" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "main.py: error:" not in proc.stdout
    return lines[0]


# ----------------------------------------------------------------------------- command line and config

@pytest.mark.parametrize("override,expected", [
    ("--config.training.snapshot_freqq=3", "unknown config field --config.training.snapshot_freqq: "
                                           "did you mean --config.training.snapshot_freq?"),
    ("--config.trainng.n_iters=3", "unknown config field --config.trainng.n_iters: "
                                   "did you mean --config.training.n_iters?"),
    ("--config.optim.no_such_field=1", "unknown config field --config.optim.no_such_field: the fields of "
                                       "config.optim are: "),
])
def test_unknown_config_field_is_named_with_the_nearest_one(tmp_path, override, expected):
    line = error_line(run_main(*DIGITS, "--workdir", str(tmp_path), override))
    assert expected in line
    if "the fields of config.optim" in expected:
        assert "lr" in line.split("are:")[1] and "warmup" in line.split("are:")[1]
    assert not (tmp_path / "train.log").exists()  # refused before anything ran


def test_missing_config_file(tmp_path):
    line = error_line(run_main("--config", "configs/vp/no_such_config.py", "--workdir", str(tmp_path)))
    assert "config file 'configs/vp/no_such_config.py' not found" in line


@pytest.mark.parametrize("text,expected", [
    ("def get_config():\n    return dict(a=(1, 2\n", "has a syntax error at line 2"),
    ("def get_config():\n    return undefined_name\n",
     "failed to load: NameError: name 'undefined_name' is not defined"),
    ("CONFIG = 1\n", "defines no get_config() function"),
])
def test_config_file_with_an_error(tmp_path, text, expected):
    bad = tmp_path / "bad_config.py"
    bad.write_text(text)
    line = error_line(run_main("--config", str(bad), "--workdir", str(tmp_path / "run")))
    assert f"config file '{bad}' {expected}" in line


@pytest.mark.parametrize("args,expected", [
    (["--config.optim.lr=0"], "config.optim.lr = 0.0: the learning rate must be a positive number"),
    (["--config.optim.lr=-1e-3"], "config.optim.lr = -0.001: the learning rate must be a positive number"),
    (["--mode=eval", "--config.eval.begin_ckpt=5", "--config.eval.end_ckpt=2"],
     "config.eval.begin_ckpt = 5: is after eval.end_ckpt = 2"),
])
def test_impossible_config_values_name_the_field(tmp_path, args, expected):
    line = error_line(run_main(*DIGITS, "--workdir", str(tmp_path), *args))
    assert expected in line
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_eval_without_checkpoints(tmp_path):
    line = error_line(run_main(*DIGITS, "--workdir", str(tmp_path), "--mode=eval"))
    assert f"no checkpoint to evaluate: {tmp_path / 'checkpoints'} has no numbered checkpoints; train first" in line
    (tmp_path / "checkpoints").mkdir()
    for n in (3, 5):
        (tmp_path / "checkpoints" / f"checkpoint_{n}.pth").write_bytes(b"")
    line = error_line(run_main(*DIGITS, "--workdir", str(tmp_path), "--mode=eval"))  # TINY: checkpoint 1 only
    assert ("has checkpoint_3..5 but none in eval.begin_ckpt..eval.end_ckpt = 1..1; set "
            "--config.eval.begin_ckpt/--config.eval.end_ckpt to that range") in line


def test_debug_shows_the_traceback(tmp_path):
    for args in (["--config.optim.lr=0"], ["--config.training.snapshot_freqq=3"]):
        proc = run_main(*DIGITS, "--workdir", str(tmp_path), "--debug", *args)
        assert proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr


# ----------------------------------------------------------------------------- data

CIFAR = ["--config", "configs/vp/cifar10.py", *TINY, "--config.model.attn_resolutions=(16,)",
         "--config.training.n_iters=1", "--config.training.snapshot_sampling=False"]


def test_corrupt_cifar_archive_is_named_with_the_advice_to_delete_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    archive = write_cifar_archive(str(data))
    md5 = hashlib.md5(open(archive, "rb").read()).hexdigest()
    blob = bytearray(open(archive, "rb").read())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte
    open(archive, "wb").write(bytes(blob))
    line = error_line(run_main(*CIFAR, "--workdir", str(tmp_path / "run"), f"--config.data.root={data}",
                               f"--config.data.archive_md5={md5}"))
    assert f"corrupt archive {archive}" in line and "delete it and download it again" in line


def test_offline_download_says_where_to_put_the_file(tmp_path):
    data = tmp_path / "data"
    # every URL goes through a proxy that refuses connections: what an offline machine sees
    proxy = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    line = error_line(run_main(*CIFAR, "--workdir", str(tmp_path / "run"), f"--config.data.root={data}",
                               "--config.data.download=True", env=proxy))
    assert "could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in line
    assert f"put it by hand at {data / 'cifar-10-python.tar.gz'} (md5 c58f30108f718f92721af3b95e74349a)" in line
    assert not data.exists() or os.listdir(data) == []  # no partial download left behind


def test_bad_image_in_an_image_folder_is_named_before_training(tmp_path):
    from PIL import Image
    images = tmp_path / "images"
    images.mkdir()
    for i in range(9):
        Image.new("L", (20, 20), color=30 * i).save(images / f"{i}.png")
    (images / "3.png").write_text("not an image")
    line = error_line(run_main(*DIGITS, "--workdir", str(tmp_path / "run"), "--config.data.dataset=IMAGEFOLDER",
                               f"--config.data.root={images}", "--config.training.n_iters=1"))
    assert f"{images / '3.png'} is not a readable image" in line and "delete or replace it" in line
    assert not (tmp_path / "run" / "checkpoints-meta").exists()  # found before the first step


# ----------------------------------------------------------------------------- full disk, read-only workdir

@contextlib.contextmanager
def tmpfs(path, size_kb: int):
    """A tmpfs of ``size_kb`` KiB mounted at ``path``; the test is skipped (with the reason) where
    mounting is not permitted."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the disk-full and read-only tests are skipped)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def intact_checkpoint(line: str, step: int) -> None:
    """The checkpoint the message calls intact loads, and holds ``step``."""
    path = re.search(r"the previous checkpoint (\S+) is intact", line).group(1)
    assert torch.load(path, weights_only=True)["step"] == step
    assert not [f for d in (os.path.dirname(path),) for f in os.listdir(d) if f.startswith(".tmp")]


@contextlib.contextmanager
def trained_on_tmpfs(tmp_path):
    """A workdir on a 4 MiB tmpfs holding a run trained for one step: ``(workdir, command)``."""
    with tmpfs(tmp_path / "disk", 4096) as workdir:
        run = [*DIGITS, "--workdir", str(workdir)]
        first = run_main(*run, "--config.training.n_iters=1")
        assert first.returncode == 0, first.stderr[-2000:]
        yield workdir, run


@pytest.mark.slow
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    with trained_on_tmpfs(tmp_path) as (workdir, run):
        # leave 64 KiB: room for the logs, not for the next checkpoint
        stat = os.statvfs(workdir)
        free = stat.f_bavail * stat.f_frsize
        assert free > 200 * 1024, "the tmpfs is too small for this test"
        with open(workdir / "filler", "wb") as f:
            f.write(b"\0" * (free - 64 * 1024))
        line = error_line(run_main(*run, "--config.training.n_iters=2"))
        assert f"no space left on device writing {workdir / 'checkpoints'}" in line  # the numbered one of step 2
        assert "free some space and run the same command again" in line
        intact_checkpoint(line, step=1)
        os.remove(workdir / "filler")
        again = run_main(*run, "--config.training.n_iters=2")  # the same command, with room: resumes
        assert again.returncode == 0 and "resuming at step 1" in again.stderr, again.stderr[-2000:]


def _mtimes(folder):
    return {f: os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files}


@pytest.mark.slow
def test_read_only_workdir_keeps_the_previous_checkpoint(tmp_path):
    with trained_on_tmpfs(tmp_path) as (workdir, run):
        before = _mtimes(workdir)
        subprocess.run(["mount", "-o", "remount,ro", str(workdir)], check=True)
        line = error_line(run_main(*run, "--config.training.n_iters=2"))
        assert "read-only file system writing" in line and f"make --workdir={workdir} writable" in line
        intact_checkpoint(line, step=1)
        assert _mtimes(workdir) == before
