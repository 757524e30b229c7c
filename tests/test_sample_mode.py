"""``--mode sample`` with class labels, guidance (classifier-free, classifier) and image tasks (inpainting,
colourisation, super-resolution) through run_lib, with tiny networks and few steps; every bad value of
the sampling fields refused at start-up naming the field."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import run_lib
from scoresde.datasets import pad_to_size, read_digits
from test_classifier import tiny_classifier_config
from test_run_lib import tiny_config

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")

COND = {"model.num_classes": 10, "training.label_dropout": 0.2}


def trained(tmp_path_factory, name, config):
    workdir = str(tmp_path_factory.mktemp(name))
    config.training.n_iters, config.training.snapshot_sampling = 2, False
    run_lib.train(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    return trained(tmp_path_factory, "cond", tiny_config(**COND))


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
    return trained(tmp_path_factory, "uncond", tiny_config())


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    return trained(tmp_path_factory, "colour", tiny_config(**{"data.num_channels": 3}))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return trained(tmp_path_factory, "clf", tiny_classifier_config())


def sampling(base=None, **fields):
    config = tiny_config(**(base or {}))
    config.sampling.options.pc.N = 2
    config.sampling.num_samples, config.sampling.batch_size = 6, 4
    for key, value in fields.items():
        config.sampling[key] = value
    return config


def png(stem):
    return np.asarray(Image.open(stem + ".png"))


def test_classifier_free_guidance_draws_rows_per_label(conditional):
    stem = run_lib.sample(sampling(COND, guidance="cfg", guidance_scale=2.0, num_samples=20, batch_size=10),
                          conditional)
    assert os.path.basename(stem) == "step_2_pc_cfg2_seed42"
    saved = np.load(stem + ".npz")
    assert saved["samples"].shape == (20, 16, 16, 1) and saved["labels"].tolist() == list(range(10)) * 2
    # one row per label 0..9, two samples each; 16-pixel images 1 pixel apart, enlarged 4 times
    assert png(stem).shape == ((10 * 17 + 1) * 4, (2 * 17 + 1) * 4)


def test_labels_and_the_null_label(conditional):
    stem = run_lib.sample(sampling(COND, labels="3,7"), conditional)
    assert np.load(stem + ".npz")["labels"].tolist() == [3, 7, 3, 7, 3, 7]
    assert png(stem).shape[0] == (2 * 17 + 1) * 4  # rows for 3 and 7
    with pytest.raises(ValueError, match=r"holds samples of another draw \(labels: \[3, 7\] there, \[10\] now\); use "
                                         r"another folder or delete it to draw afresh \(--config\.sampling\.folder"):
        run_lib.sample(sampling(COND, labels="-1"), conditional)  # the same shard folder, other labels
    stem = run_lib.sample(sampling(COND, labels="-1", folder="null"), conditional)  # unconditional: the null label
    assert np.load(stem + ".npz")["labels"].tolist() == [10] * 6


def test_classifier_guidance_of_an_unconditional_network(unconditional, classifier):
    stem = run_lib.sample(sampling(guidance="classifier", classifier_workdir=classifier, labels="4",
                                   guidance_scale=3.0), unconditional)
    saved = np.load(stem + ".npz")
    assert saved["labels"].tolist() == [4] * 6 and saved["samples"].shape == (6, 16, 16, 1)
    assert "_classifier3_" in os.path.basename(stem)


def digits_test(n, channels=1):
    images = pad_to_size(read_digits("test")[0][:n], 16)
    return images.permute(0, 2, 3, 1).expand(-1, -1, -1, channels).numpy()


def test_inpainting_returns_the_observed_pixels_exactly(conditional):
    stem = run_lib.sample(sampling(COND, task="inpaint", mask="half", num_samples=5), conditional)
    saved = np.load(stem + ".npz")
    samples, originals, observations = saved["samples"], saved["originals"], saved["observations"]
    assert samples.shape == originals.shape == observations.shape == (5, 16, 16, 1)
    assert np.array_equal(originals, digits_test(5))  # the first test images, in order
    assert saved["labels"].tolist() == read_digits("test")[1][:5].tolist()
    assert saved["class_labels"].tolist() == [10] * 5  # the network's null label: unconditional inpainting
    assert np.array_equal(samples[:, :8], originals[:, :8])  # observed: exactly the test image
    assert not np.array_equal(samples[:, 8:], originals[:, 8:])
    assert np.array_equal(observations[:, :8], originals[:, :8]) and (observations[:, 8:] == 128).all()
    grid = png(stem)  # rows: observation | samples | original, 5 columns
    assert grid.shape == ((3 * 17 + 1) * 4, (5 * 17 + 1) * 4)
    cell = grid[4:68, 4 + 17 * 4:68 + 17 * 4]  # row 0 (observations), column 1
    assert np.array_equal(cell[::4, ::4], observations[1, :, :, 0])
    cell = grid[4 + 34 * 4:68 + 34 * 4, 4:68]  # row 2 (originals), column 0
    assert np.array_equal(cell[::4, ::4], originals[0, :, :, 0])


@pytest.mark.parametrize("mask", ["box", "random"])
def test_other_masks(conditional, mask):
    stem = run_lib.sample(sampling(COND, task="inpaint", mask=mask, num_samples=4), conditional)
    saved = np.load(stem + ".npz")
    observed = saved["observations"] != 128  # the digits' grey levels are multiples of 255/16, never 128
    assert 0 < observed.mean() < 1
    assert np.array_equal(saved["samples"][observed], saved["originals"][observed])


def narrow_gaussian_scores(monkeypatch):
    """Replace each batch's score by the exact score of a narrow Gaussian around ``A^+ y`` (the grey image in
    every channel, the low-resolution image enlarged): a tiny network drawn for two steps saturates most
    pixels, and clipping to [0, 1] changes channel means and block averages there."""
    from scoresde.utils import batch_broadcast

    def narrow_gaussian(run, images, classifier_fn):
        def condition(batch, labels):
            observation = run_lib.task_observation(run, images[batch], batch.tolist())
            mean = observation.pinv(observation.y)

            def score_fn(x, t):
                alpha, sigma = (batch_broadcast(c.to(x.dtype), x) for c in run.sde.marginal_coeffs(t))
                return -(x - alpha * mean) / (sigma ** 2 + (0.02 * alpha) ** 2)
            return score_fn, observation
        return condition

    monkeypatch.setattr(run_lib, "task_condition", narrow_gaussian)


def test_colourised_output_has_the_grey_input_as_channel_mean(colour, monkeypatch):
    narrow_gaussian_scores(monkeypatch)
    config = sampling({"data.num_channels": 3}, task="colorize", num_samples=4)
    config.sampling.options.pc.N = 100  # a closed-form score is cheap: enough steps to converge
    stem = run_lib.sample(config, colour)
    saved = np.load(stem + ".npz")
    samples, originals = saved["samples"].astype(float), saved["originals"].astype(float)
    assert samples.shape == (4, 16, 16, 3) and np.array_equal(saved["observations"], saved["originals"])
    inside = ((samples > 0) & (samples < 255)).all(axis=-1)  # no channel clipped
    assert inside.sum() > 100
    difference = np.abs(samples.mean(axis=-1) - originals.mean(axis=-1))[inside]
    assert difference.max() <= 1.0  # rounding to 8 bits only
    assert samples.std(axis=-1)[inside].max() > 0  # colour is drawn, not copied from the grey image


def test_colourisation_in_float_is_exact():
    """The same path in float, without 8-bit rounding: the library pieces the sample mode uses."""
    from scoresde import image_tasks, sde_lib
    from scoresde.sampling import get_sampler
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    observation = image_tasks.make_observation("colorize", x)
    sampler = get_sampler("pc", sde=sde_lib.VPSDE(), shape=x.shape, N=5, predictor="euler_maruyama", corrector="none")
    out, _ = sampler(lambda y, t: -y, generator=torch.Generator().manual_seed(1), observation=observation)
    torch.testing.assert_close(out.mean(dim=1, keepdim=True), observation.y, atol=1e-6, rtol=0)


def test_super_resolution_keeps_the_low_resolution_image(conditional, monkeypatch):
    narrow_gaussian_scores(monkeypatch)
    config = sampling(COND, task="superres", superres_factor=4, num_samples=4)
    config.sampling.options.pc.N = 100
    stem = run_lib.sample(config, conditional)
    saved = np.load(stem + ".npz")
    blocks = lambda a: torch.tensor(a, dtype=torch.float64).permute(0, 3, 1, 2).unfold(2, 4, 4).unfold(3, 4, 4)  # noqa: E731
    samples, originals = blocks(saved["samples"]), blocks(saved["originals"])
    inside = ((samples > 0) & (samples < 255)).all(dim=-1).all(dim=-1)  # 4x4 blocks with no pixel clipped
    assert inside.sum() > 10
    difference = (samples.mean(dim=(-1, -2)) - originals.mean(dim=(-1, -2))).abs()[inside]
    assert difference.max() <= 1.0  # the block averages are the low-resolution image, up to 8-bit rounding
    assert samples.std(dim=(-1, -2))[inside].max() > 0  # detail is drawn inside the blocks
    shown = blocks(saved["observations"])  # the observation, shown enlarged: constant blocks
    assert (shown.std(dim=(-1, -2)) == 0).all() and (shown.mean(dim=(-1, -2)) - originals.mean(dim=(-1, -2))).abs().max() <= 0.5


@pytest.mark.parametrize("method,sampler", [("pigdm", "sde"), ("dps", "ddim")])
def test_posterior_guidance_works_with_any_sampler(conditional, method, sampler):
    """Score transforms need no support from the sampler: 'sde' (torchsde) refuses observation=."""
    config = sampling(COND, task="inpaint", task_method=method, task_likelihood_std=0.1, sampler=sampler,
                      num_samples=2, batch_size=2)
    config.sampling.options.sde.dt = 0.25
    config.sampling.options.ddim.nfe = 3
    stem = run_lib.sample(config, conditional)
    assert np.load(stem + ".npz")["samples"].shape == (2, 16, 16, 1) and stem.endswith(f"_{method}_seed42")


def _task_draw(workdir, folder, **fields):
    config = sampling(COND, task="inpaint", mask="random", mask_fraction=0.3, task_noise_std=0.05,
                      num_samples=5, folder=folder, **fields)
    stem = run_lib.sample(config, workdir)
    with np.load(stem + ".npz") as saved:
        return stem, {k: saved[k] for k in saved.files}


def test_an_image_task_is_drawn_in_shards_by_sample_index(conditional):
    """Row i of an image task depends on (seed, i) alone: its observation (random mask and noise) and its
    sample are the same in one batch and shard of 5 as in batches and shards of 2, and a draw that lost a
    shard draws that one again and assembles the same files."""
    stem, whole = _task_draw(conditional, "task_whole", batch_size=5, shard_size=5)
    _, cut = _task_draw(conditional, "task_cut", batch_size=2, shard_size=2)
    assert sorted(os.listdir(stem + "_shards")) == ["manifest.json", "samples_000000-000005.npz"]
    assert set(whole) == {"samples", "observations", "originals", "labels", "class_labels"}
    for key in whole:
        assert np.array_equal(whole[key], cut[key]), key
    observed = whole["observations"] != 128
    assert 0 < observed.mean() < 1 and len({m.tobytes() for m in observed}) == 5  # a mask of its own per image
    cut_stem = stem.replace("task_whole", "task_cut")
    os.remove(os.path.join(cut_stem + "_shards", "samples_000002-000004.npz"))
    os.remove(cut_stem + ".npz")
    _, again = _task_draw(conditional, "task_cut", batch_size=2, shard_size=2)
    for key in whole:
        assert np.array_equal(whole[key], again[key]), key


def test_another_task_draw_in_the_same_folder_is_refused_naming_the_field(conditional):
    _task_draw(conditional, "task_refused", shard_size=2)
    with pytest.raises(ValueError, match="task_noise_std"):
        run_lib.sample(sampling(COND, task="inpaint", mask="random", mask_fraction=0.3, task_noise_std=0.1,
                                num_samples=5, folder="task_refused", shard_size=2), conditional)


BAD = [
    (COND, dict(labels="10"), "sampling.labels"),               # out of range for 10 classes
    (COND, dict(labels="a,b"), "sampling.labels"),
    (COND, dict(labels="-1,3"), "sampling.labels"),
    ({}, dict(labels="3"), "sampling.labels"),                  # an unconditional network
    (COND, dict(guidance="magic"), "sampling.guidance"),
    (COND, dict(guidance="cfg", guidance_scale=-1.0), "sampling.guidance_scale"),
    ({}, dict(guidance="cfg"), "sampling.guidance"),            # cfg on an unconditional network
    (COND, dict(guidance="cfg", labels="-1"), "sampling.labels"),
    ({}, dict(guidance="classifier"), "sampling.classifier_workdir"),
    (COND, dict(task="deblur"), "sampling.task"),
    (COND, dict(task="colorize"), "sampling.task"),            # 1-channel data
    (COND, dict(task="superres", superres_factor=3), "sampling.superres_factor"),
    (COND, dict(task="superres", superres_factor=1), "sampling.superres_factor"),
    (COND, dict(task="inpaint", mask="circle"), "sampling.mask"),
    (COND, dict(task="inpaint", mask_fraction=1.5), "sampling.mask_fraction"),
    (COND, dict(task="inpaint", task_noise_std=-0.1), "sampling.task_noise_std"),
    (COND, dict(task="inpaint", task_method="magic"), "sampling.task_method"),
    (COND, dict(task="inpaint", task_method="dps"), "sampling.task_likelihood_std"),
    (COND, dict(task="inpaint", sampler="sde"), "sampling.sampler"),   # torchsde cannot do replacement
    (COND, dict(task="inpaint", sampler="smc"), "sampling.sampler"),   # smc needs noise_std > 0
    (COND, dict(task="inpaint", num_samples=300), "sampling.num_samples"),  # the test split has 297
]


@pytest.mark.parametrize("base,fields,field", BAD)
def test_bad_sampling_fields_fail_at_start_naming_the_field(conditional, base, fields, field, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a bad config reached the network")
    monkeypatch.setattr(run_lib, "load_for_inference", no_network)
    with pytest.raises(ValueError, match=f"config\\.{field.replace('.', '[.]')} = "):
        run_lib.sample(sampling(base, **fields), conditional)


def test_task_on_toy_data_is_refused(tmp_path):
    from configs.vp import toy
    config = toy.get_config()
    config.sampling.task = "inpaint"
    with pytest.raises(ValueError, match=r"config\.sampling\.task = 'inpaint': image tasks need image data"):
        run_lib.sample(config, str(tmp_path))


def test_bad_classifiers_are_refused(conditional, unconditional, classifier, tmp_path):
    with pytest.raises(ValueError, match=r"config\.sampling\.classifier_workdir = .*not a classifier"):
        run_lib.sample(sampling(guidance="classifier", classifier_workdir=conditional), unconditional)
    with pytest.raises(ValueError, match=r"config\.sampling\.labels = '12': out of range: the classifier"):
        run_lib.sample(sampling(guidance="classifier", classifier_workdir=classifier, labels="12"), unconditional)
    with pytest.raises(ValueError, match=r"config\.sampling\.classifier_workdir = .*another SDE"):
        run_lib.sample(sampling({"model.beta_max": 10.0}, guidance="classifier", classifier_workdir=classifier),
                       unconditional)
    with pytest.raises(FileNotFoundError, match="classifier_config"):
        run_lib.sample(sampling(guidance="classifier", classifier_workdir=str(tmp_path)), unconditional)
