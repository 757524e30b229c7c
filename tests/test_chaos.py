"""Chaos: a toy training run killed (SIGKILL) at random moments and inside every phase of a save, with
a truncated and a random-bytes newest checkpoint on the way, ends bit-identical to the uninterrupted
run; every resume starts from the newest intact checkpoint; no temporary file is left.

The test runs this file as a script (a fresh process, so forking is safe with one OpenMP thread): it
imports torch once, then runs each training attempt in a forked child, which it kills.
"""
import glob
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANDOM_KILLS = 20
# (what is patched, which call kills): inside torch.save, after the checksum file is in place but before
# the rename, between the rename and the directory fsync, and while the checksum file is written
SAVE_KILLS = [("torch.save", 1), ("replace-checkpoint", 2), ("fsync-dir", 1), ("replace-checksum", 2),
              ("torch.save", 2), ("replace-checkpoint", 1), ("fsync-dir", 2), ("replace-checksum", 1)]


@pytest.mark.slow
def test_chaos_kills_and_damage_never_lose_or_change_the_run(tmp_path):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path), "20261130"],
                          capture_output=True, text=True, cwd=ROOT, timeout=1200,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["random_kills"] >= 20 and report["save_kills"] == len(SAVE_KILLS)
    assert report["damaged"] == ["truncated", "random bytes"]
    assert report["resumes_checked"] >= 20


# ----------------------------------------------------------------------------- the driver (a script)

def _config():
    from configs.vp import toy
    config = toy.get_config()
    t = config.training
    t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption = 100, 20, 5
    t.batch_size, t.log_freq, t.eval_freq, t.snapshot_sampling = 64, 10, 50, False
    config.data.num_toy_points = 512
    config.model.nf = 16
    config.optim.warmup = 10
    return config


def _intact_steps(workdir):
    """Steps of the checkpoint files whose bytes match their checksum files (checked here with hashlib,
    independently of scoresde.checkpoint)."""
    steps = []
    for path in glob.glob(os.path.join(workdir, "checkpoints*", "checkpoint_*.pth")):
        try:
            with open(path + ".json") as f:
                record = json.load(f)
            with open(path, "rb") as f:
                data = f.read()
        except (OSError, ValueError):
            continue
        versions = [record] + ([record["previous"]] if "previous" in record else [])  # see scoresde.checkpoint
        if any(len(data) == v["size"] and hashlib.sha256(data).hexdigest() == v["sha256"] for v in versions):
            steps.append((record["step"], path))
    return sorted(steps)


def _child(workdir, log_path, kill):
    """Body of a forked attempt: train, with ``kill`` (or not) armed; never returns."""
    import logging

    import run_lib
    from scoresde import checkpoint
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True, format="%(levelname)s %(message)s")

    if kill is not None and kill[0] == "at step":  # a random moment once this step is reached
        import threading
        _, target, delay = kill
        real_forward_backward = run_lib.forward_backward
        armed = []

        def forward_backward(run, *args, **kwargs):
            if run.step >= target and not armed:
                armed.append(threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)))
                armed[0].start()
            return real_forward_backward(run, *args, **kwargs)
        run_lib.forward_backward = forward_backward
    elif kill is not None:
        what, nth = kill
        calls = [0]

        def fire():
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

        if what == "torch.save":
            real_save = checkpoint.torch.save

            def save(obj, f, *args, **kwargs):
                calls[0] += 1
                if calls[0] == nth:
                    f.write(b"half a checkpoint")
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                real_save(obj, f, *args, **kwargs)
            checkpoint.torch.save = save
        elif what.startswith("replace"):
            real_replace = os.replace
            suffix = ".pth" if what == "replace-checkpoint" else ".json"

            def replace(src, dst):
                if str(dst).endswith(suffix) and "checkpoint_" in str(dst):
                    fire()
                real_replace(src, dst)
            checkpoint.os.replace = replace
        else:
            real_fsync_dir = checkpoint._fsync_dir

            def fsync_dir(directory):
                fire()
                real_fsync_dir(directory)
            checkpoint._fsync_dir = fsync_dir
    try:
        run_lib.train(_config(), workdir)
    except BaseException:
        import traceback
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _attempt(workdir, log_path, kill=None):
    """Fork one training attempt (it kills itself as ``kill`` says); returns (exit status, seconds)."""
    start = time.time()
    pid = os.fork()
    if pid == 0:
        _child(workdir, log_path, kill)
    _, status = os.waitpid(pid, 0)
    return status, time.time() - start


def _damage(workdir, how):
    step, path = _intact_steps(workdir)[-1]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))
    return path


def _log_since(log_path, offset):
    with open(log_path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def _resumed_step(text):
    found = re.search(r"INFO (resuming|starting) at step (\d+)", text)
    return None if found is None else int(found.group(2))


def _same_state(a, b):
    import torch
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def main(root, seed):
    import torch
    torch.set_num_threads(1)
    import run_lib
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    from scoresde import checkpoint
    run_lib.setup(_config(), os.path.join(root, "unused"))  # every lazy import (Adam's is seconds) before the forks

    rng = random.Random(seed)
    reference, chaos = os.path.join(root, "reference"), os.path.join(root, "chaos")
    log_path = os.path.join(root, "attempts.log")
    status, duration = _attempt(reference, os.path.join(root, "reference.log"))
    assert status == 0, open(os.path.join(root, "reference.log")).read()[-3000:]

    # random kills at increasing steps (so the run gets on), each a random moment after its step began:
    # inside a step, an evaluation or a save; the save kills in between
    n_iters = _config().training.n_iters
    steps = sorted(rng.sample(range(1, n_iters - 10), RANDOM_KILLS))  # >= 10 steps left: the kill lands
    plan = [("random", ("at step", step, rng.uniform(0.0, 0.05))) for step in steps]
    for i, kill in enumerate(SAVE_KILLS):
        plan.insert(1 + i * (len(plan) // len(SAVE_KILLS)), ("save", kill))
    plan.insert(len(plan) // 3, ("damage", "truncated"))
    plan.insert(2 * len(plan) // 3, ("damage", "random bytes"))
    report = {"random_kills": 0, "save_kills": 0, "damaged": [], "resumes_checked": 0,
              "seconds_uninterrupted": round(duration, 2)}
    damages, damaged_path = [], None
    for kind, arg in plan + [("finish", None)]:
        if kind == "damage":
            damages.append(arg)
            continue
        if damages and _intact_steps(chaos):  # the newest checkpoint, once there is one
            how = damages.pop(0)
            damaged_path = _damage(chaos, how)
            report["damaged"].append(how)
        intact = _intact_steps(chaos)
        expected = intact[-1][0] if intact else 0
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        status, _ = _attempt(chaos, log_path, kill=arg)
        text = _log_since(log_path, offset)
        if damaged_path is not None:  # the attempt after a damage skipped the file, naming it
            assert f"WARNING skipping damaged checkpoint {damaged_path}: " in text, text[-3000:]
            damaged_path = None
        resumed = _resumed_step(text)
        if resumed is not None:  # an attempt killed very early may not have got so far
            assert resumed == expected, f"{kind} attempt resumed at step {resumed}, newest intact: {expected}"
            report["resumes_checked"] += 1
        if kind == "finish":
            assert status == 0, open(log_path).read()[-3000:]
            continue
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert killed or status == 0, f"{kind} attempt failed: " + open(log_path).read()[-3000:]
        if killed:
            report[f"{kind}_kills"] += 1

    # bit-identical to the uninterrupted run: every numbered checkpoint and the final state
    ref_dir, chaos_dir = checkpoint.CheckpointDir(reference), checkpoint.CheckpointDir(chaos)
    assert chaos_dir.numbers() == ref_dir.numbers() == [1, 2, 3, 4, 5]
    for n in ref_dir.numbers():
        a, b = checkpoint.load(ref_dir.numbered_path(n)), checkpoint.load(chaos_dir.numbered_path(n))
        assert _same_state(a, b), f"checkpoint {n} differs from the uninterrupted run's"
    leftovers = [p for p in glob.glob(os.path.join(chaos, "**", ".tmp-*"), recursive=True)]
    assert not leftovers, leftovers
    assert not os.path.exists(os.path.join(chaos, "train.lock"))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
