"""The training losses against closed forms and hand computations, and the optimisation step.

Closed form used below: for data ``x_0 ~ N(mu, diag(v))`` and ``x_t = alpha x_0 + sigma z`` the exact score is
``s = -(x_t - alpha mu) / c`` with ``c = alpha^2 v + sigma^2``, so ``sigma s + z = z alpha^2 v / c - sigma alpha
sqrt(v) xi / c`` and ``E||sigma s + z||^2 = sum_i alpha^2 v_i / c_i = sum_i (1 - sigma^2 / c_i)``: the
irreducible DSM loss at time ``t`` (halved by the ``0.5 * sum`` reduction).
"""
import math

import numpy as np
import pytest
import torch

from scoresde import analytic, losses, sde_lib
from scoresde.models import ExponentialMovingAverage, get_score_fn

EPS = 1e-5
SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE, "ve": sde_lib.VESDE}
MEAN = torch.tensor([[0.5, -1.0, 0.0, 2.0], [0.3, 0.1, -0.2, 1.0]], dtype=torch.float64)
STD = torch.tensor([[0.2, 1.0, 0.5, 1.5], [0.7, 0.05, 0.3, 1.0]], dtype=torch.float64)


def gaussian():
    return analytic.Gaussian.diagonal(MEAN, STD)          # rank-3 data [B, 2, 4]


def drawn_times(sde, B, seed, eps=EPS):
    """The times ``dsm_loss`` draws first from a generator seeded with ``seed``."""
    return eps + (sde.T - eps) * torch.rand(B, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def expected_exact_loss(sde, t):
    """``E[loss | t]`` at the exact score: ``0.5 * sum_i alpha^2 v_i / (alpha^2 v_i + sigma^2)``, ``[B]``."""
    alpha, sigma = sde.marginal_coeffs(t)
    a2v = alpha[:, None] ** 2 * STD.reshape(1, -1) ** 2
    return 0.5 * (a2v / (a2v + sigma[:, None] ** 2)).sum(dim=1)


@pytest.mark.parametrize("name", list(SDES))
def test_exact_score_attains_the_closed_form_irreducible_loss(name):
    sde, gauss, B = SDES[name](), gaussian(), 20000
    x = gauss.sample(B, torch.Generator().manual_seed(0))
    per_sample = losses.dsm_loss(gauss.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(1))
    assert per_sample.shape == (B,)
    diff = per_sample - expected_exact_loss(sde, drawn_times(sde, B, 1))
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(B)
    # and any perturbation of the exact score does worse, on the same draws
    for perturbed in (lambda x, t: 1.1 * gauss.score(sde, x, t), lambda x, t: gauss.score(sde, x, t) + 0.05):
        worse = losses.dsm_loss(perturbed, sde, x, generator=torch.Generator().manual_seed(1))
        assert worse.mean() > per_sample.mean()


class ScaledExactScore(torch.nn.Module):
    """``s = theta_1 * (-x_t / c) + theta_2 * (alpha mu / c)`` per dimension: linear in its parameters,
    the exact score at ``theta = 1``."""

    def __init__(self, sde, theta1=1.0, theta2=1.0):
        super().__init__()
        self.sde = sde
        self.theta1 = torch.nn.Parameter(torch.full(MEAN.shape, theta1, dtype=torch.float64))
        self.theta2 = torch.nn.Parameter(torch.full(MEAN.shape, theta2, dtype=torch.float64))

    def forward(self, x, t):
        alpha, sigma = self.sde.marginal_coeffs(t)
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        c = alpha ** 2 * STD ** 2 + sigma ** 2
        return self.theta1 * (-x / c) + self.theta2 * (alpha * MEAN / c)


def chunk_gradients(model, sde, likelihood_weighting, chunks=40, size=500):
    grads = []
    for k in range(chunks):
        x = gaussian().sample(size, torch.Generator().manual_seed(100 + k))
        loss = losses.dsm_loss(model, sde, x, generator=torch.Generator().manual_seed(200 + k),
                               likelihood_weighting=likelihood_weighting).mean()
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]))
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / math.sqrt(chunks)


@pytest.mark.parametrize("likelihood_weighting", [False, True])
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_gradient_vanishes_at_the_exact_score(name, likelihood_weighting):
    sde = SDES[name]()
    mean, se = chunk_gradients(ScaledExactScore(sde), sde, likelihood_weighting)
    assert (mean.abs() <= 4.5 * se).all()
    mean_off, se_off = chunk_gradients(ScaledExactScore(sde, theta1=1.3, theta2=0.8), sde, likelihood_weighting)
    assert (mean_off.abs() > 10 * se_off).any()


@pytest.mark.parametrize("name", list(SDES))
def test_likelihood_weighting_is_g2_over_sigma2_times_the_default(name):
    sde, B = SDES[name](), 64
    x = gaussian().sample(B, torch.Generator().manual_seed(2))
    score = lambda x, t: -x + 0.3  # noqa: E731  (any score: the identity holds draw by draw)
    plain = losses.dsm_loss(score, sde, x, generator=torch.Generator().manual_seed(3))
    weighted = losses.dsm_loss(score, sde, x, generator=torch.Generator().manual_seed(3), likelihood_weighting=True)
    t = drawn_times(sde, B, 3)
    g2 = sde.sde(x, t)[1] ** 2
    sigma2 = sde.marginal_coeffs(t)[1] ** 2
    torch.testing.assert_close(weighted, plain * g2 / sigma2, rtol=1e-10, atol=0)


def test_reduce_mean_is_sum_over_half_d():
    sde, x = sde_lib.VPSDE(), gaussian().sample(8, torch.Generator().manual_seed(4))
    score = lambda x, t: -x  # noqa: E731
    by_sum = losses.dsm_loss(score, sde, x, generator=torch.Generator().manual_seed(5))
    by_mean = losses.dsm_loss(score, sde, x, generator=torch.Generator().manual_seed(5), reduce_mean=True)
    torch.testing.assert_close(by_mean, by_sum * 2 / x[0].numel())


class Recorder(torch.nn.Module):
    """``model(x, labels, class_labels=None)``: a fixed affine map that records what it is fed."""

    def forward(self, x, labels, class_labels=None):
        self.x, self.labels, self.class_labels = x, labels, class_labels
        return 0.5 * x - 0.1


def hand_draws(N, B, shape, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N, (B,), generator=g)
    return labels, torch.randn((B, *shape), generator=g, dtype=torch.float64)


def test_ddpm_loss_against_hand_computation():
    N, B = 1000, 6
    x = torch.randn(B, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    model = Recorder()
    got = losses.ddpm_loss(model, sde_lib.VPSDE(0.1, 20.0, N), x, generator=torch.Generator().manual_seed(7))
    labels, z = hand_draws(N, B, x.shape[1:], 7)
    betas = np.linspace(0.1 / N, 20.0 / N, N)                 # Ho et al. 2020 with the paper's beta range
    abar = torch.from_numpy(np.cumprod(1 - betas))[labels].reshape(B, 1, 1)
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * z
    assert torch.equal(model.labels, labels) and model.labels.dtype == torch.int64
    torch.testing.assert_close(model.x, x_t)
    torch.testing.assert_close(got, 0.5 * ((0.5 * x_t - 0.1 - z) ** 2).sum(dim=(1, 2)))


def test_smld_loss_against_hand_computation():
    N, B, smin, smax = 10, 6, 0.01, 50.0
    x = torch.randn(B, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    model = Recorder()
    got = losses.smld_loss(model, sde_lib.VESDE(smin, smax, N), x, generator=torch.Generator().manual_seed(9),
                           reduce_mean=True)
    labels, z = hand_draws(N, B, x.shape[1:], 9)
    sigma = (smax * (smin / smax) ** (labels.double() / (N - 1)))[:, None]   # NCSN: i = 0 is sigma_max
    x_t = x + sigma * z
    target = -(x_t - x) / sigma ** 2
    torch.testing.assert_close(model.x, x_t)
    assert torch.equal(model.labels, labels)
    torch.testing.assert_close(got, ((0.5 * x_t - 0.1 - target) ** 2).mean(dim=1) * sigma[:, 0] ** 2)


class TinyNet(torch.nn.Module):
    """``model(x, noise_labels, class_labels=None)`` on ``[B, 2, 4]`` data."""

    def __init__(self, num_classes=0):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 8, dtype=torch.float64)
        self.emb = torch.nn.Embedding(num_classes, 8, dtype=torch.float64) if num_classes else None

    def forward(self, x, noise_labels, class_labels=None):
        self.seen_labels = noise_labels
        h = self.lin(x.reshape(x.shape[0], -1)) + 1e-3 * noise_labels.to(x.dtype)[:, None]
        if self.emb is not None:
            h = h + self.emb(class_labels)
        return h.reshape(x.shape)


@pytest.mark.parametrize("name", list(SDES))
def test_loss_fn_continuous_goes_through_get_score_fn(name):
    sde, model = SDES[name](), TinyNet(num_classes=3)
    x = gaussian().sample(16, torch.Generator().manual_seed(10))
    classes = torch.arange(16) % 3
    loss_fn = losses.get_loss_fn(sde, train=True, reduce_mean=True)
    loss = loss_fn(model, x, generator=torch.Generator().manual_seed(11), class_labels=classes)
    assert model.training and loss.requires_grad and loss.shape == ()
    score_fn = get_score_fn(sde, model, continuous=True, train=True, class_labels=classes)
    by_hand = losses.dsm_loss(score_fn, sde, x, generator=torch.Generator().manual_seed(11), reduce_mean=True)
    torch.testing.assert_close(loss, by_hand.mean())
    eval_loss = losses.get_loss_fn(sde, train=False, reduce_mean=True)(
        model, x, generator=torch.Generator().manual_seed(11), class_labels=classes)
    assert not model.training and not eval_loss.requires_grad
    torch.testing.assert_close(eval_loss, loss.detach())


@pytest.mark.parametrize("sde_cls, expected", [(sde_lib.VPSDE, losses.ddpm_loss), (sde_lib.VESDE, losses.smld_loss)])
def test_loss_fn_discrete_picks_ddpm_or_smld(sde_cls, expected):
    sde, model = sde_cls(N=50), TinyNet()
    x = gaussian().sample(8, torch.Generator().manual_seed(12))
    loss = losses.get_loss_fn(sde, train=True, continuous=False)(model, x, generator=torch.Generator().manual_seed(13))
    by_hand = expected(model, sde, x, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(loss, by_hand.mean())
    assert model.seen_labels.dtype == torch.int64


def test_label_dropout_replaces_each_label_with_probability_p():
    labels = torch.arange(200_000) % 7
    p = 0.2
    dropped = losses.drop_labels(labels, p, 7, generator=torch.Generator().manual_seed(0))
    is_null = dropped == 7
    # binomial count: within 4 standard deviations of n p
    n = labels.numel()
    assert abs(is_null.sum().item() - n * p) < 4 * math.sqrt(n * p * (1 - p))
    assert torch.equal(dropped[~is_null], labels[~is_null])  # the others keep their own label
    for c in range(7):  # independent of the class
        share = is_null[labels == c].float().mean().item()
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / (n / 7))
    again = losses.drop_labels(labels, p, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, dropped)  # the generator decides everything
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    assert losses.drop_labels(labels, 0.0, 7, generator=generator) is labels
    assert torch.equal(generator.get_state(), state)  # p = 0 draws nothing: the loss's stream is unchanged
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label dropout probability"):
            losses.drop_labels(labels, bad, 7)


def test_bad_combinations_are_named():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="continuous"):
        losses.get_loss_fn(sde_lib.subVPSDE(), train=True, continuous=False)
    with pytest.raises(ValueError, match="likelihood_weighting"):
        losses.get_loss_fn(sde_lib.VPSDE(), train=True, continuous=False, likelihood_weighting=True)
    with pytest.raises(ValueError, match="eps"):
        losses.get_loss_fn(sde_lib.VESDE(), train=True, eps=0.0)
    with pytest.raises(TypeError, match="sde"):
        losses.get_loss_fn("vpsde", train=True)
    with pytest.raises(ValueError, match="vpsde"):
        losses.ddpm_loss(Recorder(), sde_lib.VESDE(), x)
    with pytest.raises(ValueError, match="vpsde"):
        losses.ddpm_loss(Recorder(), sde_lib.subVPSDE(), x)
    with pytest.raises(ValueError, match="vesde"):
        losses.smld_loss(Recorder(), sde_lib.VPSDE(), x)
    with pytest.raises(ValueError, match="eps"):
        losses.dsm_loss(lambda x, t: -x, sde_lib.VPSDE(), x, eps=1.5)
    with pytest.raises(ValueError, match=r"\[B, \.\.\.\]"):
        losses.dsm_loss(lambda x, t: -x, sde_lib.VPSDE(), torch.randn(4))


def test_warmup_lr():
    assert losses.warmup_lr(1e-3, 1, 4) == pytest.approx(2.5e-4)
    assert losses.warmup_lr(1e-3, 4, 4) == losses.warmup_lr(1e-3, 100, 4) == 1e-3
    assert losses.warmup_lr(1e-3, 1, 0) == 1e-3


def test_train_step_warmup_clipping_and_ema():
    sde, model = sde_lib.VPSDE(), TinyNet()
    x = gaussian().sample(32, torch.Generator().manual_seed(14))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.9)
    step_fn = losses.get_step_fn(sde, train=True, lr=0.4, warmup=4, grad_clip=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    loss = step_fn(model, x, optimizer=optimizer, step=1, ema=ema, generator=torch.Generator().manual_seed(15))
    assert not loss.requires_grad and math.isfinite(loss.item())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    # plain SGD: the update is lr * clipped gradient, whose global norm is grad_clip
    update = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, model.parameters())])
    assert update.norm().item() == pytest.approx(0.1 * 0.5, rel=1e-6)
    assert ema.num_updates == 1
    step_fn(model, x, optimizer=optimizer, step=9, ema=ema, generator=torch.Generator().manual_seed(16))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="step"):
        step_fn(model, x, optimizer=optimizer, step=0)
    with pytest.raises(ValueError, match="optimizer"):
        step_fn(model, x, step=1)


def test_eval_step_uses_ema_weights_under_no_grad_and_restores():
    sde, model = sde_lib.VESDE(), TinyNet()
    x = gaussian().sample(16, torch.Generator().manual_seed(17))
    ema = ExponentialMovingAverage(model.parameters(), decay=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    ema.update(model.parameters())                # decay 0 under warm-up min: shadow moves towards the new weights
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.3)
    live = [p.detach().clone() for p in model.parameters()]
    eval_fn = losses.get_step_fn(sde, train=False)
    loss = eval_fn(model, x, ema=ema, generator=torch.Generator().manual_seed(18))
    assert all(torch.equal(a, p) for a, p in zip(live, model.parameters()))
    with losses.ema_weights(ema, model):
        by_hand = losses.get_loss_fn(sde, train=False)(model, x, generator=torch.Generator().manual_seed(18))
    torch.testing.assert_close(loss, by_hand)
    live_loss = eval_fn(model, x, generator=torch.Generator().manual_seed(18))
    assert not torch.allclose(loss, live_loss) and not loss.requires_grad


def test_training_on_gaussian_data_lowers_the_loss():
    sde, model = sde_lib.VPSDE(), TinyNet()
    gauss = gaussian()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step_fn = losses.get_step_fn(sde, train=True, lr=1e-2, warmup=0, grad_clip=1.0, reduce_mean=True)
    eval_fn = losses.get_step_fn(sde, train=False, reduce_mean=True)
    x_eval = gauss.sample(2048, torch.Generator().manual_seed(19))
    start = eval_fn(model, x_eval, generator=torch.Generator().manual_seed(20))
    for step in range(1, 201):
        step_fn(model, gauss.sample(128, torch.Generator().manual_seed(1000 + step)), optimizer=optimizer,
                step=step, generator=torch.Generator().manual_seed(2000 + step))
    end = eval_fn(model, x_eval, generator=torch.Generator().manual_seed(20))
    assert end < 0.7 * start
