"""``--mode eval`` under torchrun: two Gloo processes share out the test batches (loss, bits/dim) and the
samples (features gathered for FID/KID) and give what one process gives, up to float summation order; they
follow the checkpoints together (``eval.wait``)."""
import json
import os
import subprocess
import sys

import pytest

import run_lib
from scoresde import metrics

pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 4 test batches of 16 for bits/dim (the last one short), 19 for the loss, 20 samples in 2 batches
EVAL = {"eval.begin_ckpt": 1, "eval.end_ckpt": 1, "eval.batch_size": 16, "eval.bpd_num_images": 56,
        "eval.num_samples": 20, "eval.metrics": ("fid", "kid"), "eval.enable_sampling": True,
        "sampling.sampler": "ddim", "training.n_iters": 3, "training.snapshot_freq": 3}

WORKER = r'''
import os, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, os.path.join({root!r}, "tests"))
import run_lib
from scoresde import metrics
from test_run_lib import FakeExtractor, tiny_config
from test_eval_distributed import EVAL
metrics.InceptionFeatureExtractor = FakeExtractor
# the two ranks also follow the checkpoints (eval.wait): rank 0 picks checkpoint 1, then stops at end_ckpt
run_lib.evaluate(tiny_config(**EVAL, **{{"eval.wait": True, "eval.poll_interval": 0.2, "eval.wait_timeout": 60.0}}),
                 {workdir!r}, eval_folder="eval_2proc")
'''


@pytest.mark.slow
def test_two_processes_evaluate_as_one_does(tmp_path, monkeypatch, one_thread):
    from test_distributed import free_port
    from test_run_lib import FakeExtractor, tiny_config
    workdir = str(tmp_path / "run")
    run_lib.train(tiny_config(**EVAL), workdir)
    monkeypatch.setattr(metrics, "InceptionFeatureExtractor", FakeExtractor)
    one = run_lib.evaluate(tiny_config(**EVAL), workdir, eval_folder="eval_1proc")[1]

    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=ROOT, workdir=workdir))
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(script)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, "eval_2proc", "ckpt_1.json")) as f:
        two = json.load(f)

    assert two["loss"]["num_examples"] == one["loss"]["num_examples"] == 297
    assert two["loss"]["loss"] == pytest.approx(one["loss"]["loss"], rel=1e-6)
    assert two["bpd"]["num_images"] == one["bpd"]["num_images"] == 56
    assert two["bpd"]["per_repeat"] == pytest.approx(one["bpd"]["per_repeat"], rel=1e-9)
    assert two["bpd"]["nfe"] == one["bpd"]["nfe"]
    assert two["samples"]["num_samples"] == one["samples"]["num_samples"] == 20
    assert two["metrics"]["num_samples"] == 20
    for key in ("fid", "kid"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-7)
    assert not os.path.exists(os.path.join(workdir, "eval_2proc", "ckpt_1.json.tmp"))
