"""Atomic checkpoints: a kill at any moment leaves the previous file complete and loadable."""
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from scoresde import checkpoint


def test_atomic_save_roundtrip_and_no_leftovers(tmp_path):
    path = tmp_path / "sub" / "ckpt.pth"
    checkpoint.atomic_save({"step": 1, "w": torch.arange(5)}, str(path))
    state = checkpoint.load(str(path))
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(5))
    assert os.listdir(path.parent) == ["ckpt.pth"]



class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_refuses_a_pickle_that_would_run_code(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"step": 1, "payload": _RunsCode()}, path)
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights only|unsupported global"):
        checkpoint.load(path)

def test_error_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pth")
    checkpoint.atomic_save({"step": 1}, path)

    def broken(obj, f, *args, **kwargs):
        f.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_save({"step": 2}, path)
    assert checkpoint.load(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_sigkill_during_saves_never_corrupts(tmp_path):
    """A child rewrites a ~40 MB checkpoint in a loop; SIGKILL it mid-way; the file still loads."""
    path = tmp_path / "ckpt.pth"
    code = (f"import torch, itertools\nfrom scoresde.checkpoint import atomic_save\n"
            f"for i in itertools.count():\n"
            f"    atomic_save({{'step': i, 'w': torch.full((10_000_000,), float(i))}}, {str(path)!r})\n")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 120
        while not path.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert path.exists(), "the child never finished a first save"
        time.sleep(1.0)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    state = checkpoint.load(str(path))
    assert state["w"].shape == (10_000_000,) and bool((state["w"] == state["step"]).all())


def test_checkpoint_dir_newest_prefers_meta_then_highest_number(tmp_path):
    d = checkpoint.CheckpointDir(str(tmp_path))
    assert d.newest() is None and d.load_newest() is None and d.numbers() == []
    for n in (2, 10, 1):
        d.save_numbered(n, {"step": n})
    (tmp_path / "checkpoints" / "notes.txt").write_text("ignored")
    assert d.numbers() == [1, 2, 10]
    assert d.load_newest()["step"] == 10
    d.save_meta({"step": 11})
    assert d.newest() == d.meta_path and d.load_newest()["step"] == 11


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        checkpoint.load(str(tmp_path / "nope.pth"))
