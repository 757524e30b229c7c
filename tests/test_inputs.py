"""Bad inputs to the library's entry points (samplers, the likelihood) are refused before any work with a
one-line error that names the argument, never a traceback from deep inside torch or scipy."""
import pytest
import torch

from scoresde import analytic, sde_lib, sampling
from scoresde.likelihood import get_likelihood_fn
from scoresde.utils import check_shape

pytestmark = pytest.mark.usefixtures("one_thread")

SDE = sde_lib.VPSDE()
DATA = analytic.Gaussian.diagonal(torch.zeros(2), torch.ones(2))
SCORE = DATA.score_fn(SDE)


class Calls:
    """A score function counting its calls; from call ``bad_from`` on it returns a wrongly shaped tensor."""

    def __init__(self, bad_from=None):
        self.calls, self.bad_from = 0, bad_from

    def __call__(self, x, t):
        self.calls += 1
        out = SCORE(x, t)
        return out[:, :1] if self.bad_from is not None and self.calls >= self.bad_from else out


@pytest.mark.parametrize("shape, kind, message", [
    ("64", TypeError, "shape must be a tuple of ints [B, ...] such as (64, 3, 32, 32), got '64'"),
    ("64,2", TypeError, "shape must be a tuple of ints [B, ...] such as (64, 3, 32, 32), got '64,2'"),
    (None, TypeError, "shape must be a tuple of ints [B, ...] such as (64, 3, 32, 32), got None"),
    (8, TypeError, "shape must be a tuple of ints [B, ...] such as (64, 3, 32, 32), got 8"),
    ((2.5, 2), TypeError, "shape must be a tuple of ints [B, ...] such as (64, 3, 32, 32), got (2.5, 2) "
                          "(entry 2.5 is not an int)"),
    ((0, 2), ValueError, "shape = (0, 2) asks for an empty batch: the batch size shape[0] must be >= 1"),
    ((4,), ValueError, "shape must be a tuple of ints [B, ...] such as (64, 3, 32, 32) with at least one "
                       "dimension after the batch, got (4,)"),
    ((4, 0), ValueError, "shape must be [B, ...] with positive sizes, got (4, 0)"),
])
@pytest.mark.parametrize("name", ["ddim", "pc", "ode"])
def test_bad_shape_is_refused_naming_it(name, shape, kind, message):
    with pytest.raises(kind) as err:
        sampling.get_sampler(name, sde=SDE, shape=shape)
    assert str(err.value) == message


def test_shape_accepts_sequences_of_ints():
    assert check_shape(torch.Size([3, 2])) == (3, 2)
    assert check_shape([3, torch.tensor(2)]) == (3, 2)


@pytest.mark.parametrize("options, kind, message", [
    ({"dtype": torch.int64}, TypeError, "dtype must be a floating-point torch.dtype such as torch.float32, "
                                        "got torch.int64"),
    ({"dtype": "float32"}, TypeError, "dtype must be a floating-point torch.dtype such as torch.float32, "
                                      "got 'float32'"),
    ({"device": "meta"}, ValueError, "device='meta' holds no data, so nothing can be sampled on it; "
                                     "use 'cpu' or 'cuda'"),
    ({"device": "gpu0"}, ValueError, "device must be a torch.device or a name such as 'cpu' or 'cuda:0', "
                                     "got 'gpu0'"),
])
@pytest.mark.parametrize("name", ["ancestral", "dpmpp_2m", "sde", "smc"])
def test_bad_dtype_or_device_is_refused_when_built(name, options, kind, message):
    with pytest.raises(kind) as err:
        sampling.get_sampler(name, sde=SDE, shape=(4, 2), **options)
    assert str(err.value) == message


@pytest.mark.parametrize("generator", [0, "seed", torch.tensor(1)])
def test_a_generator_that_is_not_one_is_refused(generator):
    calls = Calls()
    with pytest.raises(TypeError, match=r"^generator must be a torch.Generator \(e.g. "
                                        r"torch.Generator\(\).manual_seed\(0\)\), a scoresde.noise.RowNoise "
                                        r"or None, got "):
        sampling.get_sampler("ddim", sde=SDE, shape=(4, 2), nfe=5)(calls, generator=generator)
    with pytest.raises(TypeError, match="^generator must be a torch.Generator .*, a scoresde.noise.RowNoise or None"):
        get_likelihood_fn(SDE)(calls, torch.zeros(4, 2), generator=generator)
    assert calls.calls == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ["ddim", "pc", "ode"])
def test_non_finite_x_init_is_blamed_on_x_init(name, bad):
    x_init = torch.zeros(4, 2)
    x_init[2, 1] = bad
    calls = Calls()
    with pytest.raises(ValueError) as err:
        sampling.get_sampler(name, sde=SDE, shape=(4, 2))(calls, x_init=x_init)
    assert str(err.value) == "x_init holds NaN or inf in 1 of its 4 samples (first: index 2); give finite values"
    assert calls.calls == 0


def test_integer_x_init_is_refused():
    with pytest.raises(ValueError, match=r"^x_init must be a floating-point tensor of shape \[B, \.\.\.\], "
                                         r"got a torch.int64 tensor of shape \(4, 2\)$"):
        sampling.get_sampler("ddim", sde=SDE, shape=(4, 2), nfe=5)(SCORE, x_init=torch.zeros(4, 2, dtype=torch.long))


@pytest.mark.parametrize("name, options", [("ddim", {"nfe": 6}), ("pc", {"predictor": "euler_maruyama", "N": 10}), ("ode", {}),
                                           ("sde", {"dt": 0.1})])
def test_score_fn_of_the_wrong_shape_later_is_caught_at_that_call(name, options):
    calls = Calls(bad_from=3)
    with pytest.raises(ValueError, match=r"^score_fn must return a tensor shaped like x \(4, 2\), got \(4, 1\) "
                                         r"at call 3 \(t = "):
        sampling.get_sampler(name, sde=SDE, shape=(4, 2), **options)(calls, generator=torch.Generator().manual_seed(0))
    assert calls.calls == 3


def test_score_fn_of_the_wrong_shape_later_is_caught_by_the_likelihood():
    calls = Calls(bad_from=4)
    with pytest.raises(ValueError, match=r"^score_fn must return a tensor shaped like x \(3, 2\), got \(3, 1\) "
                                         r"at call 4"):
        get_likelihood_fn(SDE)(calls, torch.zeros(3, 2), generator=torch.Generator().manual_seed(0))
    assert calls.calls == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_data_to_the_likelihood_is_blamed_on_the_data(bad):
    x = torch.zeros(5, 2)
    x[3, 0] = bad
    calls = Calls()
    with pytest.raises(ValueError) as err:
        get_likelihood_fn(SDE)(calls, x)
    assert str(err.value) == "x holds NaN or inf in 1 of its 5 samples (first: index 3); give finite values"
    assert calls.calls == 0


def test_empty_batch_to_the_likelihood_is_refused():
    with pytest.raises(ValueError) as err:
        get_likelihood_fn(SDE)(SCORE, torch.zeros(0, 2))
    assert str(err.value) == "x is an empty batch (shape (0, 2)): give at least one sample"


def test_integer_data_to_the_likelihood_points_to_dequantisation():
    with pytest.raises(ValueError) as err:
        get_likelihood_fn(SDE)(SCORE, torch.zeros(3, 2, dtype=torch.uint8))
    assert str(err.value) == ("x must be a floating-point tensor of shape [B, ...], got a torch.uint8 tensor of "
                              "shape (3, 2); for 8-bit data use scoresde.likelihood.uniform_dequantize first")


def test_valid_inputs_still_sample_and_score():
    x, nfe = sampling.get_sampler("ddim", sde=SDE, shape=(4, 2), nfe=5, dtype=torch.float64, device="cpu")(
        SCORE, generator=torch.Generator().manual_seed(0), x_init=torch.zeros(4, 2, dtype=torch.float64))
    assert x.dtype == torch.float64 and x.shape == (4, 2) and nfe == 5
    bpd, _, nfe = get_likelihood_fn(SDE)(SCORE, torch.zeros(3, 2), generator=torch.Generator().manual_seed(0))
    assert bpd.shape == (3,) and torch.isfinite(bpd).all() and nfe > 0


def test_data_on_the_meta_device_is_refused():
    with pytest.raises(ValueError) as err:
        get_likelihood_fn(SDE)(SCORE, torch.zeros(3, 2, device="meta"))
    assert str(err.value) == "x is on device 'meta', which holds no data; give it on 'cpu' or 'cuda'"
    with pytest.raises(ValueError, match="^x_init is on device 'meta'"):
        sampling.get_sampler("ddim", sde=SDE, shape=(3, 2), nfe=5)(SCORE, x_init=torch.zeros(3, 2, device="meta"))
