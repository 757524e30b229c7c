"""Atomic, checksummed, locked checkpoints: a kill at any moment leaves the previous file complete and
loadable; a damaged file is detected and skipped; a second process cannot take the workdir."""
import hashlib
import json
import logging
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
    assert sorted(os.listdir(path.parent)) == ["ckpt.pth", "ckpt.pth.json"]
    record = json.loads((path.parent / "ckpt.pth.json").read_text())
    data = path.read_bytes()
    assert record == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "step": 1}


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_refuses_a_pickle_that_would_run_code(tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"step": 1, "payload": _RunsCode()}, path)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="(?i)evil.pth: not a readable checkpoint.*"
                                                         "(weights only|unsupported global)") as info:
        checkpoint.load(path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)

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
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth", "ckpt.pth.json"]


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


def test_checkpoint_dir_newest_is_the_highest_step_meta_or_numbered(tmp_path):
    d = checkpoint.CheckpointDir(str(tmp_path))
    assert d.newest() is None and d.load_newest() is None and d.numbers() == []
    for n in (2, 10, 1):
        d.save_numbered(n, {"step": 100 * n})
    (tmp_path / "checkpoints" / "notes.txt").write_text("ignored")
    assert d.numbers() == [1, 2, 10]
    assert d.load_newest()[1]["step"] == 1000
    d.save_meta({"step": 1100})
    assert d.newest() == d.meta_path(1100) and d.load_newest()[1]["step"] == 1100
    d.save_meta({"step": 1000})  # a tie: the meta file is taken, both hold the same state
    assert [step for step, _ in d.candidates()] == [1100, 1000, 1000, 200, 100]


def test_two_generations_of_meta_checkpoints_are_kept(tmp_path):
    d = checkpoint.CheckpointDir(str(tmp_path))
    for step in (2, 4, 6):
        d.save_meta({"step": step})
    assert sorted(os.listdir(d.meta_dir)) == ["checkpoint_4.pth", "checkpoint_4.pth.json",
                                              "checkpoint_6.pth", "checkpoint_6.pth.json"]


def _damage(path, how):
    data = open(path, "rb").read()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    elif how == "random bytes":
        data = os.urandom(len(data))
    elif how == "one flipped byte":
        data = data[:200] + bytes([data[200] ^ 1]) + data[201:]
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how,reason", [("truncated", "truncated"), ("empty", "empty file"),
                                        ("random bytes", "do not match the checksum"),
                                        ("one flipped byte", "do not match the checksum")])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog, how, reason):
    d = checkpoint.CheckpointDir(str(tmp_path))
    d.save_numbered(1, {"step": 3, "w": torch.ones(1000)})
    d.save_meta({"step": 4, "w": torch.ones(1000)})
    d.save_meta({"step": 5, "w": torch.ones(1000)})
    _damage(d.meta_path(5), how)
    with pytest.raises(checkpoint.DamagedCheckpoint, match=reason):
        checkpoint.load(d.meta_path(5))
    damaged = []
    with caplog.at_level(logging.WARNING, logger="scoresde"):
        path, state = d.load_newest(on_damaged=damaged.append)
    assert path == d.meta_path(4) and state["step"] == 4
    assert [e.path for e in damaged] == [d.meta_path(5)]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping damaged checkpoint {d.meta_path(5)}: {damaged[0].reason}; trying the next older checkpoint"]


def test_a_file_without_checksum_that_is_not_a_checkpoint_is_damaged(tmp_path):
    d = checkpoint.CheckpointDir(str(tmp_path))
    os.makedirs(d.numbered_dir)
    with open(d.numbered_path(3), "wb") as f:
        f.write(os.urandom(5000))
    d.save_numbered(2, {"step": 20})
    assert d.load_newest()[1]["step"] == 20  # the unreadable file has no step: tried last
    with pytest.raises(checkpoint.DamagedCheckpoint, match="not a readable checkpoint"):
        checkpoint.load(d.numbered_path(3))


def test_when_no_checkpoint_is_intact_the_error_lists_what_was_tried(tmp_path):
    d = checkpoint.CheckpointDir(str(tmp_path))
    d.save_numbered(1, {"step": 3})
    d.save_meta({"step": 4})
    _damage(d.numbered_path(1), "empty")
    _damage(d.meta_path(4), "truncated")
    with pytest.raises(checkpoint.CheckpointError) as info:
        d.load_newest()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"no intact checkpoint in {tmp_path}; tried: ")
    assert f"{d.meta_path(4)} (truncated" in message and f"{d.numbered_path(1)} (empty file)" in message


def test_a_kill_between_checksum_and_rename_leaves_the_previous_version_valid(tmp_path, monkeypatch):
    """The checksum file is put in place before the checkpoint: a kill between the two leaves the old
    file with the new checksum file, which also records the old file's checksum, so the old file still
    verifies; bytes that are neither version do not."""
    d = checkpoint.CheckpointDir(str(tmp_path))
    d.save_meta({"step": 2})
    d.save_numbered(1, {"step": 3, "w": torch.zeros(10)})
    real_replace = os.replace

    def killed(src, dst):
        if dst == d.numbered_path(1):
            raise KeyboardInterrupt("killed before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        d.save_numbered(1, {"step": 3, "w": torch.ones(10)})  # the same step, other bytes (as on a GPU)
    monkeypatch.undo()
    assert "previous" in checkpoint.read_sidecar(d.numbered_path(1))
    path, state = d.load_newest()
    assert path == d.numbered_path(1) and torch.equal(state["w"], torch.zeros(10))
    _damage(path, "one flipped byte")
    assert d.load_newest()[1]["step"] == 2


def test_a_numbered_checkpoint_is_never_replaced_by_another_step(tmp_path):
    d = checkpoint.CheckpointDir(str(tmp_path))
    d.save_numbered(3, {"step": 300})
    d.save_numbered(3, {"step": 300})  # the same state again (a resumed run redoing it): allowed
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint_3.pth holds step 300; saving step 600 .*"
                                                         "training.snapshot_freq"):
        d.save_numbered(3, {"step": 600})
    assert checkpoint.load(d.numbered_path(3))["step"] == 300


def test_leftovers_of_interrupted_saves_are_removed(tmp_path):
    d = checkpoint.CheckpointDir(str(tmp_path))
    d.save_numbered(1, {"step": 3})
    d.save_meta({"step": 4})
    leftovers = [os.path.join(d.meta_dir, ".tmp-checkpoint_6.pth-abc123"),
                 os.path.join(d.numbered_dir, ".tmp-checkpoint_2.pth.json-x"),
                 os.path.join(d.meta_dir, "checkpoint_6.pth.json")]  # checksum of a file never put in place
    for path in leftovers:
        with open(path, "wb") as f:
            f.write(b"partial")
    assert sorted(d.remove_leftovers()) == sorted(leftovers)
    assert sorted(os.listdir(d.meta_dir)) == ["checkpoint_4.pth", "checkpoint_4.pth.json"]
    assert sorted(os.listdir(d.numbered_dir)) == ["checkpoint_1.pth", "checkpoint_1.pth.json"]


def test_the_workdir_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    first = checkpoint.WorkdirLock(str(tmp_path))
    assert first.acquire() is None
    holder = json.loads((tmp_path / "train.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
    with pytest.raises(checkpoint.WorkdirLocked) as info:
        checkpoint.WorkdirLock(str(tmp_path)).acquire()  # its own open file: flock refuses it too
    assert (f"is in use by another training run (pid {os.getpid()} on host {holder['host']}, started "
            f"{holder['started']}; lock file {tmp_path / 'train.lock'})") in str(info.value)
    first.release()
    assert not (tmp_path / "train.lock").exists()
    with checkpoint.WorkdirLock(str(tmp_path)):  # free again, and nothing was taken over
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_message(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = {"pid": dead.pid, "host": "node7", "started": "2026-11-30 09:00:00 UTC"}
    (tmp_path / "train.lock").write_text(json.dumps(stale))
    lock = checkpoint.WorkdirLock(str(tmp_path))
    message = lock.acquire()
    try:
        assert message == (f"took over the lock of a training run that is no longer running (pid {dead.pid} on "
                           f"host node7, started 2026-11-30 09:00:00 UTC; lock file {tmp_path / 'train.lock'})")
        assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        checkpoint.load(str(tmp_path / "nope.pth"))


def test_checkpoints_of_an_older_version_without_checksums_still_resume_in_order(tmp_path):
    """The former layout: numbered files and ``checkpoints-meta/checkpoint.pth``, no checksum files."""
    d = checkpoint.CheckpointDir(str(tmp_path))
    os.makedirs(d.numbered_dir)
    os.makedirs(d.meta_dir)
    for n in (1, 2):
        torch.save({"step": 3 * n}, d.numbered_path(n))
    legacy_meta = os.path.join(d.meta_dir, "checkpoint.pth")
    torch.save({"step": 7}, legacy_meta)
    assert d.candidates() == [(None, legacy_meta), (None, d.numbered_path(2)), (None, d.numbered_path(1))]
    assert d.load_newest()[1]["step"] == 7
    d.save_meta({"step": 8})
    assert d.load_newest()[1]["step"] == 8
    assert d.numbered_step(2) is None and d.numbered_step(2, read=True) == 6
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint_2.pth holds step 6; saving step 12"):
        d.save_numbered(2, {"step": 12})  # read from the file itself: never overwritten either
