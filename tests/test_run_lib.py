"""run_lib end to end on the embedded digits with a tiny network: train, exact resume, NaN stop,
evaluation (resumable), sampling with any sampler, metrics unavailable, config checks."""
import json
import os

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
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
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
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["checkpoint_1.pth", "checkpoint_2.pth"]
    meta = checkpoint.load(os.path.join(workdir, "checkpoints-meta", "checkpoint.pth"))
    assert meta["step"] == 6 and meta["seed"] == 42
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
    assert os.listdir(meta_dir) == ["checkpoint.pth"]  # no temporary file left behind
    assert checkpoint.load(str(meta_dir / "checkpoint.pth"))["step"] == 3  # the previous save, intact
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert len(run_lib.train(config, str(tmp_path))) == 1  # resumes from step 3


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = losses.get_loss_fn

    def poisoned(sde, **kwargs):
        loss_fn = real(sde, **kwargs)
        calls = []

        def wrapped(model, batch, **kw):
            calls.append(1)
            value = loss_fn(model, batch, **kw)
            return value * float("nan") if kwargs["train"] and len(calls) == 3 else value
        return wrapped

    monkeypatch.setattr(losses, "get_loss_fn", poisoned)
    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        run_lib.train(tiny_config(), str(tmp_path))
    assert checkpoint.load(str(tmp_path / "checkpoints-meta" / "checkpoint.pth"))["step"] == 2


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
    from_ours = run_lib.sample(config, workdir)
    import numpy as np
    assert np.array_equal(np.load(from_paper + ".npz")["samples"], np.load(from_ours + ".npz")["samples"])
