"""Evaluation that follows training (``eval.wait``): each numbered checkpoint is taken once, in order, only
when complete (a slow copy, a missing checksum file, a checksum file without its checkpoint are waited for),
and the follower stops after ``eval.end_ckpt`` or after ``eval.wait_timeout`` without a new checkpoint. The
decisions are rank 0's, broadcast to every rank. Most tests run on a fake clock whose ``sleep`` advances
time and performs the writes scheduled for it, so they are exact and take no real waiting."""
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import threading

import pytest
import torch

import run_lib
from scoresde import checkpoint, distributed
from scoresde.follow import follow_numbered
from test_run_lib import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Timeline:
    """A fake clock: ``sleep`` advances it and runs the events ``(time, fn)`` due by then."""

    def __init__(self, events=()):
        self.now, self.sleeps = 0.0, 0
        self.events = sorted(events, key=lambda event: event[0])

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        while self.events and self.events[0][0] <= self.now:
            self.events.pop(0)[1]()


def follow(cdir, begin, end, timeline, *, timeout=100.0, poll=1.0, settle=None, work=0.0, on_yield=None, **kw):
    """``[(n, time)]`` of what the follower yields; each yield ``work``s seconds (the evaluation)."""
    seen = []
    for n in follow_numbered(cdir, begin, end, timeout=timeout, poll_interval=poll, settle=settle,
                             clock=timeline.clock, sleep=timeline.sleep, **kw):
        seen.append((n, timeline.now))
        if on_yield is not None:
            on_yield(n)
        timeline.now += work
    return seen


def state(step: int) -> dict:
    return {"step": step, "weights": torch.arange(4000, dtype=torch.float32) * step}


def staged(tmp_path, step: int):
    """The bytes of a checkpoint of ``step`` and of its checksum file, as training writes them."""
    path = str(tmp_path / "staging" / f"checkpoint_{step}.pth")
    checkpoint.atomic_save(state(step), path)
    with open(path, "rb") as f, open(checkpoint.sidecar_path(path), "rb") as g:
        return f.read(), g.read()


def append(path: str, data: bytes):
    def write():
        with open(path, "ab") as f:
            f.write(data)
    return write


def messages(caplog, text: str):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ----------------------------------------------------------------------------- the follower on a fake clock

def test_each_checkpoint_is_yielded_once_in_order_as_written_then_it_stops_after_end(tmp_path, caplog):
    cdir = checkpoint.CheckpointDir(str(tmp_path))
    save = lambda n: (lambda: cdir.save_numbered(n, state(3 * n)))  # noqa: E731
    save(1)()
    timeline = Timeline([(2.5, save(2)), (5.5, save(3)), (6.5, save(4))])
    with caplog.at_level(logging.INFO, logger="scoresde"):
        seen = follow(cdir, 1, 3, timeline, info=distributed.DistInfo())  # a world of one: no broadcast
    # ready the moment they appear (checksum file first, rename last): taken at the first poll after
    assert seen == [(1, 0.0), (2, 3.0), (3, 6.0)]
    assert timeline.sleeps == 6  # stopped after 3 without waiting for more; checkpoint 4 is out of range
    # one line while waiting for each, not one per poll, and one saying why it stopped
    assert len(messages(caplog, "waiting for checkpoint")) == 2
    assert messages(caplog, "stopped following") == [
        f"stopped following {cdir.numbered_dir}: checkpoint 3, the last one asked for, is done"]


def test_it_stops_after_the_timeout_without_a_new_checkpoint_not_counting_evaluation_time(tmp_path, caplog):
    cdir = checkpoint.CheckpointDir(str(tmp_path))
    cdir.save_numbered(1, state(3))
    timeline = Timeline()
    with caplog.at_level(logging.INFO, logger="scoresde"):
        seen = follow(cdir, 1, 5, timeline, timeout=3.5, poll=1.0, work=100.0)
    # checkpoint 1 took 100 s to evaluate; the 3.5 s count from then: polls at 101, 102, 103, stop at 104
    assert seen == [(1, 0.0)] and timeline.now == 104.0 and timeline.sleeps == 4
    assert messages(caplog, "stopped following") == [
        f"stopped following {cdir.numbered_dir}: no new checkpoint for 3.5 s; {cdir.numbered_path(2)} was not written"]
    assert len(messages(caplog, "waiting for checkpoint")) == 1


def test_nothing_ever_written_stops_after_the_timeout(tmp_path):
    timeline = Timeline()
    assert follow(checkpoint.CheckpointDir(str(tmp_path)), 0, 9, timeline, timeout=2.0, poll=0.5) == []
    assert timeline.now == 2.0


@pytest.mark.parametrize("checksum_first", [True, False])
def test_a_slow_copy_is_taken_only_when_complete_and_once(tmp_path, caplog, checksum_first):
    data, sidecar = staged(tmp_path, 3)
    cdir = checkpoint.CheckpointDir(str(tmp_path / "run"))
    os.makedirs(cdir.numbered_dir)
    path = cdir.numbered_path(1)
    quarter = len(data) // 4
    chunks = [data[:quarter], data[quarter:2 * quarter], data[2 * quarter:3 * quarter], data[3 * quarter:]]
    events = [(0.5 + i, append(path, chunk)) for i, chunk in enumerate(chunks)]  # the last at t = 3.5
    # the checksum file before the first byte, or 2 s after the last one
    events.append((0.0 if checksum_first else 5.5, append(checkpoint.sidecar_path(path), sidecar)))
    timeline = Timeline(events)
    sizes = []
    with caplog.at_level(logging.INFO, logger="scoresde"):
        seen = follow(cdir, 1, 1, timeline, settle=10.0, on_yield=lambda n: sizes.append(os.path.getsize(path)))
    assert seen == [(1, 4.0 if checksum_first else 6.0)]  # the first poll after the file became complete
    assert sizes == [len(data)] and checkpoint.load(path)["step"] == 3
    reason = (f"(truncated: {quarter} bytes, {len(data)} written)" if checksum_first
              else "no checksum file checkpoint_1.pth.json yet")
    incomplete = messages(caplog, "is there but not complete yet")
    assert len(incomplete) == 1 and reason in incomplete[0]  # logged once, not at every poll


def test_a_checksum_file_without_its_checkpoint_is_waited_for(tmp_path):
    # the state atomic_save leaves between writing the checksum file and renaming the checkpoint into place
    data, sidecar = staged(tmp_path, 3)
    cdir = checkpoint.CheckpointDir(str(tmp_path / "run"))
    os.makedirs(cdir.numbered_dir)
    path = cdir.numbered_path(1)
    append(checkpoint.sidecar_path(path), sidecar)()
    timeline = Timeline([(7.5, append(path, data))])
    assert follow(cdir, 1, 1, timeline, settle=2.0) == [(1, 8.0)]


def test_a_file_that_stops_changing_incomplete_is_handed_to_the_loaders_warning(tmp_path, caplog):
    data, sidecar = staged(tmp_path, 3)
    cdir = checkpoint.CheckpointDir(str(tmp_path / "run"))
    os.makedirs(cdir.numbered_dir)
    path = cdir.numbered_path(1)
    append(checkpoint.sidecar_path(path), sidecar)()
    timeline = Timeline([(0.5, append(path, data[:1000])), (1.5, append(path, data[1000:2000]))])
    with caplog.at_level(logging.INFO, logger="scoresde"):
        seen = follow(cdir, 1, 1, timeline, poll=1.0)  # settle: three polls
    assert seen == [(1, 5.0)]  # last changed at the poll of t = 2; unchanged for 3 s at t = 5
    assert len(messages(caplog, "has not changed for 3 s and is still not complete (truncated")) == 1
    with pytest.raises(checkpoint.DamagedCheckpoint, match="truncated: 2000 bytes"):
        checkpoint.load(path)  # what evaluate() then reports and skips


def test_a_file_without_checksum_file_is_taken_once_it_stops_changing(tmp_path):
    # an older version's checkpoint (no checksum file), copied in slowly: only its stillness tells
    data, _ = staged(tmp_path, 3)
    cdir = checkpoint.CheckpointDir(str(tmp_path / "run"))
    os.makedirs(cdir.numbered_dir)
    path = cdir.numbered_path(1)
    half = len(data) // 2
    timeline = Timeline([(0.5, append(path, data[:half])), (1.5, append(path, data[half:]))])
    sizes = []
    seen = follow(cdir, 1, 1, timeline, settle=2.5, on_yield=lambda n: sizes.append(os.path.getsize(path)))
    assert seen == [(1, 5.0)]  # last changed at the poll of t = 2; unchanged for 2.5 s by t = 5
    assert sizes == [len(data)] and checkpoint.load(path)["step"] == 3


def test_a_number_never_written_is_skipped_once_a_later_one_exists(tmp_path, caplog):
    cdir = checkpoint.CheckpointDir(str(tmp_path))
    cdir.save_numbered(1, state(3))
    timeline = Timeline([(2.5, lambda: cdir.save_numbered(3, state(9)))])
    with caplog.at_level(logging.INFO, logger="scoresde"):
        assert follow(cdir, 1, 3, timeline) == [(1, 0.0), (3, 3.0)]
    assert messages(caplog, "was never written") == [
        f"checkpoint {cdir.numbered_path(2)} was never written (checkpoint_3.pth exists); skipped"]


@pytest.mark.parametrize("changes,match", [
    (dict(timeout=0.0), "follow_numbered: timeout = 0.0 must be a positive number of seconds"),
    (dict(poll_interval=-1.0), "follow_numbered: poll_interval = -1.0 must be a positive number of seconds"),
    (dict(begin=3), "follow_numbered: begin = 3 is after end = 2"),
])
def test_bad_arguments_are_refused_at_the_call(tmp_path, changes, match):
    kwargs = dict(begin=1, end=2, timeout=1.0, poll_interval=1.0)
    kwargs.update(changes)
    begin, end = kwargs.pop("begin"), kwargs.pop("end")
    with pytest.raises(ValueError, match=match):
        follow_numbered(checkpoint.CheckpointDir(str(tmp_path)), begin, end, **kwargs)  # before any next()


def test_broadcast_in_a_world_of_one_is_the_value_itself():
    value = {"n": 3}
    assert distributed.broadcast_from_main(value, distributed.DistInfo()) is value


WORKER = r'''
import json, os, sys
sys.path.insert(0, {root!r})
from scoresde import checkpoint, distributed
from scoresde.follow import follow_numbered

info = distributed.init("cpu")
# rank 1 looks at an empty directory: only rank 0's decisions can give it the sequence
cdir = checkpoint.CheckpointDir(os.path.join({tmp!r}, f"rank{{info.rank}}"))
if info.is_main:
    for n in (1, 3):
        cdir.save_numbered(n, {{"step": n}})
seen = []
for n in follow_numbered(cdir, 1, 6, timeout=0.5, poll_interval=0.02, info=info):
    seen.append(n)
    if info.is_main and n == 3:
        cdir.save_numbered(4, {{"step": 4}})  # training writes the next one while 3 is evaluated
with open(os.path.join({tmp!r}, f"seen{{info.rank}}.json"), "w") as f:
    json.dump(seen, f)
distributed.cleanup(info)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_follow_the_same_sequence_decided_by_rank_0(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=ROOT, tmp=str(tmp_path)))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for r in (0, 1):
        assert json.loads((tmp_path / f"seen{r}.json").read_text()) == [1, 3, 4]  # 2 never written; 5 never came


# ----------------------------------------------------------------------------- run_lib.evaluate with eval.wait

def follow_config(**changes):
    return tiny_config(**{"eval.wait": True, "eval.poll_interval": 0.02, "eval.enable_bpd": False,
                          "eval.enable_sampling": False, "training.snapshot_sampling": False, **changes})


def count_calls(monkeypatch, name):
    calls = []
    original = getattr(run_lib, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    monkeypatch.setattr(run_lib, name, counted)
    return calls


@pytest.fixture(scope="module")
def followed_training(tmp_path_factory):
    """A 6-step run (checkpoints 1 and 2) trained in a thread while ``evaluate`` follows it."""
    workdir = str(tmp_path_factory.mktemp("followed"))
    patch = pytest.MonkeyPatch()
    loaded = []
    original_load = run_lib.load_for_inference
    patch.setattr(run_lib, "load_for_inference",
                  lambda run, path, **kw: loaded.append(path) or original_load(run, path, **kw))
    losses = count_calls(patch, "eval_loss")
    trainer = threading.Thread(target=run_lib.train, args=(follow_config(), workdir))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("scoresde")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        trainer.start()
        results = run_lib.evaluate(follow_config(**{"eval.wait_timeout": 120.0}), workdir)
        trainer.join()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        patch.undo()
    return workdir, results, loaded, len(losses), [r.getMessage() for r in records]


def test_evaluation_follows_a_training_run_taking_each_checkpoint_once(followed_training):
    workdir, results, loaded, num_losses, logged = followed_training
    cdir = checkpoint.CheckpointDir(workdir)
    assert sorted(results) == [1, 2] and num_losses == 2
    assert loaded == [cdir.numbered_path(1), cdir.numbered_path(2)]
    for n, step in ((1, 3), (2, 6)):
        with open(os.path.join(workdir, "eval", f"ckpt_{n}.json")) as f:
            assert json.load(f)["step"] == step  # the complete checkpoint of that step was evaluated
    assert f"stopped following {cdir.numbered_dir}: checkpoint 2, the last one asked for, is done" in logged
    assert sum("waiting for checkpoint" in m for m in logged) <= 2  # at most once per checkpoint


def test_a_rerun_that_follows_again_evaluates_nothing_twice(followed_training, monkeypatch):
    workdir, first, *_ = followed_training
    losses = count_calls(monkeypatch, "eval_loss")
    assert run_lib.evaluate(follow_config(**{"eval.wait_timeout": 5.0}), workdir) == first
    assert losses == []


def test_evaluate_never_loads_a_checkpoint_being_copied_in(followed_training, tmp_path, monkeypatch):
    source = checkpoint.CheckpointDir(followed_training[0]).numbered_path(2)
    with open(source, "rb") as f, open(checkpoint.sidecar_path(source), "rb") as g:
        data, sidecar = f.read(), g.read()
    cdir = checkpoint.CheckpointDir(str(tmp_path))
    os.makedirs(cdir.numbered_dir)
    path = cdir.numbered_path(2)
    size = len(data) // 5 + 1
    events = [(0.5 + i, append(path, data[i * size:(i + 1) * size])) for i in range(5)]
    timeline = Timeline(events + [(0.0, append(checkpoint.sidecar_path(path), sidecar))])
    monkeypatch.setattr(run_lib, "follow_numbered",
                        functools.partial(follow_numbered, clock=timeline.clock, sleep=timeline.sleep))
    sizes = []
    original_load = checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda p, **kw: sizes.append(os.path.getsize(p)) or original_load(p, **kw))
    results = run_lib.evaluate(follow_config(**{"eval.poll_interval": 1.0, "eval.wait_timeout": 30.0}), str(tmp_path))
    assert sorted(results) == [2] and results[2]["step"] == 6
    assert sizes == [len(data)]  # loaded once, complete
    assert timeline.now == 5.0  # the first poll after the last chunk (t = 4.5)


def test_evaluate_waits_then_stops_at_the_timeout_when_nothing_comes(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="no numbered checkpoints; train first"):
        run_lib.evaluate(tiny_config(), str(tmp_path))  # without eval.wait
    with caplog.at_level(logging.INFO, logger="scoresde"):
        assert run_lib.evaluate(follow_config(**{"eval.wait_timeout": 0.1}), str(tmp_path)) == {}
    assert messages(caplog, "stopped following") == [
        f"stopped following {tmp_path}/checkpoints: no new checkpoint for 0.1 s; "
        f"{tmp_path}/checkpoints/checkpoint_1.pth was not written"]


@pytest.mark.parametrize("changes,match", [
    ({"eval.wait_timeout": 0.0}, "config.eval.wait_timeout = 0.0: must be a positive number of seconds"),
    ({"eval.wait_timeout": float("inf")}, "config.eval.wait_timeout = inf: must be a positive number of seconds"),
    ({"eval.poll_interval": -1.0}, "config.eval.poll_interval = -1.0: must be a positive number of seconds"),
])
def test_bad_wait_fields_are_refused_naming_them(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        run_lib.evaluate(follow_config(**changes), str(tmp_path))


def test_the_command_line_exits_0_saying_why_it_stopped(tmp_path):
    from test_cli_errors import DIGITS, run_main
    proc = run_main(*DIGITS, "--workdir", str(tmp_path), "--mode", "eval", "--config.eval.wait=True",
                    "--config.eval.wait_timeout=0.3", "--config.eval.poll_interval=0.05")
    assert proc.returncode == 0, proc.stderr[-3000:]
    waiting = [line for line in proc.stderr.splitlines() if "waiting for checkpoint" in line]
    assert len(waiting) == 1  # one line while waiting, not one per poll
    assert (f"stopped following {tmp_path}/checkpoints: no new checkpoint for 0.3 s; "
            f"{tmp_path}/checkpoints/checkpoint_1.pth was not written") in proc.stderr
