"""Sample shards (``scoresde.shards``): atomic writes, damaged shards redrawn, another draw's folder refused,
ownership by rank, ordered assembly; and ``--mode sample`` drawn by two processes (Gloo), killed with SIGKILL
mid-draw and resumed, against one process."""
import json
import logging
import os
import zipfile

import numpy as np
import pytest
import torch

from scoresde import checkpoint, shards
from scoresde.shards import ShardError, ShardStore

IDENTITY = {"seed": 42, "step": 6, "sampler": "ddim", "options": {"nfe": 3}, "shape": (1, 16, 16)}


def store(folder, total=10, shard_size=4, **changes):
    return ShardStore(str(folder), total=total, shard_size=shard_size, identity={**IDENTITY, **changes})


def images(shard):
    """Samples whose value is their index, so that order and ownership show."""
    return np.broadcast_to(shard.indices()[:, None, None, None] % 256, (len(shard), 2, 2, 1)).astype(np.uint8)


def fill(s, shard_list=None):
    for shard in shard_list if shard_list is not None else s.shards:
        s.write(shard, images(shard), labels=shard.indices() % 3, nfe=10 * len(shard))


def test_shards_cut_the_indices_and_are_owned_round_robin(tmp_path):
    s = store(tmp_path, total=10, shard_size=4)
    assert [(x.start, x.end, x.name) for x in s.shards] == [
        (0, 4, "samples_000000-000004.npz"), (4, 8, "samples_000004-000008.npz"), (8, 10, "samples_000008-000010.npz")]
    s = store(tmp_path, total=23, shard_size=2)
    assert [x.number for x in s.owned(0, 3)] == [0, 3, 6, 9]
    assert [x.number for x in s.owned(1, 3)] == [1, 4, 7, 10]
    assert [x.number for x in s.owned(2, 3)] == [2, 5, 8, 11]
    assert sorted(x.number for r in range(5) for x in s.owned(r, 5)) == list(range(12))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        s.owned(2, 2)
    with pytest.raises(ValueError, match="shard_size must be a positive integer, got 0"):
        store(tmp_path, shard_size=0)


def test_missing_resumes_at_the_first_missing_shard_and_load_all_is_in_index_order(tmp_path):
    s = store(tmp_path, total=10, shard_size=2)
    s.prepare()
    assert [x.number for x in s.missing(1, 2)] == [1, 3]
    fill(s, [s.shards[1], s.shards[4], s.shards[0]])  # written out of order
    assert [x.number for x in s.missing(0, 2)] == [2]
    assert [x.number for x in s.missing(1, 2)] == [3]
    assert [x.number for x in s.missing(0, 1)] == [2, 3]
    with pytest.raises(ShardError, match=r"lacks the samples 4\.\.7 \(2 of 5 shards\); draw them first: rerun "
                                         r"the same command"):
        s.load_all()
    with pytest.raises(ShardError, match="lacks the samples 4..7"):
        s.finish()
    fill(s, [s.shards[3], s.shards[2]])
    everything = s.load_all()
    assert everything["indices"].dtype == np.int64 and everything["indices"].tolist() == list(range(10))
    assert everything["samples"][:, 0, 0, 0].tolist() == list(range(10))
    assert everything["labels"].tolist() == [i % 3 for i in range(10)] and everything["nfe"] == 100
    assert s.nfe() == 100
    manifest = s.finish()
    assert manifest["complete"] and manifest["nfe"] == 100
    assert manifest["identity"] == {**json.loads(json.dumps(IDENTITY)), "total": 10, "shard_size": 2}
    assert [m["name"] for m in manifest["shards"]] == [x.name for x in s.shards]
    assert manifest["shards"][2]["sha256"] == checkpoint.file_sha256(s.path(s.shards[2]))


def test_missing_ranges_are_merged():
    cut = [shards.Shard(k, 3 * k, 3 * k + 3) for k in range(6)]
    assert shards.index_ranges([cut[1], cut[2], cut[4]]) == "3..8, 12..14"


def test_writes_are_atomic_and_a_crash_mid_write_keeps_the_previous_state(tmp_path, monkeypatch):
    s = store(tmp_path)
    s.prepare()
    fill(s, s.shards[:1])
    before = open(s.path(s.shards[0]), "rb").read()
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "samples_000000-000004.npz"]

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a signal arriving between the temporary file and the rename
    monkeypatch.setattr(os, "replace", crash)
    for shard in s.shards[:2]:  # a shard that is there, and one that is not
        with pytest.raises(KeyboardInterrupt):
            s.write(shard, images(shard) + 1)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "samples_000000-000004.npz"]  # no temporary file
    assert open(s.path(s.shards[0]), "rb").read() == before
    assert [x.number for x in s.missing()] == [1, 2]


def test_temporary_files_of_a_killed_write_are_removed_at_prepare(tmp_path, caplog):
    s = store(tmp_path)
    s.prepare()
    left = tmp_path / ".tmp-samples_000004-000008.npz-abc123"  # what SIGKILL during a write leaves
    left.write_bytes(b"PK\x03\x04 half a zip")
    with caplog.at_level(logging.WARNING, logger="scoresde"):
        assert store(tmp_path).prepare() == [str(left)]
    assert not left.exists() and f"removed {left}, left by a write that was interrupted" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "other_indices"])
def test_a_damaged_shard_is_set_aside_and_drawn_again(tmp_path, caplog, damage):
    s = store(tmp_path, total=8, shard_size=4)
    s.prepare()
    fill(s)
    path = s.path(s.shards[1])
    data = open(path, "rb").read()
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":  # one byte inside the compressed samples: the zip's CRC catches it
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("samples.npy")
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    elif damage == "empty":
        data = b""
    else:
        s.write(s.shards[0], images(s.shards[0]))
        data = open(s.path(s.shards[0]), "rb").read()
    open(path, "wb").write(data)
    with caplog.at_level(logging.WARNING, logger="scoresde"):
        assert [x.number for x in s.missing(0, 1)] == [1]
    assert f"damaged sample shard {path} (" in caplog.text
    assert f"renamed to {path}.damaged and drawn again" in caplog.text
    assert not os.path.exists(path) and os.path.exists(path + ".damaged")
    fill(s, s.shards[1:])
    assert s.missing() == [] and s.load_all()["indices"].tolist() == list(range(8))


def test_another_draw_in_the_folder_is_refused_naming_the_fields(tmp_path):
    store(tmp_path).prepare()
    store(tmp_path).prepare()  # the same draw: resumes
    with pytest.raises(ShardError) as e:
        store(tmp_path, total=12, step=7)
    assert str(e.value) == (f"{tmp_path} holds samples of another draw (step: 6 there, 7 now; total: 10 there, "
                            "12 now); use another folder or delete it to draw afresh")
    with pytest.raises(ShardError, match=r"options: \{\"nfe\": 3\} there, \{\"nfe\": 5\} now\); use another folder"):
        store(tmp_path, options={"nfe": 5})
    with pytest.raises(ShardError, match=r"labels: \"\(unset\)\" there, \[0, 1\] now"):
        store(tmp_path, labels=[0, 1])


def test_shards_without_a_manifest_are_refused(tmp_path):
    s = store(tmp_path)
    s.prepare()
    fill(s, s.shards[:1])
    os.remove(s.manifest_path)
    with pytest.raises(ShardError, match=f"{tmp_path} holds sample shards but no manifest.json, so what they were "
                                         "drawn with is unknown; use another folder or delete it"):
        store(tmp_path)


@pytest.mark.parametrize("field", ["sampling.shard_size", "eval.shard_size"])
@pytest.mark.parametrize("value", [0, -3])  # ml_collections refuses floats and bools for an int field
def test_shard_sizes_are_checked_naming_the_field(field, value):
    pytest.importorskip("sklearn")
    import run_lib
    from test_run_lib import tiny_config
    with pytest.raises(ValueError) as e:
        run_lib.check_config(tiny_config(**{field: value}))
    assert str(e.value) == f"config.{field} = {value!r}: must be a positive integer"


# ----------------------------------------------------------------------------- --mode sample and eval on shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COND = {"model.num_classes": 10, "training.label_dropout": 0.2}
SHARD_NAMES = ["samples_000000-000003.npz", "samples_000003-000006.npz", "samples_000006-000009.npz",
               "samples_000009-000010.npz"]


def sample_config(folder):
    """10 class-conditional samples in shards of 3 (the last holds 1), batches of 2 (a shard's last batch
    holds 1): stochastic pc (Euler-Maruyama) with 3 steps."""
    from test_run_lib import tiny_config
    config = tiny_config(**COND)
    s = config.sampling
    s.num_samples, s.batch_size, s.shard_size, s.folder = 10, 2, 3, folder
    s.sampler, s.predictor, s.corrector = "pc", "euler_maruyama", "none"
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("sklearn")
    import run_lib
    from test_run_lib import tiny_config
    workdir = str(tmp_path_factory.mktemp("cond"))
    config = tiny_config(**COND)
    config.training.n_iters, config.training.snapshot_freq, config.training.snapshot_sampling = 2, 2, False
    run_lib.train(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def one_process(trained):
    """The reference: ``--mode sample`` in this process, a world of one."""
    import run_lib
    return run_lib.sample(sample_config("one"), trained)


def shard_arrays(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("samples_") and name.endswith(".npz"):
            with np.load(os.path.join(folder, name)) as data:
                out[name] = {key: data[key] for key in data.files}
    return out


def assert_same_draw(stem, reference):
    """The same shard files holding bitwise the same arrays, and the same assembled ``.npz``."""
    mine, theirs = shard_arrays(stem + "_shards"), shard_arrays(reference + "_shards")
    assert sorted(mine) == sorted(theirs) == SHARD_NAMES
    for name in SHARD_NAMES:
        assert sorted(mine[name]) == ["indices", "labels", "nfe", "samples"]
        for key in mine[name]:
            assert np.array_equal(mine[name][key], theirs[name][key]), (name, key)
    with np.load(stem + ".npz") as a, np.load(reference + ".npz") as b:
        assert sorted(a.files) == sorted(b.files) == ["labels", "samples"]
        assert np.array_equal(a["samples"], b["samples"]) and np.array_equal(a["labels"], b["labels"])
    assert not [n for n in os.listdir(stem + "_shards") if n.startswith(".tmp-")]


def test_one_process_draws_shards_by_index(one_process, trained):
    assert os.path.basename(one_process) == "step_2_pc_seed42"
    with np.load(one_process + ".npz") as saved:
        assert saved["samples"].shape == (10, 16, 16, 1) and saved["samples"].dtype == np.uint8
        assert saved["labels"].tolist() == [i % 10 for i in range(10)]  # label of sample i: cycle[i % 10]
    parts = shard_arrays(one_process + "_shards")
    assert sorted(parts) == SHARD_NAMES
    assert np.concatenate([parts[n]["indices"] for n in SHARD_NAMES]).tolist() == list(range(10))
    with open(os.path.join(one_process + "_shards", "manifest.json")) as f:
        manifest = json.load(f)
    identity = manifest["identity"]
    assert manifest["complete"] and (identity["seed"], identity["step"], identity["sampler"]) == (42, 2, "pc")
    assert identity["labels"] == list(range(10)) and (identity["total"], identity["shard_size"]) == (10, 3)
    # pc with 3 steps: 3 score calls a batch; batches of 2, 1 | 2, 1 | 2, 1 | 1
    assert manifest["nfe"] == sum(int(parts[n]["nfe"]) for n in SHARD_NAMES) == 7 * 3


def test_a_changed_draw_in_the_same_folder_is_refused(one_process, trained):
    import run_lib
    config = sample_config("one")
    config.sampling.num_samples = 12
    with pytest.raises(ShardError) as e:
        run_lib.sample(config, trained)
    assert str(e.value) == (f"{one_process}_shards holds samples of another draw (total: 10 there, 12 now); "
                            "use another folder or delete it to draw afresh (--config.sampling.folder sets the folder)")


def test_a_rerun_draws_only_what_is_missing(one_process, trained, tmp_path, monkeypatch):
    import shutil
    import run_lib
    folder = os.path.join(trained, "rerun")
    shutil.copytree(os.path.dirname(one_process), folder)
    shards_dir = os.path.join(folder, "step_2_pc_seed42_shards")
    os.remove(os.path.join(shards_dir, SHARD_NAMES[2]))
    with open(os.path.join(shards_dir, SHARD_NAMES[1]), "r+b") as f:
        f.truncate(100)  # damaged: set aside and drawn again
    drawn = []
    original = run_lib.draw_samples

    def recording(run, indices, *args, **kwargs):
        drawn.append(list(indices))
        return original(run, indices, *args, **kwargs)
    monkeypatch.setattr(run_lib, "draw_samples", recording)
    stem = run_lib.sample(sample_config("rerun"), trained)
    assert drawn == [[3, 4, 5], [6, 7, 8]]
    assert os.path.isfile(os.path.join(shards_dir, SHARD_NAMES[1] + ".damaged"))
    assert_same_draw(stem, one_process)


def test_eval_samples_come_from_the_shards(trained):
    import run_lib
    config = sample_config("unused")
    e = config.eval
    e.num_samples, e.batch_size, e.shard_size = 5, 2, 2
    run = run_lib.setup(config, trained)
    run_lib.load_for_inference(run, run.checkpoints.numbered_path(1))
    folder = os.path.join(trained, "eval_shards")
    info, x, indices = run_lib.eval_samples(run, 1, folder)
    # three batches (2 | 2 | 1) of 3 score calls
    # the options the sampler ran with, as the shards' manifest has them
    assert info["sampler_options"] == run_lib.draw_identity(run, 4, None)["options"]
    assert info["sampler_options"]["N"] == config.sampling.options.pc.N
    assert {k: v for k, v in info.items() if k != "sampler_options"} == {
        "num_samples": 5, "nfe": 3 * 3, "sampler": "pc", "mixed_precision": run.mixed_precision,
        "path": os.path.join(folder, "ckpt_1_samples.npz"), "shards": os.path.join(folder, "ckpt_1_samples")}
    assert indices.dtype == torch.long and indices.tolist() == [0, 1, 2, 3, 4]
    with np.load(info["path"]) as saved:
        assert x.shape == (5, 1, 16, 16) and x.dtype == torch.float32
        assert np.array_equal((x * 255).round().numpy().astype(np.uint8).transpose(0, 2, 3, 1), saved["samples"])
        assert saved["labels"].tolist() == [0, 1, 2, 3, 4]
    again = run_lib.eval_samples(run, 1, folder)  # all there: nothing drawn, the same result
    assert again[0] == info and bool((again[1] == x).all())



WORKER = r"""
import os, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, os.path.join({root!r}, "tests"))
import torch
import run_lib
from scoresde import checkpoint, shards
from test_shards import eval_config, sample_config

rank = os.environ["RANK"]
with open(os.path.join({out!r}, "pid" + rank), "w") as f:
    f.write(str(os.getpid()))
if {first}:  # an uninterrupted draw, and eval's sampling part (each rank keeps its own shards' samples)
    run_lib.sample(sample_config("two"), {workdir!r})
    run = run_lib.setup(eval_config(), {workdir!r})
    run_lib.load_for_inference(run, run.checkpoints.numbered_path(1))
    info, x, indices = run_lib.eval_samples(run, 1, os.path.join({workdir!r}, "eval_two"))
    torch.save({{"info": info, "x": x, "indices": indices}}, os.path.join({out!r}, "eval" + rank + ".pt"))
    # then a draw that each rank stops after its first shard, until the test kills it
    write = shards.ShardStore.write
    def write_then_wait(self, *args, **kwargs):
        path = write(self, *args, **kwargs)
        time.sleep(600)
        return path
    shards.ShardStore.write = write_then_wait
run_lib.sample(sample_config("killed"), {workdir!r})
"""


def eval_config():
    """eval's sampling part: 5 samples in shards of 2 (rank 0: [0, 2) and [4, 5); rank 1: [2, 4)), batches of 2."""
    config = sample_config("unused")
    config.eval.num_samples, config.eval.batch_size, config.eval.shard_size = 5, 2, 2
    return config


def torchrun(out, workdir, first):
    """The worker under ``torchrun --nproc_per_node=2`` (Gloo), started in a session of its own."""
    import subprocess
    import sys
    from test_distributed import free_port
    out.mkdir()
    script = out / "worker.py"
    script.write_text(WORKER.format(root=ROOT, workdir=workdir, out=str(out), first=first))
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(script)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finished(proc):
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]


def kill(proc, out):
    """SIGKILL torchrun's process group and both workers (torchrun starts them in sessions of their own), as a
    pre-emption would, and wait until they are gone."""
    import signal
    import time
    pids = [int((out / f"pid{r}").read_text()) for r in (0, 1)]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    for pid in pids:  # until each is gone or a zombie: no write of theirs can land after this
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.01)


KILLED = os.path.join("killed", "step_2_pc_seed42_shards")


@pytest.fixture(scope="module")
def two_processes(trained, tmp_path_factory):
    """One torchrun launch (its start-up costs seconds): the uninterrupted draw ``two``, eval's sampling part,
    then the draw ``killed``, SIGKILLed once a shard of it is on disk. Returns the workers' folder and the
    modification times of the shards that were there at the kill."""
    import time
    out = tmp_path_factory.mktemp("workers") / "first"
    folder = os.path.join(trained, KILLED)
    proc = torchrun(out, trained, first=True)
    deadline = time.time() + 300
    while not (os.path.isdir(folder) and any(n.endswith(".npz") for n in os.listdir(folder))):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.01)
    kill(proc, out)
    return out, {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder) if n.endswith(".npz")}


@pytest.mark.slow
def test_two_processes_draw_the_same_shards_as_one(trained, one_process, two_processes, tmp_path):
    import run_lib
    out, _ = two_processes
    assert_same_draw(os.path.join(trained, "two", "step_2_pc_seed42"), one_process)
    # eval: rank r holds shards r, r + 2, ...; together, bitwise the samples of one process
    ranks = [torch.load(out / f"eval{r}.pt") for r in (0, 1)]
    assert ranks[0]["indices"].tolist() == [0, 1, 4] and ranks[1]["indices"].tolist() == [2, 3]
    run = run_lib.setup(eval_config(), trained)
    run_lib.load_for_inference(run, run.checkpoints.numbered_path(1))
    info, x, _ = run_lib.eval_samples(run, 1, str(tmp_path / "eval_one"))
    assert torch.equal(torch.cat([ranks[0]["x"][:2], ranks[1]["x"], ranks[0]["x"][2:]]), x)
    assert ranks[0]["info"]["nfe"] == ranks[1]["info"]["nfe"] == info["nfe"] == 9


@pytest.mark.slow
def test_a_killed_two_process_draw_resumes_to_the_same_shards(trained, one_process, two_processes):
    out, before = two_processes
    folder = os.path.join(trained, KILLED)
    assert 1 <= len(before) <= 2 < len(SHARD_NAMES)  # each rank wrote at most its first shard
    assert not os.path.exists(os.path.join(trained, "killed", "step_2_pc_seed42.npz"))
    finished(torchrun(out.parent / "resumed", trained, first=False))  # the same command again
    assert_same_draw(os.path.join(trained, "killed", "step_2_pc_seed42"), one_process)
    # what was drawn before the kill was kept, not drawn again
    assert all(os.stat(os.path.join(folder, n)).st_mtime_ns == t for n, t in before.items())
