"""Noise-conditional classifiers: the network and its noise labels, the cross-entropy on noised data,
learning a separable problem, and training / evaluating / resuming through run_lib."""
import json
import os

import pytest
import torch

import run_lib
from configs.vp import digits_classifier
from scoresde import checkpoint, losses, sde_lib
from scoresde.models import create_model, get_classifier_fn, get_score_fn

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_classifier_config(**changes):
    config = digits_classifier.get_config()
    config.model.nf = 8
    config.model.ch_mult = (1, 2)
    t = config.training
    t.batch_size, t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption = 8, 4, 2, 1
    t.log_freq, t.eval_freq = 1, 2
    config.eval.batch_size = 128
    config.eval.begin_ckpt, config.eval.end_ckpt = 1, 2
    config.optim.warmup = 1
    for key, value in changes.items():
        section, leaf = key.split(".")
        config[section][leaf] = value
    return config


class Spy(torch.nn.Module):
    """Records what it is fed; returns zeros shaped like a score network's or a classifier's output."""

    def __init__(self, classes=0):
        super().__init__()
        self.classes = classes

    def forward(self, x, noise_labels, class_labels=None):
        self.fed = noise_labels
        return torch.zeros(x.shape[0], self.classes) if self.classes else torch.zeros_like(x)


@pytest.mark.parametrize("sde,continuous", [(sde_lib.VPSDE(N=100), True), (sde_lib.VPSDE(N=100), False),
                                            (sde_lib.subVPSDE(), True), (sde_lib.VESDE(N=100), True),
                                            (sde_lib.VESDE(N=100), False)])
def test_classifier_is_fed_the_noise_labels_of_a_score_network(sde, continuous):
    x, t = torch.randn(5, 1, 4, 4), torch.linspace(0.01, 1.0, 5)
    score_net, classifier_net = Spy(), Spy(classes=3)
    get_score_fn(sde, score_net, continuous=continuous)(x, t)
    logits = get_classifier_fn(sde, classifier_net, continuous=continuous)(x, t)
    assert logits.shape == (5, 3)
    assert torch.equal(classifier_net.fed, score_net.fed)


def test_network_shapes_time_conditioning_and_errors():
    config = tiny_classifier_config()
    model = create_model(config).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        a = model(x, torch.full((3,), 10.0))
        b = model(x, torch.full((3,), 900.0))
    assert a.shape == (3, 10) and not torch.allclose(a, b)  # the time embedding reaches the logits
    with pytest.raises(ValueError, match="no class_labels"):
        model(x, torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.randn(3, 3, 16, 16), torch.zeros(3))
    config.model.num_classes = 0
    with pytest.raises(ValueError, match="config.model.num_classes"):
        create_model(config)
    ve = tiny_classifier_config(**{"model.embedding_type": "fourier"})
    fourier = create_model(ve)
    assert fourier(x, torch.linspace(0.01, 50.0, 3)).shape == (3, 10)  # VE: fed sigma, embeds log sigma


def test_classifier_loss_is_the_cross_entropy_on_noised_data():
    sde = sde_lib.VPSDE()
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    weights = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))

    def classifier_fn(x_t, t):
        return x_t.reshape(x_t.shape[0], -1) @ weights + t[:, None]

    metrics = {}
    got = losses.classifier_loss(classifier_fn, sde, x, labels, generator=torch.Generator().manual_seed(2),
                                 metrics=metrics)
    # by hand: t ~ U(eps, T), then z, x_t = alpha x + sigma z, then -log softmax[y]
    gen = torch.Generator().manual_seed(2)
    t = 1e-5 + (sde.T - 1e-5) * torch.rand(6, generator=gen)
    z = torch.randn(x.shape, generator=gen)
    mean, std = sde.marginal_prob(x, t)
    logits = classifier_fn(mean + std[:, None, None, None] * z, t)
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(6), labels]
    torch.testing.assert_close(got, expected)
    assert metrics["accuracy"] == (logits.argmax(1) == labels).float().mean()
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        losses.classifier_loss(classifier_fn, sde, x, labels.float())


def test_a_tiny_classifier_learns_a_separable_problem():
    """Two classes of 8x8 images, bright top half or bright bottom half: after 150 steps of the noised
    cross-entropy the classifier is right at low noise and about chance where the signal is gone."""
    torch.manual_seed(0)
    config = tiny_classifier_config(**{"data.image_size": 8, "model.num_classes": 2})
    model = create_model(config)
    sde = sde_lib.VPSDE()

    def batch(n, gen):
        labels = torch.randint(0, 2, (n,), generator=gen)
        x = -torch.ones(n, 1, 8, 8)
        rows = torch.arange(8)[None, :, None]
        x[:, 0] = torch.where((rows < 4) == (labels[:, None, None] == 0), 1.0, -1.0)
        return x + 0.1 * torch.randn(x.shape, generator=gen), labels

    loss_fn = losses.get_classifier_loss_fn(sde, train=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(150):
        x, y = batch(32, gen)
        optimizer.zero_grad()
        loss_fn(model, x, generator=gen, class_labels=y).backward()
        optimizer.step()
    classifier_fn = get_classifier_fn(sde, model)
    x, y = batch(400, torch.Generator().manual_seed(2))
    with torch.no_grad():
        for t, low, high in ((0.05, 0.99, 1.0), (0.3, 0.95, 1.0), (1.0, 0.35, 0.65)):
            tt = torch.full((400,), t)
            mean, std = sde.marginal_prob(x, tt)
            x_t = mean + std[:, None, None, None] * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
            accuracy = (classifier_fn(x_t, tt).argmax(1) == y).float().mean().item()
            assert low <= accuracy <= high, (t, accuracy)


def test_run_lib_trains_logs_accuracy_evaluates_and_resumes_a_classifier(tmp_path):
    whole = run_lib.train(tiny_classifier_config(), str(tmp_path / "whole"))
    assert len(whole) == 4 and all(0 < v < 10 for v in whole)
    first = run_lib.train(tiny_classifier_config(**{"training.n_iters": 2}), str(tmp_path / "parts"))
    assert first + run_lib.train(tiny_classifier_config(), str(tmp_path / "parts")) == whole  # exact resume
    a = checkpoint.load(str(tmp_path / "whole" / "checkpoints" / "checkpoint_2.pth"))["model"]
    b = checkpoint.load(str(tmp_path / "parts" / "checkpoints" / "checkpoint_2.pth"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "whole" / "train_log.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert all(0 <= r["accuracy"] <= 1 for r in records if "loss" in r)
    assert [r["step"] for r in records if "eval_accuracy" in r] == [2, 4]
    assert not os.path.exists(tmp_path / "whole" / "samples")  # no sample grids for a classifier
    result = run_lib.evaluate(tiny_classifier_config(), str(tmp_path / "whole"))[2]
    assert set(result) == {"step", "loss"} and result["loss"]["num_examples"] == 297
    assert 0 <= result["loss"]["accuracy"] <= 1 and result["loss"]["loss"] > 0
    with pytest.raises(ValueError, match=r"config\.training\.objective"):
        run_lib.sample(tiny_classifier_config(), str(tmp_path / "whole"))


@pytest.mark.parametrize("changes,field", [
    ({"training.objective": "energy"}, "training.objective"),
    ({"model.name": "ncsnpp"}, "training.objective"),             # a score network with the classifier loss
    ({"training.objective": "score"}, "training.objective"),      # a classifier with the score loss
    ({"training.label_dropout": 0.1}, "training.label_dropout"),
    ({"model.num_classes": 0}, "model.num_classes"),
])
def test_bad_classifier_configs_fail_naming_the_field(tmp_path, changes, field):
    with pytest.raises(ValueError, match=f"config.{field}".replace(".", r"\.")):
        run_lib.train(tiny_classifier_config(**changes), str(tmp_path))
