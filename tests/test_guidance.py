"""Guidance and observations against closed-form truth (scoresde.analytic): a mixture's responsibilities are its
exact noise-conditional classifier; a Gaussian prior with linear measurements has an exact Gaussian posterior,
a mixture prior an exact mixture posterior."""
import math

import pytest
import torch

from scoresde import analytic, guidance, sde_lib
from scoresde.sampling import get_sampler

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def two_d_mixture():
    return analytic.GaussianMixture([0.3, 0.7], means=torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
                                    stds=torch.tensor([0.3, 0.5]))


def rand_x(shape, seed=0):
    return torch.randn(shape, generator=gen(seed), dtype=F64)


# ---------------------------------------------------------------- classifier guidance
@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE(sigma_max=10.0)], ids=["vp", "ve"])
def test_classifier_guidance_at_scale_one_is_the_exact_conditional_score(sde):
    mix = two_d_mixture()
    x, t = 3 * rand_x((64, 2)), torch.linspace(0.01, 1.0, 64, dtype=F64)
    for k in (0, 1):
        guided = guidance.classifier_guidance(mix.score_fn(sde), mix.classifier_fn(sde), torch.full((64,), k), 1.0)
        exact = mix.component(k).score(sde, x, t)
        assert torch.allclose(guided(x, t), exact, atol=1e-9, rtol=1e-9)
    twice = guidance.classifier_guidance(mix.score_fn(sde), mix.classifier_fn(sde), torch.zeros(64, dtype=torch.long), 2.0)
    s_u, s_c = mix.score(sde, x, t), mix.component(0).score(sde, x, t)
    assert torch.allclose(twice(x, t), s_u + 2 * (s_c - s_u), atol=1e-9)


@pytest.mark.parametrize("name, options", [("pc", {"predictor": "euler_maruyama", "corrector": "none", "N": 500}),
                                           ("ode", {"rtol": 1e-4, "atol": 1e-4}),
                                           ("dpmpp_2m", {"nfe": 30})])
def test_classifier_guidance_samples_the_chosen_component(name, options):
    sde, mix, B = sde_lib.VPSDE(), two_d_mixture(), 2000
    for k, mean, std in ((0, [-2.0, 0.0], 0.3), (1, [2.0, 1.0], 0.5)):
        guided = guidance.classifier_guidance(mix.score_fn(sde), mix.classifier_fn(sde), torch.full((B,), k))
        x, _ = get_sampler(name, sde=sde, shape=(B, 2), dtype=F64, **options)(guided, generator=gen(k))
        share = ((x[:, 0] > 0) == bool(k)).double().mean().item()
        assert share > 0.995, share
        assert torch.allclose(x.mean(0), torch.tensor(mean, dtype=F64), atol=0.05)
        assert torch.allclose(x.std(0), torch.full((2,), std, dtype=F64), rtol=0.08)


# ---------------------------------------------------------------- classifier-free guidance
def test_classifier_free_guidance_interpolates_the_scores():
    sde, mix = sde_lib.VPSDE(), two_d_mixture()
    x, t = 3 * rand_x((32, 2)), torch.linspace(0.01, 1.0, 32, dtype=F64)
    cond, uncond = mix.component(0).score_fn(sde), mix.score_fn(sde)
    s_c, s_u = cond(x, t), uncond(x, t)
    for scale in (0.0, 1.0, 3.0):
        out = guidance.classifier_free_guidance(cond, uncond, scale)(x, t)
        assert torch.allclose(out, s_u + scale * (s_c - s_u), atol=1e-12)


@pytest.mark.parametrize("scale, expected_share", [(0.0, 0.3), (1.0, 1.0)])
def test_classifier_free_guidance_samples(scale, expected_share):
    """Scale 1 samples the component, scale 0 the mixture with its weights."""
    sde, mix, B = sde_lib.VPSDE(), two_d_mixture(), 4000
    guided = guidance.classifier_free_guidance(mix.component(0).score_fn(sde), mix.score_fn(sde), scale)
    x, _ = get_sampler("dpmpp_2m", sde=sde, shape=(B, 2), dtype=F64, nfe=30)(guided, generator=gen(1))
    share = (x[:, 0] < 0).double().mean().item()
    assert abs(share - expected_share) < 3 * math.sqrt(0.3 * 0.7 / B) + 1e-3


def test_classifier_free_guidance_from_model_makes_one_call_on_a_doubled_batch():
    calls = []

    def score_fn(x, t, class_labels=None):  # a "network" whose score depends on the label
        calls.append(x.shape[0])
        return -x + class_labels.to(x.dtype)[:, None] * t[:, None]

    x, t, labels = rand_x((5, 3)), torch.rand(5, dtype=F64), torch.tensor([0, 1, 2, 1, 0])
    out = guidance.classifier_free_guidance_from_model(score_fn, labels, 2.5, null_label=3)(x, t)
    assert calls == [10]
    s_c, s_u = score_fn(x, t, labels), score_fn(x, t, torch.full_like(labels, 3))
    assert torch.allclose(out, s_u + 2.5 * (s_c - s_u))
    calls.clear()
    guidance.classifier_free_guidance_from_model(score_fn, labels, 1.0, null_label=3)(x, t)
    guidance.classifier_free_guidance_from_model(score_fn, labels, 0.0, null_label=3)(x, t)
    assert calls == [5, 5]  # scale 1 and 0 need one of the two scores only


# ---------------------------------------------------------------- replacement
DIAG_MEAN = torch.tensor([0.5, -0.3, 0.2, 1.0, 0.0, -1.0])
DIAG_STD = torch.tensor([0.3, 1.0, 0.5, 0.1, 0.7, 0.4])


@pytest.mark.parametrize("name, options", [
    ("pc", {"predictor": "euler_maruyama", "corrector": "none", "N": 400}),
    ("pc", {"predictor": "reverse_diffusion", "corrector": "langevin"}),
    ("ancestral", {}),
    ("ddim", {"nfe": 40, "eta": 1.0}),
    ("euler", {"nfe": 40}),
    ("heun", {"nfe": 41}),
    ("dpmpp_2m", {"nfe": 30}),
    ("dpmpp_2m_sde", {"nfe": 40}),
    ("unipc", {"nfe": 30}),
])
def test_replacement_on_axis_aligned_gaussian(name, options):
    """Independent coordinates: the observed ones come back exactly, the others keep their marginals."""
    sde, B = sde_lib.VPSDE(N=500 if name != "ancestral" else 1000), 3000
    if name == "pc" and options["predictor"] == "reverse_diffusion":
        sde = sde_lib.VPSDE(N=500)
    prior = analytic.Gaussian.diagonal(DIAG_MEAN, DIAG_STD)
    y = torch.zeros(B, 6, dtype=F64)
    y[:, :3] = torch.tensor([2.0, -1.0, 0.5], dtype=F64)   # far from the prior mean: no effect on the rest
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]], dtype=F64)
    obs = guidance.Inpainting(y, mask)
    sampler = get_sampler(name, sde=sde, shape=(B, 6), dtype=F64, **options)
    x, _ = sampler(prior.score_fn(sde), generator=gen(2), observation=obs)
    assert torch.equal(x[:, :3], y[:, :3])
    free = slice(3, 6)
    se = DIAG_STD[free].double() / math.sqrt(B)
    assert ((x[:, free].mean(0) - DIAG_MEAN[free]).abs() < 4 * se + 0.01).all(), x[:, free].mean(0)
    # the spread is the sampler's own (first-order solvers at 40 NFE are 5-12% narrow without any observation)
    unconditional, _ = sampler(prior.score_fn(sde), generator=gen(3))
    assert torch.allclose(x[:, free].std(0), unconditional[:, free].std(0), rtol=0.06)
    assert torch.allclose(x[:, free].std(0), DIAG_STD[free].double(), rtol=0.15)


@pytest.mark.parametrize("name", ["ode", "sde"])
def test_samplers_without_a_step_refuse_an_observation(name):
    sde = sde_lib.VPSDE()
    obs = guidance.Inpainting(torch.zeros(4, 2), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=f"cannot honour observation=.*'pc'.*smc"):
        get_sampler(name, sde=sde, shape=(4, 2))(lambda x, t: -x, observation=obs)


def _colour_prior(B):
    return analytic.Gaussian.diagonal(torch.zeros(3, 4, 4), 0.5 * torch.ones(3, 4, 4)), (B, 3, 4, 4)


def test_colorization_output_has_the_input_grey():
    sde = sde_lib.VPSDE(N=200)
    prior, shape = _colour_prior(16)
    gray = rand_x((16, 1, 4, 4), 3) * 0.5
    obs = guidance.Colorization(gray)
    x, _ = get_sampler("pc", sde=sde, shape=shape, dtype=F64, predictor="euler_maruyama", corrector="none")(
        prior.score_fn(sde), generator=gen(3), observation=obs)
    assert torch.allclose(x.mean(dim=1, keepdim=True), gray, atol=1e-12)
    assert x.std(dim=1).mean() > 0.1  # colour was drawn, not copied


def test_colorization_decoupling_is_the_pseudo_inverse_projection():
    gray = rand_x((2, 1, 3, 3))
    obs = guidance.Colorization(gray)
    M = obs.M
    assert torch.allclose(M.T @ M, torch.eye(3, dtype=F64), atol=1e-12)
    assert torch.allclose(M[:, 0], torch.full((3,), 3 ** -0.5, dtype=F64))
    x = rand_x((2, 3, 3, 3), 1)
    assert torch.allclose(obs.project(x), x + obs.pinv(gray - obs.forward(x)), atol=1e-12)
    assert torch.allclose(obs.couple(obs.decouple(x)), x, atol=1e-12)


def test_super_resolution_output_pools_to_the_low_resolution_image():
    sde = sde_lib.VPSDE()
    prior = analytic.Gaussian.diagonal(torch.zeros(1, 8, 8), 0.5 * torch.ones(1, 8, 8))
    y_low = rand_x((4, 1, 4, 4), 4)
    obs = guidance.SuperResolution(y_low, 2)
    x, _ = get_sampler("dpmpp_2m", sde=sde, shape=(4, 1, 8, 8), dtype=F64, nfe=10)(
        prior.score_fn(sde), generator=gen(0), observation=obs)
    assert torch.allclose(torch.nn.functional.avg_pool2d(x, 2), y_low, atol=1e-12)
    A = torch.nn.functional.avg_pool2d
    v = rand_x((4, 1, 8, 8), 5)
    assert torch.allclose(A(obs.pinv(y_low), 2), y_low, atol=1e-12)  # A A^+ = I
    assert torch.allclose((A(v, 2) * y_low).sum(), (v * obs.adjoint(y_low)).sum())  # <A v, y> = <v, A^T y>


@pytest.mark.parametrize("M", [3, 6])
def test_linear_observation_matrix_and_callables_agree(M):
    D, B = 6, 5
    A = torch.randn(M, D, generator=gen(M), dtype=F64)
    if M == 6:
        A[-1] = A[0] + A[1]        # rank deficient: A A^T singular
    y = rand_x((B, D), 7) @ A.T     # in the range of A
    by_matrix = guidance.LinearObservation(A, y, 0.1)
    by_callables = guidance.LinearObservation((lambda x: x.reshape(B, -1) @ A.T, lambda v: v @ A), y, 0.1)
    x = rand_x((B, D), 8)
    for obs in (by_matrix, by_callables):
        assert torch.allclose(obs.forward(obs.project(x)), y, atol=1e-7)
    assert torch.allclose(by_matrix.pinv(y), by_callables.pinv(y), atol=1e-6)
    a = torch.rand(B, dtype=F64)
    G = A @ A.T
    for obs in (by_matrix, by_callables):
        u = obs.gram_solve(y, a, 0.3)
        assert torch.allclose(torch.stack([(a[i] * G + 0.3 * torch.eye(M, dtype=F64)) @ u[i] for i in range(B)]), y,
                              atol=1e-7)


def test_log_likelihood_is_the_gaussian_density():
    A = torch.randn(3, 4, generator=gen(0), dtype=F64)
    y, x0 = rand_x((2, 3), 1), rand_x((2, 4), 2)
    obs = guidance.LinearObservation(A, y, 0.5)
    dist = torch.distributions.Normal(x0 @ A.T, 0.5)
    assert torch.allclose(obs.log_likelihood(x0), dist.log_prob(y).sum(1))
    inpaint = guidance.Inpainting(rand_x((2, 4), 3), torch.tensor([[1.0, 0, 1, 0]]), noise_std=0.5)
    direct = torch.distributions.Normal(x0[:, [0, 2]], 0.5).log_prob(inpaint.y[:, [0, 2]]).sum(1)
    assert torch.allclose(inpaint.log_likelihood(x0), direct)


def test_masks():
    half = guidance.half_mask((2, 3, 8, 8))
    assert half.shape == (2, 1, 8, 8) and half[:, :, :4].eq(1).all() and half[:, :, 4:].eq(0).all()
    box = guidance.box_mask((1, 1, 8, 8), 0.5)
    assert box.sum() == 64 - 16 and box[0, 0, 2:6, 2:6].eq(0).all()
    rnd = guidance.random_mask((4, 1, 32, 32), 0.25, generator=gen(0))
    assert abs(rnd.mean().item() - 0.25) < 0.03
    assert torch.equal(rnd, guidance.random_mask((4, 1, 32, 32), 0.25, generator=gen(0)))


# ---------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_a_clear_error():
    sde, mix = sde_lib.VPSDE(), two_d_mixture()
    score, clf = mix.score_fn(sde), mix.classifier_fn(sde)
    x, t = rand_x((4, 2)), torch.full((4,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match="labels must be in \\[0, 1\\]"):
        guidance.classifier_guidance(score, clf, torch.tensor([0, 1, 2, 0]))(x, t)
    with pytest.raises(ValueError, match="labels has 3 entries"):
        guidance.classifier_guidance(score, clf, torch.tensor([0, 1, 0]))(x, t)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        guidance.classifier_guidance(score, clf, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        guidance.classifier_guidance(score, clf, torch.tensor([-1, 0]))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
            guidance.classifier_free_guidance(score, score, bad)
    with pytest.raises(ValueError, match="scale must be"):
        guidance.classifier_guidance(score, clf, torch.zeros(4, dtype=torch.long), scale=-2)
    with pytest.raises(TypeError, match="classifier_fn must be callable"):
        guidance.classifier_guidance(score, None, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="classifier_fn must return logits"):
        guidance.classifier_guidance(score, lambda x, t: x[:, 0], torch.zeros(4, dtype=torch.long))(x, t)
    with pytest.raises(ValueError, match="null label"):
        guidance.classifier_free_guidance_from_model(score, torch.tensor([0, 3]), 2.0, null_label=3)
    obs = guidance.Inpainting(torch.zeros(4, 2), torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="needs std > 0"):
        guidance.posterior_guidance(score, sde, obs, "dps")
    with pytest.raises(ValueError, match="method must be one of"):
        guidance.posterior_guidance(score, sde, obs, "replace")
    with pytest.raises(ValueError, match="Inpainting: y of shape \\(4, 2\\) needs samples of shape \\(4, 2\\).*\\(5, 2\\)"):
        get_sampler("pc", sde=sde, shape=(5, 2))(score, observation=obs)
    with pytest.raises(TypeError, match="observation must be a scoresde.guidance.Observation"):
        get_sampler("pc", sde=sde, shape=(4, 2))(score, observation=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="mask must hold only 0"):
        guidance.Inpainting(torch.zeros(4, 2), torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="does not broadcast"):
        guidance.Inpainting(torch.zeros(4, 2), torch.ones(4, 3))
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        guidance.Inpainting(torch.zeros(4, 2), torch.ones(1, 2), noise_std=-0.1)
    with pytest.raises(ValueError, match="y has non-finite values"):
        guidance.Inpainting(torch.full((4, 2), float("nan")), torch.ones(1, 2))
    with pytest.raises(ValueError, match="gray must have shape \\[B, 1, H, W\\]"):
        guidance.Colorization(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="Colorization: gray .* needs samples of shape \\(2, 3, 4, 4\\)"):
        get_sampler("pc", sde=sde, shape=(2, 1, 4, 4))(lambda x, t: -x, observation=guidance.Colorization(torch.zeros(2, 1, 4, 4)))
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        guidance.SuperResolution(torch.zeros(2, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="A must be a floating-point \\[M, D\\] matrix with M = 2"):
        guidance.LinearObservation(torch.zeros(3, 4), torch.zeros(5, 2), 0.1)
    with pytest.raises(ValueError, match="A is \\(2, 4\\), so samples must have 4 values"):
        get_sampler("pc", sde=sde, shape=(5, 3))(score, observation=guidance.LinearObservation(torch.zeros(2, 4), torch.zeros(5, 2), 0.1))
    with pytest.raises(ValueError, match="noise_std=0 has no likelihood density"):
        obs.log_likelihood(torch.zeros(4, 2))
