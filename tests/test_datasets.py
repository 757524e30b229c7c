"""Data sets: readers on files the tests write themselves, seeded toys, downloads, loaders."""
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import tarfile

import ml_collections
import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import datasets
from scoresde.datasets import images as image_readers


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Records of checked image folders go to the test's own cache, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_config(**data):
    fields = dict(dataset="DIGITS", root="", image_size=32, num_channels=1, centered=True,
                  random_flip=False, uniform_dequantization=False, num_workers=0, download=False)
    fields.update(data)
    return ml_collections.ConfigDict({"data": fields, "training": {"batch_size": 8},
                                      "eval": {"batch_size": 8}, "seed": 7})


# ----------------------------------------------------------------------------- CIFAR-10

def _cifar_batch(n, rng):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


@pytest.fixture
def cifar(tmp_path):
    """A CIFAR-10 archive in the official layout: 5 train batches of 3 images, a test batch of 4."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _cifar_batch(3, rng) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(4, rng)
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(folder, arcname="cifar-10-batches-py")
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    return dict(archive=str(archive), folder=str(folder), train=train, train_labels=train_labels,
                test=batches["test_batch"][0], test_labels=batches["test_batch"][1],
                md5=hashlib.md5(archive.read_bytes()).hexdigest())


@pytest.mark.parametrize("where", ["archive", "root_with_archive", "folder", "root_with_folder"])
def test_cifar10_reads_pixels_labels_and_chw_layout(cifar, where):
    source = {"archive": cifar["archive"], "root_with_archive": os.path.dirname(cifar["archive"]),
              "folder": cifar["folder"], "root_with_folder": os.path.dirname(cifar["folder"])}[where]
    if where == "root_with_folder":
        os.remove(cifar["archive"])
    for split, data, labels in [("train", cifar["train"], cifar["train_labels"]),
                                ("test", cifar["test"], cifar["test_labels"])]:
        ds = datasets.get_dataset(make_config(dataset="CIFAR10", root=source, num_channels=3,
                                              archive_md5=cifar["md5"]), split=split)
        assert len(ds) == len(data)
        x, y = ds[1]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        # row layout: 1024 red, 1024 green, 1024 blue, each row-major
        c, h, w = 2, 5, 17
        assert x[c, h, w] * 255 == pytest.approx(float(data[1, c * 1024 + h * 32 + w]), abs=1e-4)
        assert torch.equal(ds.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
        assert y == labels[1] and ds.labels.tolist() == labels


def test_cifar10_reads_numpy1_pickles(tmp_path):
    """The official batches name ``numpy.core.multiarray`` (NumPy 1); NumPy 2 calls it ``numpy._core``."""
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(blob)
    images, labels = datasets.read_cifar10(str(folder), "test")
    assert torch.equal(images, torch.from_numpy(data.reshape(2, 3, 32, 32))) and labels.tolist() == [3, 4]


def test_cifar10_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        datasets.read_cifar10(str(folder), "test")


def test_cifar10_missing_says_where_and_how(tmp_path):
    config = make_config(dataset="CIFAR10", root=str(tmp_path / "nothing"), num_channels=3)
    with pytest.raises(FileNotFoundError) as info:
        datasets.get_dataset(config)
    message = str(info.value)
    for part in [str(tmp_path / "nothing"), "cifar-10-python.tar.gz", "data.download=True",
                 datasets.CIFAR10_URL]:
        assert part in message


def test_cifar10_download_on_request(cifar, tmp_path, monkeypatch):
    """data.download=True calls download_cifar10(root); here it is pointed at a file:// archive."""
    real = datasets.download_cifar10
    monkeypatch.setattr(datasets, "download_cifar10",
                        lambda root, md5: real(root, url="file://" + cifar["archive"], md5=md5))
    root = tmp_path / "fresh"
    ds = datasets.get_dataset(make_config(dataset="CIFAR10", root=str(root), num_channels=3,
                                          download=True, archive_md5=cifar["md5"]), split="test")
    assert torch.equal(ds.images, torch.from_numpy(cifar["test"].reshape(-1, 3, 32, 32)))
    # the archive, its verified md5 (so it is not hashed again) and the extracted folder
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz",
                                        "cifar-10-python.tar.gz.md5"]


def test_cifar10_present_archive_md5_is_checked_once_and_cached(cifar, monkeypatch):
    calls = []
    real = datasets.download.file_digest
    monkeypatch.setattr(datasets.download, "file_digest", lambda *a: calls.append(a) or real(*a))
    config = make_config(dataset="CIFAR10", root=cifar["archive"], num_channels=3, archive_md5=cifar["md5"])
    for _ in range(3):
        assert len(datasets.get_dataset(config, split="test")) == 4
    assert calls == [(cifar["archive"], "md5")]  # hashed once; the result is cached next to the archive
    with open(cifar["archive"] + ".md5") as f:
        assert json.load(f)["md5"] == cifar["md5"]
    # the official md5 is the default: this test archive is not the official one
    with pytest.raises(ValueError, match=f"corrupt archive {re.escape(cifar['archive'])}: its md5 is "
                                         f"{cifar['md5']}, expected {datasets.CIFAR10_MD5}"):
        datasets.get_dataset(make_config(dataset="CIFAR10", root=cifar["archive"], num_channels=3))


def _damage(path, how):
    blob = bytearray(open(path, "rb").read())
    if how == "flipped byte":
        blob[len(blob) // 2] ^= 0x01
    elif how == "truncated":
        blob = blob[: len(blob) // 2]
    elif how == "empty":
        blob = b""
    else:  # garbage of the same size
        blob = np.random.default_rng(0).integers(0, 256, len(blob), dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(blob))


@pytest.mark.parametrize("how", ["flipped byte", "truncated", "empty", "garbage"])
def test_damaged_cifar10_archive_is_a_corrupt_archive_named_with_advice(cifar, how):
    config = make_config(dataset="CIFAR10", root=cifar["archive"], num_channels=3, archive_md5=cifar["md5"])
    datasets.get_dataset(config, split="test")  # verified and cached while intact ...
    _damage(cifar["archive"], how)               # ... then damaged: the cache no longer matches
    os.utime(cifar["archive"], ns=(1, 1))       # (even where the clock is too coarse to change mtime)
    with pytest.raises(ValueError) as info:
        datasets.get_dataset(config, split="train")
    message = str(info.value)
    assert message.startswith(f"corrupt archive {cifar['archive']}: its md5 is ")
    assert "delete it and download it again" in message and "lacks" not in message


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_cifar10_batch_file_names_the_folder(cifar, how):
    _damage(os.path.join(cifar["folder"], "test_batch"), how)
    with pytest.raises(ValueError) as info:
        datasets.read_cifar10(cifar["folder"], "test")
    message = str(info.value)
    assert message.startswith(f"corrupt CIFAR-10 batch folder {cifar['folder']}: CIFAR batch 'test_batch'")
    assert f"delete the folder {cifar['folder']}" in message
    os.remove(os.path.join(cifar["folder"], "data_batch_4"))
    with pytest.raises(FileNotFoundError, match=f"CIFAR-10 folder {re.escape(cifar['folder'])} lacks data_batch_4"):
        datasets.read_cifar10(cifar["folder"], "train")


def test_offline_download_says_where_to_put_the_file(tmp_path):
    target = tmp_path / "data" / "cifar-10-python.tar.gz"
    with pytest.raises(FileNotFoundError) as info:
        datasets.download_url("file://" + str(tmp_path / "unreachable"), str(target), md5="0" * 32)
    assert (f"could not download file://{tmp_path / 'unreachable'}" in str(info.value)
            and f"put it by hand at {target} (md5 {'0' * 32})" in str(info.value))
    assert os.listdir(tmp_path / "data") == []  # no partial file


# ----------------------------------------------------------------------------- downloads

def test_download_url_verifies_checksum_and_leaves_nothing_on_mismatch(tmp_path):
    source = tmp_path / "payload.tar.gz"
    with tarfile.open(source, "w:gz") as t:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        t.addfile(info, io.BytesIO(b"hello"))
    blob = source.read_bytes()
    url = "file://" + str(source)
    out = tmp_path / "downloads"
    path = datasets.download_url(url, str(out / "a.tar.gz"), md5=hashlib.md5(blob).hexdigest())
    assert open(path, "rb").read() == blob
    datasets.download_url(url, str(out / "b.tar.gz"), sha256=hashlib.sha256(blob).hexdigest())
    with pytest.raises(ValueError, match="checksum mismatch"):
        datasets.download_url(url, str(out / "c.tar.gz"), md5="0" * 32)
    # no c, no temporary file; a.tar.gz.md5 records that a.tar.gz was verified
    assert sorted(os.listdir(out)) == ["a.tar.gz", "a.tar.gz.md5", "b.tar.gz"]
    datasets.extract_archive(path, str(tmp_path / "x"))
    assert (tmp_path / "x" / "hello.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("stdlib_filter", [True, False])
def test_extract_archive_refuses_paths_outside(tmp_path, monkeypatch, stdlib_filter):
    if not stdlib_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises((ValueError, tarfile.TarError)):
        datasets.extract_archive(str(archive), str(tmp_path / "out"))
    assert not (tmp_path / "evil.txt").exists() and os.listdir(tmp_path / "out") == []


# ----------------------------------------------------------------------------- MNIST

def _write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_idx_files_read_back_and_are_padded(tmp_path, suffix):
    rng = np.random.default_rng(1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    _write_idx(str(raw / ("t10k-images-idx3-ubyte" + suffix)), images, 0x08)
    _write_idx(str(raw / ("t10k-labels-idx1-ubyte" + suffix)), labels, 0x08)
    ds = datasets.get_dataset(make_config(dataset="MNIST", root=str(tmp_path), image_size=32), split="test")
    assert ds.images.shape == (5, 1, 32, 32)
    assert torch.equal(ds.images[:, 0, 2:30, 2:30], torch.from_numpy(images))   # 2 pixels of zeros each side
    assert ds.images[:, :, :2].sum() == 0 and ds.images[:, :, :, 30:].sum() == 0
    assert ds.labels.tolist() == labels.tolist()
    rgb = datasets.get_dataset(make_config(dataset="MNIST", root=str(tmp_path), image_size=28,
                                           num_channels=3), split="test")
    assert rgb.images.shape == (5, 3, 28, 28) and torch.equal(rgb.images[:, 2], rgb.images[:, 0])
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        datasets.get_dataset(make_config(dataset="MNIST", root=str(tmp_path)), split="train")


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="idx"):
        datasets.read_idx(str(path))


@pytest.mark.parametrize("how", ["flipped byte", "truncated", "empty", "garbage"])
def test_damaged_mnist_file_is_named_with_advice(tmp_path, how):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    values = np.random.default_rng(3).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + np.array([20, 28, 28], ">u4").tobytes() + values.tobytes())
    _damage(path, how)
    with pytest.raises(ValueError) as info:
        datasets.read_idx(str(path))
    assert str(path) in str(info.value) and "delete it and download it again" in str(info.value)


# ----------------------------------------------------------------------------- folders of images

def _three_band_image(width, height):
    """Left third red, middle third green, right third blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 3, 0] = 255
    a[:, width // 3: 2 * width // 3, 1] = 255
    a[:, 2 * width // 3:, 2] = 255
    return a


def test_image_folder_centre_crop_resize_sorting_and_labels(tmp_path):
    root = tmp_path / "faces"
    for cls in ["b_dogs", "a_cats"]:
        (root / cls / "nested").mkdir(parents=True)
    Image.fromarray(_three_band_image(60, 20)).save(root / "a_cats" / "wide.PNG")
    Image.fromarray(_three_band_image(60, 20).transpose(1, 0, 2)).save(root / "b_dogs" / "nested" / "tall.png")
    Image.fromarray(np.full((12, 12, 3), 200, np.uint8)).save(root / "b_dogs" / "sq.jpg", quality=100)
    (root / "a_cats" / "notes.txt").write_text("not an image")
    config = make_config(dataset="IMAGEFOLDER", root=str(root), image_size=10, num_channels=3,
                         class_folders=True)
    ds = datasets.get_dataset(config)
    assert [os.path.relpath(f, root) for f in ds.files] == [
        os.path.join("a_cats", "wide.PNG"), os.path.join("b_dogs", "nested", "tall.png"),
        os.path.join("b_dogs", "sq.jpg")]
    assert ds.class_names == ["a_cats", "b_dogs"] and [ds[i][1] for i in range(3)] == [0, 1, 1]
    wide, _ = ds[0]
    assert wide.shape == (3, 10, 10)
    # 60x20 -> 30x10, centre 10 columns = the green band; away from the band edges it is pure green
    assert torch.allclose(wide[:, :, 2:8], torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 10, 6),
                          atol=1 / 255)
    tall, _ = ds[1]
    assert torch.allclose(tall[:, 2:8, :], torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 6, 10),
                          atol=1 / 255)
    grey = datasets.get_dataset(make_config(dataset="FFHQ", root=str(root), image_size=10))
    assert grey[2][0].shape == (1, 10, 10) and grey[2][1] == 0


@pytest.mark.parametrize("how", ["text", "empty", "truncated png", "too small"])
def test_bad_image_in_a_folder_is_named_when_the_data_set_is_built(tmp_path, how):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(_three_band_image(150, 150)).save(root / f"{i}.png")
    bad = root / "sub" / "bad.png"
    if how == "text":
        bad.write_text("not an image")
    elif how == "empty":
        bad.write_bytes(b"")
    elif how == "truncated png":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:5000])
    else:
        Image.fromarray(_three_band_image(100, 100)).save(bad)
    config = make_config(dataset="CELEBA" if how == "too small" else "IMAGEFOLDER", root=str(root),
                         image_size=8, num_channels=3)
    if how == "too small":  # CelebA's 140x140 centre crop needs images at least that large
        os.rename(root, tmp_path / "img_align_celeba")
        config.data.root = str(tmp_path)
        bad = tmp_path / "img_align_celeba" / "sub" / "bad.png"
        (tmp_path / "list_eval_partition.txt").write_text("".join(f"{n} 0\n" for n in
                                                                   ["0.png", "1.png", "2.png", "3.png", "bad.png"]))
    with pytest.raises(ValueError) as info:
        datasets.get_dataset(config)
    message = str(info.value)
    assert message.startswith(f"{bad} ") and "delete or replace it" in message
    assert ("smaller than the 140x140 centre crop" in message if how == "too small"
            else "is not a readable image" in message)


def test_image_folder_check_is_recorded_and_redone_when_a_file_changes(tmp_path, monkeypatch):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        Image.fromarray(_three_band_image(12, 12)).save(root / f"{i}.png")
    checks, real = [], image_readers._check_each_image
    monkeypatch.setattr(image_readers, "_check_each_image",
                        lambda files, m: checks.append(len(files)) or real(files, m))
    config = make_config(dataset="IMAGEFOLDER", root=str(root), image_size=8, num_channels=3)
    for _ in range(3):
        datasets.get_dataset(config)
    assert checks == [3]  # once: an unchanged set of files is not checked again
    (root / "1.png").write_text("now a text file")
    with pytest.raises(ValueError, match=f"{re.escape(str(root / '1.png'))} is not a readable image"):
        datasets.get_dataset(config)
    assert checks == [3, 3]


def test_image_decode_error_names_the_file(tmp_path):
    """A truncated JPEG passes the check at construction (PIL cannot tell without decoding it); its
    decode error still names the file."""
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "a.jpg")
    (root / "a.jpg").write_bytes((root / "a.jpg").read_bytes()[:800])
    ds = datasets.get_dataset(make_config(dataset="IMAGEFOLDER", root=str(root), image_size=8, num_channels=3))
    bad = re.escape(str(root / "a.jpg"))
    with pytest.raises(ValueError, match=f"cannot read the image {bad} .*delete or replace it"):
        ds[0]


def test_image_folder_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="ffhq-dataset"):
        datasets.get_dataset(make_config(dataset="FFHQ", root=str(tmp_path / "none"), image_size=8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has none"):
        datasets.get_dataset(make_config(dataset="IMAGEFOLDER", root=str(tmp_path / "empty"), image_size=8))
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba.*mmlab.ie.cuhk.edu.hk"):
        datasets.get_dataset(make_config(dataset="CELEBA", root=str(tmp_path), image_size=8))
    with pytest.raises(FileNotFoundError, match="church_outdoor_train"):
        datasets.get_dataset(make_config(dataset="LSUN", root=str(tmp_path), category="church_outdoor",
                                         image_size=8))


def test_celeba_uses_the_papers_centre_crop_and_partition(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    arrays = {}
    for name in ["000001.png", "000002.png", "000003.png"]:
        arrays[name] = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        Image.fromarray(arrays[name]).save(folder / name)
    (tmp_path / "list_eval_partition.txt").write_text("000001.png 0\n000002.png 1\n000003.png 0\n")
    config = make_config(dataset="CELEBA", root=str(tmp_path), image_size=140, num_channels=3)
    train, test = datasets.get_dataset(config), datasets.get_dataset(config, split="test")
    assert len(train) == 2 and len(test) == 1
    crop = arrays["000002.png"][(218 - 140) // 2:(218 - 140) // 2 + 140, (178 - 140) // 2:(178 - 140) // 2 + 140]
    assert torch.equal(test.load_uint8(0)[0], torch.from_numpy(crop).permute(2, 0, 1))
    config.data.image_size = 64
    assert datasets.get_dataset(config)[0][0].shape == (3, 64, 64)
    # without the partition file: the standard id ranges (test = CelebA's validation ids)
    os.remove(tmp_path / "list_eval_partition.txt")
    for name, new in [("000001.png", "162770.png"), ("000002.png", "162771.png"), ("000003.png", "182638.png")]:
        os.rename(folder / name, folder / new)
    assert [os.path.basename(f) for f in datasets.get_dataset(config).files] == ["162770.png"]
    assert [os.path.basename(f) for f in datasets.get_dataset(config, split="test").files] == ["162771.png"]


def test_lsun_reads_category_folders(tmp_path):
    for split in ["train", "val"]:
        (tmp_path / f"bedroom_{split}").mkdir()
        Image.fromarray(_three_band_image(30, 10)).save(tmp_path / f"bedroom_{split}" / "a.webp", lossless=True)
    config = make_config(dataset="LSUN", root=str(tmp_path), category="bedroom", image_size=5, num_channels=3)
    x, _ = datasets.get_dataset(config, split="test")[0]
    assert x.shape == (3, 5, 5) and torch.allclose(x[:, :, 1:4].mean((1, 2)), torch.tensor([0.0, 1.0, 0.0]), atol=0.02)


# ----------------------------------------------------------------------------- digits

def test_digits_shape_range_split_and_exact_upsampling():
    train = datasets.get_dataset(make_config(image_size=32))
    test = datasets.get_dataset(make_config(image_size=32), split="test")
    assert len(train) == 1500 and len(test) == 297
    x, y = train[0]
    assert x.shape == (1, 32, 32) and 0 <= x.min() and x.max() <= 1 and 0 <= y <= 9
    assert train.images.max() == 255 and train.images.min() == 0
    small, _ = datasets.read_digits("train")
    assert torch.equal(train.images, small.repeat_interleave(4, -2).repeat_interleave(4, -1))
    padded = datasets.get_dataset(make_config(image_size=20)).images    # 8 -> 16, 2 pixels of zeros
    assert torch.equal(padded[:, :, 2:18, 2:18], small.repeat_interleave(2, -2).repeat_interleave(2, -1))
    again = datasets.get_dataset(make_config(image_size=32), split="test")
    assert torch.equal(again.images, test.images)


# ----------------------------------------------------------------------------- toys

def test_toys_are_seeded():
    for name in datasets.TOY_DISTRIBUTIONS.list():
        a, la = datasets.sample_toy(name, 100, generator=torch.Generator().manual_seed(0))
        b, lb = datasets.sample_toy(name, 100, generator=torch.Generator().manual_seed(0))
        c, _ = datasets.sample_toy(name, 100, generator=torch.Generator().manual_seed(1))
        assert a.shape == (100, 2) and a.dtype == torch.float32 and la.shape == (100,)
        assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)


def test_toy_statistics():
    g = torch.Generator().manual_seed(0)
    n = 20000
    x, k = datasets.eight_gaussians(n, generator=g)
    assert x.mean(0).abs().max() < 0.05
    assert (x.norm(dim=1) - 2.0).abs().mean() < 0.1                        # the modes lie on the circle
    angles = torch.atan2(x[:, 1], x[:, 0]) % (2 * np.pi)
    assert torch.equal(torch.round(angles / (2 * np.pi / 8)).long() % 8, k)
    assert torch.bincount(k, minlength=8).min() > n / 8 * 0.9
    x, cell = datasets.checkerboard(n, generator=g)
    i, j = torch.floor((x + 2.0)).long().unbind(1)                          # 4x4 board on [-2, 2]^2
    assert ((i + j) % 2 == 0).all() and x.abs().max() <= 2 and x.mean(0).abs().max() < 0.05
    x, moon = datasets.two_moons(n, generator=g)
    assert x.mean(0).abs().max() < 0.05 and set(moon.tolist()) == {0, 1}
    x, _ = datasets.swiss_roll(n, generator=g)
    assert torch.isfinite(x).all() and 0.2 < x.norm(dim=1).mean() < 3


def test_toy_dataset_from_config():
    config = make_config(dataset="TOY", toy_name="two_moons", num_toy_points=500)
    train, test = datasets.get_dataset(config), datasets.get_dataset(config, split="test")
    assert len(train) == 500 and train[0][0].shape == (2,)
    assert torch.equal(train.points, datasets.get_dataset(config).points)
    assert not torch.equal(train.points, test.points)
    assert datasets.get_data_scaler(config) is datasets.identity          # points are never scaled
    x, _ = next(iter(datasets.get_dataloader(config)))
    assert x.shape == (8, 2)
    config.data.toy_name = "spiral"
    with pytest.raises(ValueError, match="data.toy_name.*eight_gaussians"):
        datasets.get_dataset(config)


# ----------------------------------------------------------------------------- config errors

def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match=r"data\.dataset='SVHN'.*CIFAR10"):
        datasets.get_dataset(make_config(dataset="SVHN"))
    with pytest.raises(ValueError, match="split"):
        datasets.get_dataset(make_config(), split="validation")
    with pytest.raises(ValueError, match="training.batch_size"):
        datasets.get_dataloader(make_config(), world_size=3)


# ----------------------------------------------------------------------------- loaders

def _labelled(n):
    """A data set whose label is its index, to see exactly which examples a batch holds."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2).contiguous()
    return datasets.TensorImageDataset(images, torch.arange(n))


def test_sharding_is_disjoint_and_covers_the_set():
    dataset, world, bs = _labelled(103), 4, 5
    seen = []
    for rank in range(world):
        stream = datasets.DataStream(dataset, batch_size=bs, seed=3, rank=rank, world_size=world)
        assert stream.steps_per_epoch == 5                       # 103 -> 100 (drop_last) -> 25 per rank
        batches = [stream.batch_indices(s) for s in range(stream.steps_per_epoch)]
        loaded = [y.tolist() for _, (_, y) in zip(range(stream.steps_per_epoch), stream)]
        assert loaded == batches
        seen += sum(batches, [])
    assert len(seen) == len(set(seen)) == 100
    # evaluation: no drop; with padding every example appears
    seen = set()
    for rank in range(world):
        stream = datasets.DataStream(dataset, batch_size=bs, rank=rank, world_size=world, shuffle=False,
                                     drop_last=False, infinite=False)
        seen |= {i for _, y in stream for i in y.tolist()}
    assert seen == set(range(103))


def test_resume_reproduces_the_same_batches():
    dataset = datasets.TensorImageDataset(torch.randint(0, 256, (37, 3, 4, 4), dtype=torch.uint8,
                                                        generator=torch.Generator().manual_seed(0)),
                                          torch.arange(37))
    options = dict(batch_size=8, seed=5, random_flip=True, uniform_dequantization=True)
    full = datasets.DataStream(dataset, **options)
    assert full.steps_per_epoch == 4
    reference = [b for _, b in zip(range(11), full)]             # crosses two epoch boundaries
    assert full.step == 11
    resumed = datasets.DataStream(dataset, start_step=6, **options)
    for step, (x, y) in zip(range(6, 11), resumed):
        assert torch.equal(x, reference[step][0]) and torch.equal(y, reference[step][1])
    # epochs are reshuffled; flips happen; dequantised values sit in [k/256, (k+1)/256)
    assert reference[0][1].tolist() != reference[4][1].tolist()
    x, y = reference[0]
    counts = dataset.images[y].float()
    flipped = (x * 256 - counts.flip(-1) < 1).all(dim=(1, 2, 3)) & (x * 256 >= counts.flip(-1)).all(dim=(1, 2, 3))
    plain = (x * 256 - counts < 1).all(dim=(1, 2, 3)) & (x * 256 >= counts).all(dim=(1, 2, 3))
    assert (flipped | plain).all() and flipped.any() and plain.any()
    # worker processes give the same batches
    workers = datasets.DataStream(dataset, start_step=6, num_workers=1, **options)
    x, y = next(iter(workers))
    assert torch.equal(x, reference[6][0]) and torch.equal(y, reference[6][1])


def test_finite_test_stream_is_one_ordered_pass():
    config = make_config(image_size=8, uniform_dequantization=False)
    stream = datasets.get_dataloader(config, "test")
    ys = torch.cat([y for _, y in stream])
    assert torch.equal(ys, datasets.get_dataset(config, split="test").labels)
    assert stream.step == stream.steps_per_epoch == 38          # 297 / 8, last batch short
    assert len(list(stream)) == 38                               # the next pass
    raw = datasets.get_dataloader(config, "test", raw=True)
    x, y = next(iter(raw))
    assert x.dtype == torch.uint8 and torch.equal(x, datasets.get_dataset(config, split="test").images[:8])
    train, evaluation = datasets.get_data_iterators(config)
    x, _ = next(iter(train))
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32


def test_scalers_round_trip():
    x = torch.rand(4, 3, 5, 5)
    for centered in [True, False]:
        config = make_config(centered=centered)
        scaler, inverse = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
        assert torch.allclose(inverse(scaler(x)), x, atol=1e-6)
    centered = datasets.get_data_scaler(make_config(centered=True))
    assert centered(torch.tensor(0.0)) == -1 and centered(torch.tensor(1.0)) == 1
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 256, (1000,), generator=g, dtype=torch.uint8)
    d = datasets.dequantize_counts(k, generator=g)
    assert d.dtype == torch.float32 and (d * 256 - k >= 0).all() and (d * 256 - k < 1).all()
