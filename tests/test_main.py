"""``main.py`` as a user runs it (subprocesses): train / resume / eval / sample on the embedded digits
and on a small CIFAR-10-format archive written here; command-line overrides; bad configs and missing
data fail with a message that names the field or the path."""
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.nf=8", "--config.model.ch_mult=(1, 2)", "--config.model.num_res_blocks=1",
        "--config.training.batch_size=8", "--config.training.snapshot_freq=2",
        "--config.training.snapshot_freq_for_preemption=1", "--config.training.log_freq=1",
        "--config.training.eval_freq=1", "--config.training.snapshot_num_samples=4",
        "--config.sampling.options.pc.N=2", "--config.eval.batch_size=32", "--config.eval.num_samples=2",
        "--config.eval.begin_ckpt=1", "--config.eval.end_ckpt=1", "--config.optim.warmup=1"]


def main(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny networks: threads only cost on a busy machine
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def test_digits_train_resume_eval_sample(tmp_path):
    pytest.importorskip("sklearn")
    run = ["--config", "configs/vp/digits.py", "--workdir", str(tmp_path), *TINY]
    main(*run, "--config.training.n_iters=1", "--config.training.snapshot_sampling=False")
    out = main(*run, "--config.training.n_iters=2", "--mode=train")  # the same command, further: resumes
    assert "resuming at step 1" in out.stderr
    with open(tmp_path / "train_log.jsonl") as f:
        assert [json.loads(line)["step"] for line in f if '"loss"' in line] == [1, 2]
    assert (tmp_path / "checkpoints" / "checkpoint_1.pth").is_file()
    assert (tmp_path / "samples" / "iter_2.png").is_file()

    main(*run, "--mode=eval", "--config.eval.enable_bpd=False")
    with open(tmp_path / "eval" / "ckpt_1.json") as f:
        result = json.load(f)
    assert result["step"] == 2 and result["loss"]["loss"] > 0 and result["samples"]["num_samples"] == 2

    main(*run, "--mode=sample", "--config.sampling.sampler=ode", "--config.sampling.options.ode.rtol=1e-2",
         "--config.sampling.options.ode.atol=1e-2", "--config.sampling.num_samples=3")
    (npz,) = (tmp_path / "samples").glob("step_2_ode_*.npz")
    assert np.load(npz)["samples"].shape == (3, 16, 16, 1)


def test_classifier_train_resume_eval(tmp_path):
    pytest.importorskip("sklearn")
    run = ["--config", "configs/vp/digits_classifier.py", "--workdir", str(tmp_path), *TINY]
    main(*run, "--config.training.n_iters=1")
    out = main(*run, "--config.training.n_iters=2")  # the same command, further: resumes
    assert "resuming at step 1" in out.stderr
    with open(tmp_path / "train_log.jsonl") as f:
        records = [json.loads(line) for line in f if '"loss"' in line]
    assert [r["step"] for r in records] == [1, 2] and all(0 <= r["accuracy"] <= 1 for r in records)
    main(*run, "--mode=eval")
    with open(tmp_path / "eval" / "ckpt_1.json") as f:
        result = json.load(f)
    assert result["step"] == 2 and 0 <= result["loss"]["accuracy"] <= 1 and "bpd" not in result


def test_class_conditional_train_then_guided_and_inpainting_samples(tmp_path):
    pytest.importorskip("sklearn")
    run = ["--config", "configs/vp/digits_cond.py", "--workdir", str(tmp_path), *TINY,
           "--config.training.n_iters=1", "--config.training.snapshot_sampling=False"]
    main(*run)
    main(*run, "--mode=sample", "--config.sampling.guidance=cfg", "--config.sampling.guidance_scale=2",
         "--config.sampling.labels=3,5", "--config.sampling.num_samples=4")
    saved = np.load(tmp_path / "samples" / "step_1_pc_cfg2_seed42.npz")
    assert saved["samples"].shape == (4, 8, 8, 1) and saved["labels"].tolist() == [3, 5, 3, 5]
    main(*run, "--mode=sample", "--config.sampling.task=inpaint", "--config.sampling.num_samples=3")
    saved = np.load(tmp_path / "samples" / "step_1_pc_inpaint_half_seed42.npz")
    assert np.array_equal(saved["samples"][:, :4], saved["originals"][:, :4])  # the observed top half
    assert (tmp_path / "samples" / "step_1_pc_inpaint_half_seed42.png").is_file()


def write_cifar_archive(root, n_train_per_batch=4, n_test=8):
    """A CIFAR-10 python archive in the official layout: pickled dicts with b'data' (N x 3072 uint8,
    R then G then B planes) and b'labels', under cifar-10-batches-py/ in a .tar.gz."""
    rng = np.random.default_rng(0)
    path = os.path.join(root, "cifar-10-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            n = n_test if name == "test_batch" else n_train_per_batch
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                 b"filenames": [f"{i}.png".encode() for i in range(n)]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_cifar10_archive_train_and_eval(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    archive = write_cifar_archive(str(data))
    md5 = hashlib.md5(open(archive, "rb").read()).hexdigest()  # checked before use, as the official md5 is
    run = ["--config", "configs/vp/cifar10.py", "--workdir", str(tmp_path / "run"), *TINY,
           "--config.model.attn_resolutions=(16,)", f"--config.data.root={data}", f"--config.data.archive_md5={md5}",
           "--config.training.n_iters=2",
           "--config.training.snapshot_sampling=False", "--config.eval.enable_sampling=False"]
    main(*run)
    main(*run, "--mode=eval", "--config.eval.enable_bpd=True", "--config.eval.bpd_num_repeats=1",
         "--config.eval.bpd_num_images=2", "--config.eval.bpd_rtol=1e-2", "--config.eval.bpd_atol=1e-2")
    with open(tmp_path / "run" / "eval" / "ckpt_1.json") as f:
        result = json.load(f)
    assert result["loss"]["num_examples"] == 8
    assert result["bpd"]["num_images"] == 2 and result["bpd"]["offset"] == 7.0 and result["bpd"]["bpd"] > 0


@pytest.mark.parametrize("args,message", [
    (["--config.training.no_such_field=1"], "no_such_field"),
    (["--config.sampling.sampler=magic"], "config.sampling.sampler = 'magic'"),
    (["--config.sampling.guidance=cfg"], "config.sampling.guidance = 'cfg'"),  # an unconditional network
    (["--config.sampling.task=colorize"], "config.sampling.task = 'colorize'"),  # grey digits
    (["--config.data.dataset=CIFAR10", "--config.data.num_channels=3", "--config.data.root=/nonexistent/cifar"],
     "/nonexistent/cifar/cifar-10-batches-py"),
])
def test_errors_name_the_field_or_path(tmp_path, args, message):
    proc = main("--config", "configs/vp/digits.py", "--workdir", str(tmp_path), *TINY, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr  # one line: tests/test_cli_errors.py has every error path
