"""The divergence guard's rule: which states are saved, when training stops."""
import math

import pytest

from scoresde.divergence import DivergenceGuard


def _feed(guard, losses, norms=None):
    verdicts = []
    for i, loss in enumerate(losses):
        norm = None if norms is None else norms[i]
        verdict = guard.check(loss, norm)
        guard.record(verdict, loss, norm)
        verdicts.append(verdict)
    return verdicts


def test_a_loss_far_above_its_running_median_is_suspect_and_a_streak_stops():
    guard = DivergenceGuard(factor=10.0, window=5, patience=3)
    verdicts = _feed(guard, [1.0, 1.2, 0.8, 1.1, 50.0, 1.0, 40.0, 60.0, 80.0])
    assert [v.suspect for v in verdicts] == [False] * 4 + [True, False, True, True, True]
    assert [v.stop for v in verdicts] == [False] * 8 + [True]  # a lone spike does not stop the run
    assert verdicts[-1].reason == ("the training loss 80 is 80 times its running median 1 "
                                   "(3 suspect steps in a row)")
    # suspect values stay out of the median: it is still that of the good states
    assert list(guard.values["loss"]) == [1.0, 1.2, 0.8, 1.1, 1.0]


def test_an_exploding_gradient_norm_is_suspect_even_with_a_normal_loss():
    guard = DivergenceGuard(factor=10.0, window=10, patience=2)
    verdicts = _feed(guard, [1.0] * 5, [2.0, 2.0, 2.0, 300.0, 500.0])
    assert [v.stop for v in verdicts] == [False, False, False, False, True]
    assert verdicts[-1].reason.startswith("the training gradient norm 500 is 250 times its running median 2")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_or_gradient_stops_at_once(bad):
    assert DivergenceGuard().check(bad, 1.0).stop
    verdict = DivergenceGuard().check(1.0, bad)
    assert verdict.stop and verdict.reason == f"the training gradient norm is {bad}"


def test_factor_zero_keeps_only_the_non_finite_stop():
    guard = DivergenceGuard(factor=0.0, patience=1)
    assert not any(v.suspect for v in _feed(guard, [1.0, 1e30, 1e31]))
    assert guard.check(math.nan).stop


def test_the_history_round_trips_so_a_resumed_run_judges_alike():
    a = DivergenceGuard(factor=10.0, window=4, patience=2)
    _feed(a, [1.0, 2.0, 3.0, 40.0], [1.0, 1.0, 1.0, 1.0])
    b = DivergenceGuard(factor=10.0, window=4, patience=2)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() == {"streak": 1, "loss": [1.0, 2.0, 3.0],
                                                "gradient norm": [1.0, 1.0, 1.0]}
    assert a.check(25.0) == b.check(25.0) and b.check(25.0).stop
