"""Progress output: a live tqdm bar on a terminal, a few whole lines anywhere else (log files, CI, cluster jobs)."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoresde.progress import LineProgress, progress_bar

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_log_file_gets_one_line_per_tenth_for_1000_updates():
    out = io.StringIO()
    bar = progress_bar(total=1000, desc="train", file=out)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0].startswith("train:  10% 100/1000 [") and lines[-1].startswith("train: 100% 1000/1000 [")


def test_iterating_writes_a_few_lines_and_a_final_one():
    out = io.StringIO()
    assert list(progress_bar(range(1234), desc="pc", file=out)) == list(range(1234))
    lines = out.getvalue().splitlines()
    assert len(lines) <= 12 and lines[-1].startswith("pc: 100% 1234/1234 [")


def test_a_slow_run_writes_every_interval_seconds():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=1000, desc="train", file=out, interval=30.0, clock=clock)
    for step in range(1, 50):  # 49 updates 10 s apart, below a tenth of the total
        clock.now = 10.0 * step
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 49 * 10 // 30  # one line per 30 s
    assert lines[0] == "train:   0% 3/1000 [00:30<2:46:10, 0.1 it/s]"


def test_resumed_bar_counts_from_initial_and_shows_the_postfix():
    out = io.StringIO()
    bar = LineProgress(total=100, initial=40, desc="train", file=out)
    for _ in range(60):
        bar.set_postfix(loss="0.5", img_per_s="3.0")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and lines[0].startswith("train:  50% 50/100 [")
    assert lines[-1].endswith("it/s] loss=0.5, img_per_s=3.0")


def test_disabled_writes_nothing():
    out = io.StringIO()
    bar = progress_bar(total=10, file=out, disable=True)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""


def test_a_terminal_gets_the_live_tqdm_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    from tqdm import tqdm
    out = Terminal()
    bar = progress_bar(total=5, desc="x", file=out)
    assert isinstance(bar, tqdm)
    bar.update(5)
    bar.close()
    assert "\r" in out.getvalue()


@pytest.mark.parametrize("name, options", [("pc", {"predictor": "euler_maruyama", "corrector": "none", "N": 1000}),
                                           ("dpmpp_2m", {"nfe": 1000})])
def test_a_sampler_with_progress_writes_a_few_lines_to_a_pipe(name, options):
    """A non-terminal ``progress=True`` sampling run of 1000 steps, stderr a pipe as in a cluster job."""
    code = ("import torch\n"
            "from scoresde import analytic, sde_lib, sampling\n"
            "sde = sde_lib.VPSDE()\n"
            "data = analytic.Gaussian.diagonal(torch.zeros(2), torch.ones(2))\n"
            f"sampler = sampling.get_sampler({name!r}, sde=sde, shape=(4, 2), **{options!r})\n"
            "x, nfe = sampler(data.score_fn(sde), generator=torch.Generator().manual_seed(0), progress=True)\n"
            "print(nfe)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert 1 <= len(lines) <= 12, out.stderr
    assert "100% " in lines[-1] and ("1000/1000" if name == "pc" else "999/999") in lines[-1]


@pytest.mark.slow
def test_train_and_sample_through_main_write_a_few_progress_lines(tmp_path):
    """``main.py`` with stderr a pipe (a log file, a cluster job): 300 logged training steps and a 2-batch
    ``--mode sample`` of 200 steps each used to write a line per update; now at most ~11 lines per bar."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, str(ROOT / "main.py"), "--config", "configs/vp/toy.py", "--workdir", str(tmp_path),
           "--config.model.nf=16", "--config.training.batch_size=16", "--config.training.n_iters=300",
           "--config.training.log_freq=1", "--config.training.eval_freq=1000", "--config.training.snapshot_freq=1000",
           "--config.training.snapshot_freq_for_preemption=1000", "--config.training.snapshot_sampling=False",
           "--config.optim.warmup=1", "--config.sampling.sampler=pc", "--config.sampling.options.pc.N=200",
           "--config.sampling.num_samples=16", "--config.sampling.batch_size=8"]
    train = subprocess.run([*run, "--mode=train"], capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    bars = [line for line in train.stderr.replace("\r", "\n").splitlines() if line.startswith("train:")]
    assert 3 <= len(bars) <= 11 and bars[-1].startswith("train: 100% 300/300 "), train.stderr[-3000:]
    with open(tmp_path / "train_log.jsonl") as f:
        last = [json.loads(line) for line in f if '"loss"' in line][-1]
    assert last["step"] == 300 and f"loss={last['loss']:.4g}," in bars[-1]  # the line shows that step's loss
    sample = subprocess.run([*run, "--mode=sample"], capture_output=True, text=True, cwd=str(ROOT), env=env,
                            timeout=300)
    assert sample.returncode == 0, sample.stderr[-3000:]
    bars = [line for line in sample.stderr.replace("\r", "\n").splitlines() if "200/200" in line or "%" in line]
    assert 2 <= len(bars) <= 22, sample.stderr[-3000:]  # two batches, at most 11 lines each
