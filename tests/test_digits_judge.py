"""The digits judge (``scoresde.metrics.digits``): deterministic training, real test digits above stated
thresholds, uniform noise low, the pooling of 16x16 digits, pairwise coupling, the cache, and ``--mode eval``."""
import json
import os

import numpy as np
import pytest
import torch

from scoresde.datasets import pad_to_size, read_digits
from scoresde.metrics import digits as judge_lib
from scoresde.metrics.digits import (DigitsJudge, couple, evaluate_digits, load_digits_judge, to_digits_8x8,
                                     train_digits_judge)

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def judge():
    return train_digits_judge()


def test_two_fresh_trainings_give_the_same_judge_and_scores(judge):
    again = train_digits_judge()
    assert again.checksum() == judge.checksum()
    for name, array in judge.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], array, err_msg=name)
    noise = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert again.score(noise) == judge.score(noise)


def test_real_test_digits_score_above_the_thresholds(judge):
    images, labels = read_digits("test")
    scores = judge.score(images)
    # thresholds: digit Inception score > 7 (of at most 10), confident (p > 0.9) on > 80%, accuracy > 98%
    assert scores["num_samples"] == 297 and scores["inception_score"] > 7.0 and scores["confident"] > 0.8
    assert (judge.predict(images) == labels.numpy()).all()  # the SVC's own labels: every test digit
    assert (judge.probabilities(images).argmax(1) == labels.numpy()).mean() > 0.99
    assert scores["class_histogram"] == np.bincount(judge.predict(images), minlength=10).tolist()
    assert sum(scores["class_histogram"]) == 297 and min(scores["class_histogram"]) >= 20  # every class present


def test_uniform_noise_and_blank_images_score_low(judge):
    noise = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    scores = judge.score(noise)
    assert scores["inception_score"] < 1.5 and scores["confident"] < 0.05
    blank = judge.score(torch.zeros(20, 1, 8, 8))
    assert blank["confident"] == 0.0 and blank["inception_score"] == pytest.approx(1.0)


def test_one_digit_repeated_has_inception_score_one(judge):
    images, _ = read_digits("test")
    scores = judge.score(images[:1].repeat(30, 1, 1, 1))
    assert scores["inception_score"] == pytest.approx(1.0, abs=1e-12)
    assert max(scores["class_histogram"]) == 30


def test_16x16_digits_pool_back_to_their_8x8_originals_exactly():
    images, _ = read_digits("test")
    eight = to_digits_8x8(images)
    for size in (16, 32, 20):  # 20: 2x2 blocks and 2 pixels of padding on each side
        big = pad_to_size(images, size)
        np.testing.assert_array_equal(to_digits_8x8(big), eight)                         # uint8 [N, 1, H, W]
        np.testing.assert_allclose(to_digits_8x8(big.double() / 255), eight, rtol=0, atol=1e-15)  # data range
        np.testing.assert_array_equal(to_digits_8x8(big.permute(0, 2, 3, 1).numpy()), eight)  # [N, H, W, 1]
    # a 2x2 block is averaged; data-range values are clipped to [0, 1] first
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, :2, :2] = torch.tensor([[0.2, 0.4], [1.5, -1.0]])
    assert to_digits_8x8(x)[0, 0] == pytest.approx((0.2 + 0.4 + 1.0 + 0.0) / 4)


def test_bad_shapes_are_refused_naming_the_expected_shape():
    with pytest.raises(ValueError, match=r"grey squares \[N, 1, H, W\].*H = W >= 8, got shape \(2, 3, 16, 16\)"):
        to_digits_8x8(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 4, 4\)"):
        to_digits_8x8(torch.zeros(2, 1, 4, 4))


def test_pairwise_coupling_recovers_consistent_pairwise_probabilities():
    """If ``r_ij = p_i / (p_i + p_j)`` for some ``p``, coupling returns that ``p`` exactly."""
    p = np.random.default_rng(0).dirichlet(np.ones(10), size=5)
    i, j = np.array(judge_lib.PAIRS).T
    r = p[:, i] / (p[:, i] + p[:, j])
    np.testing.assert_allclose(couple(r), p, rtol=1e-9, atol=1e-12)


def test_the_decision_values_are_scikit_learns(judge):
    from sklearn.svm import SVC
    x, y = judge_lib._split("train")
    svc = SVC(C=10.0, gamma="scale", decision_function_shape="ovo").fit(x, y)
    test = to_digits_8x8(read_digits("test")[0])
    np.testing.assert_allclose(judge.decision_function(test), svc.decision_function(test), rtol=1e-9, atol=1e-9)
    noise = np.random.default_rng(2).random((300, 64))
    both = np.concatenate([test, noise])
    np.testing.assert_array_equal(judge.predict(both.reshape(-1, 8, 8)), svc.predict(both))


def test_the_cache_is_written_once_reused_and_a_damaged_one_replaced(judge, tmp_path, monkeypatch, caplog):
    trainings = []
    monkeypatch.setattr(judge_lib, "train_digits_judge", lambda: trainings.append(1) or judge)
    first = load_digits_judge(str(tmp_path))
    path = tmp_path / "digits_svc_v1.npz"
    assert len(trainings) == 1 and path.is_file() and first.checksum() == judge.checksum()
    assert [p.name for p in tmp_path.iterdir()] == ["digits_svc_v1.npz"]  # no temporary file left
    second = load_digits_judge(str(tmp_path))
    assert len(trainings) == 1 and second.checksum() == judge.checksum()  # read from the cache
    for name in judge.arrays:
        np.testing.assert_array_equal(second.arrays[name], judge.arrays[name])
    with np.load(path) as data:  # damage one number of the cached arrays
        arrays = {name: data[name] for name in data.files}
    arrays["intercept"] = arrays["intercept"] + 1e-6
    np.savez(path, **arrays)
    third = load_digits_judge(str(tmp_path))
    assert len(trainings) == 2 and third.checksum() == judge.checksum()
    assert "checksum does not match (damaged)" in caplog.text
    path.write_bytes(b"not a zip file")
    load_digits_judge(str(tmp_path))
    assert len(trainings) == 3
    assert load_digits_judge(str(tmp_path)).checksum() == judge.checksum() and len(trainings) == 3


def test_a_judge_without_its_arrays_is_refused():
    with pytest.raises(ValueError, match=r"missing \['platt_a', 'platt_b'\]"):
        DigitsJudge({k: np.zeros(1) for k in ("support_vectors", "dual_coef", "intercept", "n_support", "gamma")})


def test_evaluate_digits_reports_the_samples_beside_the_real_test_digits(judge):
    images, _ = read_digits("test")
    out = evaluate_digits(pad_to_size(images[:40], 16).double() / 255, judge=judge)
    assert out["real_test"] == judge.score(images)
    assert out["samples"]["class_histogram"] == judge.score(images[:40])["class_histogram"]
    assert out["samples"]["inception_score"] == pytest.approx(judge.score(images[:40])["inception_score"], rel=1e-12)


@pytest.mark.slow
def test_eval_mode_reports_the_judge_for_digits(tmp_path):
    import run_lib
    from tests.test_run_lib import tiny_config
    config = tiny_config(**{"training.n_iters": 3, "training.snapshot_sampling": False, "eval.begin_ckpt": 1,
                            "eval.end_ckpt": 1, "eval.enable_bpd": False, "eval.enable_loss": False,
                            "eval.metrics": ()})
    run_lib.train(config, str(tmp_path))
    results = run_lib.evaluate(config, str(tmp_path))[1]
    with open(tmp_path / "eval" / "ckpt_1.json") as f:
        saved = json.load(f)
    assert saved["digits_judge"] == results["digits_judge"]
    assert saved["digits_judge"]["samples"]["num_samples"] == 4
    assert saved["digits_judge"]["real_test"]["inception_score"] > 7.0
    assert os.path.isfile(tmp_path / "digits_judge" / "digits_svc_v1.npz")
