"""Two CPU processes (torchrun, Gloo) train a few steps with DistributedDataParallel: the ranks end
with identical weights, only rank 0 writes, and each rank saw different data."""
import os
import socket
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import os, sys, json
import torch
sys.path.insert(0, {root!r}); sys.path.insert(0, os.path.join({root!r}, "tests"))
import run_lib
from test_run_lib import tiny_config

rank = int(os.environ["RANK"])
config = tiny_config(**{{"training.n_iters": 3, "training.snapshot_freq": 3, "training.eval_freq": 100,
                        "training.snapshot_sampling": False}})
original_setup = run_lib.setup
runs = []
def setup(*args, **kwargs):
    runs.append(original_setup(*args, **kwargs))
    return runs[-1]
run_lib.setup = setup
history = run_lib.train(config, {workdir!r})
torch.save({{"model": runs[0].model.state_dict(), "history": history}}, os.path.join({out!r}, f"rank{{rank}}.pt"))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_keep_identical_weights(tmp_path):
    pytest.importorskip("sklearn")
    workdir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=ROOT, workdir=str(workdir), out=str(out)))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_addr=127.0.0.1", f"--master_port={env['MASTER_PORT']}", str(script)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    # each rank computed its loss on its own shard of the batch
    assert ranks[0]["history"] != ranks[1]["history"]
    # only rank 0 wrote: one checkpoint, one log
    assert sorted(os.listdir(workdir / "checkpoints")) == ["checkpoint_1.pth", "checkpoint_1.pth.json"]
    assert (workdir / "train_log.jsonl").is_file()
    state = torch.load(workdir / "checkpoints" / "checkpoint_1.pth", weights_only=False)
    assert all(torch.equal(state["model"][k], v) for k, v in ranks[0]["model"].items())


def test_init_without_torchrun_is_a_world_of_one(monkeypatch):
    from scoresde import distributed
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = distributed.init("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert info.device == torch.device("cpu")
    value = torch.tensor(3.0)
    assert distributed.mean_over_ranks(value, info) is value


def test_bad_environment_is_refused(monkeypatch):
    from scoresde import distributed
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        distributed.init("cpu")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK"):
        distributed.init("cpu")


def _gather_in_order_worker(rank: int, port: int, out: str):
    import torch.distributed as dist
    from scoresde import distributed
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3)
    info = distributed.DistInfo(rank=rank, world_size=3)
    # samples 0..6 dealt out unevenly and out of order; rank 2 has none (any empty tensor will do)
    mine = {0: [5, 0, 3], 1: [6, 1, 2, 4], 2: []}[rank]
    indices = torch.tensor(mine, dtype=torch.long)
    rows = torch.tensor([[i, 10.0 * i] for i in mine]).reshape(-1, 2)
    labels = (indices * 7) % 5
    gathered = distributed.gather_in_order(indices, info, rows if mine else torch.zeros(0), labels)
    torch.save(gathered, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_gather_in_order_puts_every_ranks_rows_in_sample_order(tmp_path):
    """Three Gloo ranks with 3, 4 and 0 rows each get all seven rows sorted by sample index."""
    torch.multiprocessing.spawn(_gather_in_order_worker, args=(free_port(), str(tmp_path)), nprocs=3)
    expected_rows = torch.tensor([[i, 10.0 * i] for i in range(7)])
    expected_labels = (torch.arange(7) * 7) % 5
    for rank in range(3):
        rows, labels = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(rows, expected_rows) and torch.equal(labels, expected_labels)


def test_gather_in_order_in_a_world_of_one_sorts_by_index():
    from scoresde import distributed
    rows, = distributed.gather_in_order(torch.tensor([2, 0, 1]), distributed.DistInfo(), torch.tensor([20, 0, 10]))
    assert rows.tolist() == [0, 10, 20]
