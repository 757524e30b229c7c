"""run_lib end to end on the embedded digits with a tiny network: train, exact resume, NaN stop,
evaluation (resumable), sampling with any sampler, metrics unavailable, config checks."""
import json
import os
import re

import pytest
import torch

import run_lib
from configs.vp import digits
from scoresde import checkpoint, losses

pytest.importorskip("sklearn")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**changes):
    """``configs/vp/digits.py`` shrunk to seconds: 8 channels, two resolutions, 8 images a batch."""
    config = digits.get_config()
    config.model.nf = 8
    config.model.ch_mult = (1, 2)
    config.model.dropout = 0.1  # exercise the per-step dropout seeding of exact resume
    t = config.training
    t.batch_size, t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption = 8, 6, 3, 2
    t.log_freq, t.eval_freq, t.snapshot_num_samples = 1, 2, 4
    config.sampling.options.pc.N = 3
    e = config.eval
    e.begin_ckpt, e.end_ckpt, e.batch_size = 1, 2, 64
    e.bpd_num_images, e.bpd_num_repeats, e.bpd_rtol, e.bpd_atol = 4, 2, 1e-2, 1e-2
    e.num_samples = 4
    config.optim.warmup = 2
    # fp32 on every machine: the default "auto" would take bf16 on a CPU with native bf16, and the tests'
    # tolerances are fp32's (tests/test_precision.py covers "auto")
    t.mixed_precision = "no"
    config.update_from_flattened_dict(changes)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 6-step run (checkpoints 1 and 2), shared by the tests below."""
    workdir = str(tmp_path_factory.mktemp("run"))
    history = run_lib.train(tiny_config(), workdir)
    return workdir, history


def _weights(path):
    return checkpoint.load(path)["model"]


def test_training_writes_checkpoints_logs_and_grids(trained):
    workdir, history = trained
    assert len(history) == 6 and all(torch.isfinite(torch.tensor(history)))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "checkpoint_1.pth", "checkpoint_1.pth.json", "checkpoint_2.pth", "checkpoint_2.pth.json"]
    # pre-emption checkpoints at steps 2 and 4 (the newest two; 3 and 6 are numbered ones)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints-meta"))) == [
        "checkpoint_2.pth", "checkpoint_2.pth.json", "checkpoint_4.pth", "checkpoint_4.pth.json"]
    path, newest = checkpoint.CheckpointDir(workdir).load_newest()
    assert path == os.path.join(workdir, "checkpoints", "checkpoint_2.pth")
    assert newest["step"] == 6 and newest["seed"] == 42
    assert not os.path.exists(os.path.join(workdir, "train.lock"))  # released at the end
    for name in ("iter_3.png", "iter_6.png", "iter_6.npz"):
        assert os.path.isfile(os.path.join(workdir, "samples", name))
    with open(os.path.join(workdir, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4, 6]
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_resume_reproduces_the_uninterrupted_run_exactly(trained, tmp_path):
    workdir, history = trained
    first = run_lib.train(tiny_config(**{"training.n_iters": 3}), str(tmp_path))
    second = run_lib.train(tiny_config(), str(tmp_path))  # the same command again: resumes at step 3
    assert first + second == history  # exact equality of every loss, not closeness
    resumed, uninterrupted = _weights(str(tmp_path / "checkpoints" / "checkpoint_2.pth")), \
        _weights(os.path.join(workdir, "checkpoints", "checkpoint_2.pth"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert run_lib.train(tiny_config(), str(tmp_path)) == []  # finished: nothing left to do


def test_label_dropout_trains_the_null_label_and_resumes_exactly(tmp_path):
    changes = {"model.num_classes": 10, "training.label_dropout": 0.5, "training.snapshot_sampling": False}
    whole = run_lib.train(tiny_config(**changes), str(tmp_path / "whole"))
    first = run_lib.train(tiny_config(**changes, **{"training.n_iters": 3}), str(tmp_path / "parts"))
    second = run_lib.train(tiny_config(**changes), str(tmp_path / "parts"))
    assert first + second == whole  # the dropout draws come from each step's own loss generator
    a = _weights(str(tmp_path / "whole" / "checkpoints" / "checkpoint_2.pth"))
    b = _weights(str(tmp_path / "parts" / "checkpoints" / "checkpoint_2.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    embedding = a["label_embed.embedding.weight"]
    assert embedding.shape[0] == 11 and embedding[10].abs().sum() > 0  # the null label was trained
    no_dropout = run_lib.train(tiny_config(**{**changes, "training.label_dropout": 0.0}), str(tmp_path / "none"))
    assert no_dropout != whole


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(**{"training.n_iters": 4, "training.snapshot_sampling": False})
    real_save = torch.save

    def dies_mid_save(obj, f, *args, **kwargs):
        if obj["step"] == 4:  # the last meta save: write part of the file, then "get killed"
            f.write(b"partial bytes")
            raise KeyboardInterrupt("killed while saving")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", dies_mid_save)
    with pytest.raises(KeyboardInterrupt):
        run_lib.train(config, str(tmp_path))
    meta_dir = tmp_path / "checkpoints-meta"
    assert sorted(os.listdir(meta_dir)) == ["checkpoint_2.pth", "checkpoint_2.pth.json"]  # no temporary file
    assert checkpoint.CheckpointDir(str(tmp_path)).load_newest()[1]["step"] == 3  # the previous save, intact
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert len(run_lib.train(config, str(tmp_path))) == 1  # resumes from step 3


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _scaled_training_loss(monkeypatch, {4: float("nan")})  # the 4th pass judges state 3
    meta = str(tmp_path / "checkpoints-meta" / "checkpoint_2.pth")
    with pytest.raises(FloatingPointError, match="^" + re.escape(f"the training loss is nan at step 4; training "
                                                                 f"stopped. The last good checkpoint is {meta} (step 2, "
                                                                 f"saved before the divergence began)")):
        run_lib.train(tiny_config(), str(tmp_path))
    # state 3 (numbered checkpoint 1) has the NaN loss: it is not saved
    assert checkpoint.CheckpointDir(str(tmp_path)).load_newest()[0] == meta
    assert checkpoint.load(meta)["step"] == 2 and not os.path.exists(tmp_path / "checkpoints" / "checkpoint_1.pth")


def test_evaluate_writes_results_and_skips_what_is_done(trained, monkeypatch):
    workdir, _ = trained
    results = run_lib.evaluate(tiny_config(), workdir)
    assert sorted(results) == [1, 2]
    with open(os.path.join(workdir, "eval", "ckpt_2.json")) as f:
        saved = json.load(f)
    assert saved["step"] == 6 and saved["loss"]["num_examples"] == 297
    bpd = saved["bpd"]
    assert len(bpd["per_repeat"]) == 2 and bpd["num_images"] == 4 and bpd["offset"] == 7.0
    assert 0 < bpd["bpd"] < 20
    assert saved["samples"]["num_samples"] == 4 and saved["samples"]["nfe"] > 0
    # the results name the sampler and the options it ran with, beside the NFE it spent
    config = tiny_config()
    assert saved["samples"]["sampler"] == config.sampling.sampler
    assert saved["samples"]["sampler_options"]["N"] == config.sampling.options[config.sampling.sampler].N == 3
    assert os.path.isfile(os.path.join(workdir, "eval", "ckpt_2_samples.npz"))
    assert os.path.isfile(os.path.join(workdir, "eval", "ckpt_2_samples.png"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("evaluation repeated work that was already done")
    for name in ("eval_loss", "eval_bpd", "eval_samples"):
        monkeypatch.setattr(run_lib, name, must_not_run)
    assert run_lib.evaluate(tiny_config(), workdir)[2] == saved


def test_metrics_without_weights_are_reported_unavailable(trained, tmp_path):
    workdir, _ = trained
    config = tiny_config(**{"eval.metrics": ("fid", "kid"), "eval.enable_loss": False, "eval.enable_bpd": False,
                            "eval.begin_ckpt": 2, "eval.inception_weights": str(tmp_path / "missing.pth")})
    result = run_lib.evaluate(config, workdir, eval_folder="eval_metrics")[2]
    reasons = result["metrics"]["unavailable"]
    assert set(reasons) == {"fid", "kid"} and "missing.pth" in reasons["fid"]
    config.eval.require_metrics = True
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        run_lib.evaluate(config, workdir, eval_folder="eval_required")


@pytest.mark.parametrize("sampler,options", [("ode", {"rtol": 1e-2, "atol": 1e-2}), ("pc", {"N": 2})])
def test_sample_mode_with_any_sampler(trained, sampler, options):
    workdir, _ = trained
    config = tiny_config(**{"sampling.sampler": sampler, "sampling.num_samples": 3, "sampling.batch_size": 2})
    for key, value in options.items():
        config.sampling.options[sampler][key] = value
    stem = run_lib.sample(config, workdir)
    import numpy as np
    samples = np.load(stem + ".npz")["samples"]
    assert samples.shape == (3, 16, 16, 1) and samples.dtype == np.uint8
    assert os.path.isfile(stem + ".png") and f"_{sampler}_" in os.path.basename(stem)


@pytest.mark.parametrize("changes,match", [
    ({"training.sde": "vesde", "training.continuous": False, "model.name": "nope"}, "config.model.name"),
    ({"training.sde": "subvpsde", "training.continuous": False}, "config.training.continuous"),
    ({"training.sde": "vesde", "model.scale_by_sigma": True}, "config.model.embedding_type"),
    ({"sampling.sampler": "magic"}, "config.sampling.sampler"),
    ({"data.image_size": 18, "model.ch_mult": (1, 2, 2)}, "config.data.image_size"),
    ({"training.mixed_precision": "fp8"}, "config.training.mixed_precision"),
    ({"eval.metrics": ("fid", "precision")}, "config.eval.metrics"),
    ({"training.snapshot_freq": 0}, "config.training.snapshot_freq"),
    ({"training.label_dropout": 1.0}, "config.training.label_dropout"),
    ({"training.label_dropout": -0.1}, "config.training.label_dropout"),
    ({"training.label_dropout": 0.1}, "config.training.label_dropout"),  # without model.num_classes
    ({"training.divergence_patience": 0}, "config.training.divergence_patience"),
    ({"training.divergence_window": -5}, "config.training.divergence_window"),
    ({"training.divergence_factor": 0.5}, "config.training.divergence_factor"),
    ({"training.divergence_factor": float("nan")}, "config.training.divergence_factor"),
])
def test_bad_configs_fail_at_start_naming_the_field(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        run_lib.train(tiny_config(**changes), str(tmp_path))


def test_bad_sampler_option_value_fails_at_start(tmp_path):
    config = tiny_config()
    config.sampling.options.pc.predictor = "leapfrog"
    with pytest.raises(ValueError, match=r"config\.sampling\.options\.pc"):
        run_lib.train(config, str(tmp_path))


def test_toy_data_with_the_mlp(tmp_path):
    from configs.vp import toy
    config = toy.get_config()
    t = config.training
    t.n_iters, t.snapshot_freq, t.batch_size, t.snapshot_num_samples = 4, 2, 32, 16
    config.sampling.options.pc.N = 3
    config.data.num_toy_points = 256
    config.model.nf = 16
    assert len(run_lib.train(config, str(tmp_path))) == 4
    assert os.path.isfile(tmp_path / "samples" / "iter_4.png")


class FakeExtractor:
    """Stands in for the Inception network (too slow here): 'features' are a fixed random projection
    of the pixels; everything after it (statistics cache, FID, KID, JSON) is the real code."""
    resize = "tf"
    logits_unavailable_reason = "fake extractor: no logits"
    has_logits = False

    def __init__(self, weights=None, device=None):
        self.projection = torch.randn(256, 16, generator=torch.Generator().manual_seed(0)).double()

    def _pool(self, images):
        x = torch.as_tensor(images).double().reshape(len(images), -1)[:, :256]
        return (x / 255.0 if x.max() > 1 else x) @ self.projection

    def iter_features(self, batches, layout=None):
        from scoresde.metrics import InceptionFeatures
        for batch in batches:
            yield InceptionFeatures(self._pool(batch).numpy(), None)

    def features(self, images, batch_size=50, layout=None):
        from scoresde.metrics import InceptionFeatures
        return InceptionFeatures(self._pool(images).numpy(), None)


def test_metrics_are_wired_into_evaluation(trained, monkeypatch):
    from scoresde import metrics
    workdir, _ = trained
    monkeypatch.setattr(metrics, "InceptionFeatureExtractor", FakeExtractor)
    config = tiny_config(**{"eval.metrics": ("fid", "kid", "is"), "eval.enable_loss": False,
                            "eval.enable_bpd": False, "eval.begin_ckpt": 2})
    result = run_lib.evaluate(config, workdir, eval_folder="eval_fake_metrics")[2]["metrics"]
    assert result["fid"] > 0 and result["kid"] is not None and result["num_samples"] == 4
    assert result["inception_score"] is None and "no logits" in result["unavailable"]["inception_score"]
    assert os.path.isfile(os.path.join(workdir, "inception_stats", "DIGITS_train_16_tf.npz"))


def test_bf16_autocast_trains(tmp_path):
    config = tiny_config(**{"training.mixed_precision": "bf16", "training.n_iters": 2,
                            "training.snapshot_sampling": False})
    history = run_lib.train(config, str(tmp_path))
    assert len(history) == 2 and all(map(lambda v: v == v and abs(v) < 1e3, history))


def test_sample_from_a_checkpoint_of_the_papers_code(trained, tmp_path):
    """A file in the layout of the paper's released checkpoints ('module.'-prefixed model keys, EMA
    shadow weights as a list) written here from our own run's EMA weights."""
    workdir, _ = trained
    ours = checkpoint.load(os.path.join(workdir, "checkpoints", "checkpoint_2.pth"))
    original = {"model": {"module." + k: v for k, v in ours["model"].items()}, "ema": ours["ema"],
                "optimizer": ours["optimizer"], "step": 6}
    path = tmp_path / "checkpoint_26.pth"
    torch.save(original, path)
    config = tiny_config(**{"sampling.original_checkpoint": str(path), "sampling.num_samples": 2,
                            "sampling.batch_size": 2})
    from_paper = run_lib.sample(config, str(tmp_path / "paper"))
    config.sampling.original_checkpoint = ""
    config.sampling.ckpt = 2
    config.sampling.folder = "ours"  # the shard folder of another test's draw (pc with N=2) refuses this one
    from_ours = run_lib.sample(config, workdir)
    import numpy as np
    assert np.array_equal(np.load(from_paper + ".npz")["samples"], np.load(from_ours + ".npz")["samples"])


# ----------------------------------------------------------------------------- nothing lost (issue 10)

QUICK = {"training.snapshot_sampling": False}


def _copy_run(trained, tmp_path):
    import shutil
    workdir = str(tmp_path / "copy")
    shutil.copytree(trained[0], workdir)
    return workdir


def _same_weights(path_a, path_b):
    a, b = _weights(path_a), _weights(path_b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_training_run_on_a_workdir_refuses_naming_the_holder(tmp_path):
    lock = checkpoint.WorkdirLock(str(tmp_path))  # the first run (this process, another open file)
    lock.acquire()
    (tmp_path / "config.json").write_text("the first run's")
    try:
        with pytest.raises(checkpoint.WorkdirLocked, match=re.escape(f"{tmp_path} is in use by another training "
                                                                     f"run (pid {os.getpid()} on host ")):
            run_lib.train(tiny_config(**QUICK), str(tmp_path))
        assert (tmp_path / "config.json").read_text() == "the first run's"  # untouched
        assert not os.path.exists(tmp_path / "checkpoints")
    finally:
        lock.release()
    assert len(run_lib.train(tiny_config(**QUICK, **{"training.n_iters": 1}), str(tmp_path))) == 1


def test_the_command_line_refuses_a_second_run_in_one_line(tmp_path):
    import subprocess
    import sys
    lock = checkpoint.WorkdirLock(str(tmp_path))
    lock.acquire()
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run([sys.executable, os.path.join(root, "main.py"), "--config",
                               os.path.join(root, "configs", "vp", "digits.py"), "--workdir", str(tmp_path),
                               "--mode", "train"], capture_output=True, text=True, cwd=root, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        lock.release()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    refusal = [line for line in proc.stderr.splitlines() if "is in use by another training run" in line]
    assert len(refusal) == 1 and f"(pid {os.getpid()} on host " in refusal[0]


def test_a_stale_lock_and_leftover_temporary_files_are_cleaned_up_at_start(trained, tmp_path, caplog):
    import subprocess
    workdir = _copy_run(trained, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(os.path.join(workdir, "train.lock"), "w") as f:
        json.dump({"pid": dead.pid, "host": "elsewhere", "started": "yesterday"}, f)
    leftover = os.path.join(workdir, "checkpoints-meta", ".tmp-checkpoint_8.pth-k1ll3d")
    with open(leftover, "wb") as f:
        f.write(b"\0" * 1000)
    with caplog.at_level("WARNING", logger="scoresde"):
        assert run_lib.train(tiny_config(**QUICK), workdir) == []  # finished already
    messages = [r.getMessage() for r in caplog.records]
    assert f"took over the lock of a training run that is no longer running (pid {dead.pid} on host elsewhere, " \
           f"started yesterday; lock file {os.path.join(workdir, 'train.lock')})" in messages
    assert f"removed {leftover}, left by a save that was interrupted" in messages
    assert not os.path.exists(leftover) and not os.path.exists(os.path.join(workdir, "train.lock"))


def test_resuming_with_another_network_is_refused_listing_the_fields(trained, tmp_path):
    workdir = _copy_run(trained, tmp_path)
    config = tiny_config(**QUICK, **{"training.n_iters": 8, "model.nf": 16, "model.ch_mult": (1, 2, 2),
                                     "model.dropout": 0.0, "model.ema_rate": 0.5})
    newest = os.path.join(workdir, "checkpoints", "checkpoint_2.pth")
    with pytest.raises(checkpoint.CheckpointError) as info:
        run_lib.train(config, workdir)
    assert str(info.value) == (
        f"{newest} holds another network than the config asks for: config.model.ch_mult = [1, 2, 2] (checkpoint: "
        f"[1, 2]), config.model.nf = 16 (checkpoint: 8). Use the checkpoint's values (--config.model.ch_mult=[1, 2] "
        f"--config.model.nf=8) or another --workdir")  # dropout and the EMA rate may change
    config.sampling.num_samples = config.sampling.batch_size = 1
    with pytest.raises(checkpoint.CheckpointError, match=re.escape("config.model.nf = 16 (checkpoint: 8)")):
        run_lib.sample(config, workdir)


def test_a_snapshot_freq_that_would_overwrite_numbered_checkpoints_is_refused(tmp_path):
    workdir = str(tmp_path)
    run_lib.train(tiny_config(**QUICK, **{"training.n_iters": 3, "training.snapshot_freq": 1}), workdir)
    with pytest.raises(ValueError, match=re.escape(
            "config.training.snapshot_freq = 2: " + os.path.join(workdir, "checkpoints", "checkpoint_2.pth")
            + " holds step 2, and this run would overwrite it with step 4 (n = step // snapshot_freq); resume "
              "with the snapshot_freq of the existing checkpoints (--config.training.snapshot_freq=1)")):
        run_lib.train(tiny_config(**QUICK, **{"training.n_iters": 6, "training.snapshot_freq": 2}), workdir)
    d = checkpoint.CheckpointDir(workdir)
    assert [d.numbered_step(n) for n in d.numbers()] == [1, 2, 3]
    # a change under which no name collides is fine: steps 10 and 20 become checkpoints 1 and 2 ...
    run_lib.train(tiny_config(**QUICK, **{"training.n_iters": 5, "training.snapshot_freq": 5}), str(tmp_path / "b"))
    run_lib.train(tiny_config(**QUICK, **{"training.n_iters": 8, "training.snapshot_freq": 4}), str(tmp_path / "b"))
    b = checkpoint.CheckpointDir(str(tmp_path / "b"))
    assert [b.numbered_step(n) for n in b.numbers()] == [5, 8]


def test_damaged_newest_checkpoints_are_skipped_in_train_sample_and_eval(trained, tmp_path, caplog):
    workdir = _copy_run(trained, tmp_path)
    d = checkpoint.CheckpointDir(workdir)
    newest = d.numbered_path(2)  # step 6
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 3)
    size = os.path.getsize(d.numbered_path(1))
    with open(d.numbered_path(1), "wb") as f:  # step 3: random bytes
        f.write(os.urandom(size))
    config = tiny_config(**{"sampling.num_samples": 2, "sampling.batch_size": 2, "eval.enable_bpd": False,
                            "eval.enable_sampling": False})
    with caplog.at_level("WARNING", logger="scoresde"):
        stem = run_lib.sample(config, workdir)  # from the newest intact state: meta checkpoint of step 4
        assert os.path.basename(stem).startswith("step_4_")
        with pytest.raises(checkpoint.CheckpointError, match=re.escape(
                "no intact checkpoint to evaluate in eval.begin_ckpt..eval.end_ckpt = 1..2; tried: "
                f"{d.numbered_path(1)} (its bytes do not match the checksum written with it); {newest} (truncated")):
            run_lib.evaluate(config, workdir, eval_folder="eval_damaged")  # both damaged: each skipped
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"skipping damaged checkpoint {newest}: truncated" in messages
    assert f"skipping damaged checkpoint {d.numbered_path(1)}: its bytes do not match the checksum" in messages
    caplog.clear()
    with caplog.at_level("WARNING", logger="scoresde"):
        history = run_lib.train(config, workdir)  # resumes at step 4 and redoes steps 5 and 6
    assert history == trained[1][4:]
    assert _same_weights(newest, os.path.join(trained[0], "checkpoints", "checkpoint_2.pth"))
    assert os.path.isfile(newest + ".damaged")  # kept for inspection; checkpoint_1, older, was not tried
    assert not os.path.exists(d.numbered_path(1) + ".damaged")
    assert f"renamed the damaged {newest} to {newest}.damaged" in [r.getMessage() for r in caplog.records]
    assert sorted(run_lib.evaluate(config, workdir, eval_folder="eval_after")) == [2]  # 1 is still damaged


def test_a_huge_lr_stops_with_the_pre_divergence_state_and_a_sane_lr_resumes_normally(trained, tmp_path):
    workdir = str(tmp_path)
    assert run_lib.train(tiny_config(**QUICK, **{"training.n_iters": 4}), workdir) == trained[1][:4]
    meta_4 = os.path.join(workdir, "checkpoints-meta", "checkpoint_4.pth")
    with pytest.raises(run_lib.Diverged) as info:  # lr 10: the loss grows to ~1e6, finite
        run_lib.train(tiny_config(**QUICK, **{"training.n_iters": 12, "optim.lr": 10.0}), workdir)
    message = str(info.value)
    assert "\n" not in message and "times its running median" in message
    assert f"The last good checkpoint is {meta_4} (step 4, saved before the divergence began)" in message
    assert "Lower optim.lr (now 10)" in message
    d = checkpoint.CheckpointDir(workdir)
    path, state = d.load_newest()
    assert path == meta_4 and state["step"] == 4  # states 5, 6, ... diverged: none was saved
    assert d.numbers() == [1] and d.meta_steps() == [2, 4]
    # the weights from before the divergence: those of the uninterrupted run at step 4
    assert _same_weights(meta_4, os.path.join(trained[0], "checkpoints-meta", "checkpoint_4.pth"))
    # the advice followed: the original lr resumes from step 4 and ends exactly as the uninterrupted run
    assert run_lib.train(tiny_config(**QUICK), workdir) == trained[1][4:]
    assert _same_weights(d.numbered_path(2), os.path.join(trained[0], "checkpoints", "checkpoint_2.pth"))


def _scaled_training_loss(monkeypatch, factors):
    """Multiply the training loss of the k-th training forward pass by ``factors[k]`` (1-based)."""
    real = losses.get_loss_fn

    def scaled(sde, **kwargs):
        loss_fn = real(sde, **kwargs)
        calls = []

        def wrapped(model, batch, **kw):
            value = loss_fn(model, batch, **kw)
            if not kwargs["train"]:
                return value
            calls.append(1)
            return value * factors.get(len(calls), 1.0)
        return wrapped

    monkeypatch.setattr(losses, "get_loss_fn", scaled)


def test_a_save_due_at_a_suspect_state_waits_for_the_next_good_one(tmp_path, monkeypatch):
    _scaled_training_loss(monkeypatch, {5: 1e6})  # the 5th pass judges state 4, a meta save: suspect
    assert len(run_lib.train(tiny_config(**QUICK), str(tmp_path))) == 6
    d = checkpoint.CheckpointDir(str(tmp_path))
    assert d.meta_steps() == [2, 5] and [d.numbered_step(n) for n in d.numbers()] == [3, 6]


def test_a_suspect_final_state_is_not_saved_and_the_run_fails(tmp_path, monkeypatch):
    _scaled_training_loss(monkeypatch, {7: 1e6})  # the 7th pass only judges the final state, 6
    meta_4 = str(tmp_path / "checkpoints-meta" / "checkpoint_4.pth")
    with pytest.raises(run_lib.Diverged, match="^" + re.escape("the final state (step 6) is not saved: the training "
                                                               "loss ") + ".* times its running median .*" +
                                                re.escape(f"The last good checkpoint is {meta_4} (step 4, ")):
        run_lib.train(tiny_config(**QUICK), str(tmp_path))
    assert checkpoint.CheckpointDir(str(tmp_path)).numbers() == [1]
