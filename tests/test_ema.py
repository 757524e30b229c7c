"""ExponentialMovingAverage against a hand computation, and its state_dict format."""
import pytest
import torch

from scoresde.models import ExponentialMovingAverage


def make_params():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    frozen = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)
    b = torch.nn.Parameter(torch.tensor([[0.0], [4.0]]))
    return [a, frozen, b]


def test_warm_up_decay_against_hand_computation():
    params = make_params()
    ema = ExponentialMovingAverage(params, decay=0.9)
    a0, b0 = params[0].detach().clone(), params[2].detach().clone()
    assert len(ema.shadow_params) == 2  # the frozen parameter is left out

    with torch.no_grad():
        params[0].add_(1.0)
        params[2].mul_(3.0)
    ema.update(params)  # n = 1: decay = min(0.9, 2/11)
    d1 = 2 / 11
    s_a = d1 * a0 + (1 - d1) * params[0].detach()
    s_b = d1 * b0 + (1 - d1) * params[2].detach()
    torch.testing.assert_close(ema.shadow_params[0], s_a)
    torch.testing.assert_close(ema.shadow_params[1], s_b)

    with torch.no_grad():
        params[0].sub_(4.0)
    ema.update(params)  # n = 2: decay = min(0.9, 3/12)
    d2 = 3 / 12
    s_a = d2 * s_a + (1 - d2) * params[0].detach()
    torch.testing.assert_close(ema.shadow_params[0], s_a)
    assert ema.num_updates == 2

    for _ in range(100):  # the warm-up ends at the nominal decay
        ema.update(params)
    assert ema.current_decay() == 0.9


def test_without_num_updates_uses_the_nominal_decay():
    params = make_params()
    ema = ExponentialMovingAverage(params, decay=0.99, use_num_updates=False)
    with torch.no_grad():
        params[0].fill_(11.0)
    ema.update(params)
    torch.testing.assert_close(ema.shadow_params[0], 0.99 * torch.tensor([1.0, 2.0]) + 0.01 * 11.0)
    assert ema.state_dict()["num_updates"] is None


def test_copy_to_store_restore():
    params = make_params()
    ema = ExponentialMovingAverage(params, decay=0.5, use_num_updates=False)
    with torch.no_grad():
        params[0].fill_(3.0)
    ema.update(params)
    current = [p.detach().clone() for p in params]
    ema.store(params)
    ema.copy_to(params)
    torch.testing.assert_close(params[0].detach(), torch.tensor([2.0, 2.5]))
    torch.testing.assert_close(params[1].detach(), torch.tensor([5.0]))  # frozen: untouched
    ema.restore(params)
    for p, c in zip(params, current):
        torch.testing.assert_close(p.detach(), c)


def test_state_dict_round_trip_in_the_paper_format():
    params = make_params()
    ema = ExponentialMovingAverage(params, decay=0.999)
    ema.update(params)
    state = ema.state_dict()
    assert set(state) == {"decay", "num_updates", "shadow_params"}
    assert isinstance(state["shadow_params"], list) and len(state["shadow_params"]) == 2

    other = ExponentialMovingAverage(make_params(), decay=0.5)
    other.load_state_dict({"decay": 0.999, "num_updates": 7,
                           "shadow_params": [torch.tensor([9.0, 9.0]), torch.tensor([[1.0], [1.0]])]})
    assert other.decay == 0.999 and other.num_updates == 7
    torch.testing.assert_close(other.shadow_params[0], torch.tensor([9.0, 9.0]))
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict({"decay": 0.9, "num_updates": 0,
                               "shadow_params": [torch.zeros(3), torch.zeros(2, 1)]})
    with pytest.raises(ValueError, match="shadow params"):
        other.load_state_dict({"decay": 0.9, "num_updates": 0, "shadow_params": [torch.zeros(2)]})


def test_update_checks_the_parameter_list():
    params = make_params()
    ema = ExponentialMovingAverage(params, decay=0.9)
    with pytest.raises(ValueError):
        ema.update(params[:1])
    with pytest.raises(ValueError):
        ExponentialMovingAverage(params, decay=1.5)


def test_update_uses_foreach_ops(monkeypatch):
    params = make_params()
    ema = ExponentialMovingAverage(params, decay=0.9)
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: calls.append(1) or real(*a))
    ema.update(params)
    assert calls == [1]
