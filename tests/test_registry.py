import pytest
import torch

from scoresde.registry import Registry
from scoresde.utils import batch_broadcast, check_time, flat_sum


def test_register_get_list():
    reg = Registry("widget")

    @reg.register("b")
    class B:
        pass

    @reg.register()
    def a():
        pass

    assert reg.get("b") is B and reg.get("a") is a
    assert reg.list() == ["a", "b"] and "a" in reg


def test_unknown_and_duplicate_names_are_errors_that_list_names():
    reg = Registry("widget")
    reg.register("x")(object)
    with pytest.raises(ValueError, match=r"unknown widget 'y'; available: x"):
        reg.get("y")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(int)
    with pytest.raises(TypeError, match="string"):
        reg.get(3)


@pytest.mark.parametrize("shape", [(4, 2), (4, 3, 8, 8), (4, 1, 2, 3, 5)])
def test_batch_broadcast_any_rank(shape):
    x = torch.randn(shape, dtype=torch.float64)
    v = torch.arange(4, dtype=torch.float32)
    out = batch_broadcast(v, x) * x
    assert out.dtype == torch.float64
    for i in range(4):
        torch.testing.assert_close(out[i], i * x[i])
    torch.testing.assert_close(flat_sum(x), x.reshape(4, -1).sum(1))


def test_check_time():
    x = torch.zeros(3, 2)
    check_time(torch.zeros(3), x)
    with pytest.raises(ValueError, match=r"shape \[B\] = \[3\]"):
        check_time(torch.zeros(3, 1), x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_time(0.5, x)
