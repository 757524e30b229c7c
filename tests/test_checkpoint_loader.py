"""load_original_checkpoint on a synthetic file written in the layout of the paper's code:
DataParallel-prefixed model keys, an EMA list without the frozen Fourier features, Adam state
with the learning rate as a numpy float64 pickled under its numpy 1.x name."""
import importlib
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scoresde.models import create_model, load_original_checkpoint  # noqa: E402
from scoresde.models.checkpoint import restricted_load  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


class Numpy1Pickler(pickle._Pickler):
    """Writes numpy scalars under ``numpy.core.multiarray.scalar``, as numpy 1.x did."""

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "scalar" and "multiarray" in getattr(obj, "__module__", ""):
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


NUMPY1_PICKLE = types.SimpleNamespace(Pickler=Numpy1Pickler, __name__="numpy1_pickle")


def tiny_ve_config():
    config = importlib.import_module("configs.ve.cifar10").get_config()
    config.model.nf = 8
    config.model.num_res_blocks = 1
    config.model.ch_mult = (1, 2)
    config.model.attn_resolutions = (16,)
    config.model.num_scales = 10
    return config


def write_original_checkpoint(path, config, seed=0, ema_offset=0.5):
    """Save a checkpoint the way the paper's training loop does."""
    torch.manual_seed(seed)
    model = create_model(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=2e-4)
    model(torch.rand(2, 3, 16, 16), torch.tensor([0.1, 5.0])).square().mean().backward()
    optimizer.step()
    optimizer.param_groups[0]["lr"] = np.float64(2e-4)
    shadow = [p.detach().clone() + ema_offset for p in trainable]
    state = {
        "optimizer": optimizer.state_dict(),
        "model": {"module." + k: v for k, v in model.state_dict().items()},
        "ema": {"decay": 0.999, "num_updates": 12, "shadow_params": shadow},
        "step": 12,
    }
    torch.save(state, path, pickle_module=NUMPY1_PICKLE)
    return model, shadow


def test_synthetic_file_has_the_numpy1_name(tmp_path):
    import zipfile
    path = tmp_path / "checkpoint_1.pth"
    write_original_checkpoint(path, tiny_ve_config())
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"numpy.core.multiarray\nscalar" in data and b"numpy._core" not in data
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what plain torch.load does with such a file


def test_round_trip_with_ema(tmp_path):
    config = tiny_ve_config()
    path = tmp_path / "checkpoint_1.pth"
    original, shadow = write_original_checkpoint(path, config)
    model, info = load_original_checkpoint(path, config)
    assert info.step == 12 and info.used_ema
    assert info.ema_state["num_updates"] == 12
    assert isinstance(info.optimizer_state["param_groups"][0]["lr"], np.floating)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(shadow)
    for p, s in zip(trainable, shadow):
        torch.testing.assert_close(p.detach(), s)
    # the frozen Fourier features and the buffers come from the model entry
    torch.testing.assert_close(model.all_modules[0].W, original.all_modules[0].W)
    torch.testing.assert_close(model.sigmas, original.sigmas)
    assert not model.training


def test_round_trip_raw_weights(tmp_path):
    config = tiny_ve_config()
    path = tmp_path / "checkpoint_1.pth"
    original, _ = write_original_checkpoint(path, config)
    model, info = load_original_checkpoint(path, config, use_ema=False)
    assert not info.used_ema
    for (n, p), (m, q) in zip(model.state_dict().items(), original.state_dict().items()):
        assert n == m
        torch.testing.assert_close(p, q)
    x = torch.rand(2, 3, 16, 16)
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([0.3, 3.0])), original(x, torch.tensor([0.3, 3.0])))


def test_mismatches_are_errors(tmp_path):
    config = tiny_ve_config()
    path = tmp_path / "checkpoint_1.pth"
    write_original_checkpoint(path, config)

    wider = tiny_ve_config()
    wider.model.nf = 16
    with pytest.raises(ValueError, match="shape mismatches"):
        load_original_checkpoint(path, wider)
    deeper = tiny_ve_config()
    deeper.model.num_res_blocks = 2
    with pytest.raises(ValueError, match="missing keys"):
        load_original_checkpoint(path, deeper)

    ckpt = restricted_load(path)
    ckpt["model"]["module.extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected keys: extra.weight"):
        load_original_checkpoint(tmp_path / "extra.pth", config)

    ckpt = restricted_load(path)
    ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
    torch.save(ckpt, tmp_path / "short_ema.pth")
    with pytest.raises(ValueError, match="shadow_params"):
        load_original_checkpoint(tmp_path / "short_ema.pth", config)
    load_original_checkpoint(tmp_path / "short_ema.pth", config, use_ema=False)

    del ckpt["ema"]
    torch.save(ckpt, tmp_path / "no_ema.pth")
    with pytest.raises(ValueError, match="use_ema=False"):
        load_original_checkpoint(tmp_path / "no_ema.pth", config)

    with pytest.raises(FileNotFoundError):
        load_original_checkpoint(tmp_path / "absent.pth", config)


class Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"module.sigmas": torch.zeros(1)}, "payload": Exploit(target)}, path)
    with pytest.raises(ValueError, match="refused"):
        load_original_checkpoint(path, tiny_ve_config())
    assert not target.exists()


def test_empty_file_is_named_and_refused(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError) as err:
        load_original_checkpoint(path, tiny_ve_config())
    assert str(err.value) == (f"checkpoint file {str(path)!r} is empty (0 bytes): it was not written completely; "
                              "download or copy it again")


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_named_and_refused(tmp_path, seed):
    size = int(np.random.default_rng(seed).integers(1, 4000))
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    with pytest.raises(ValueError) as err:
        restricted_load(path)
    assert str(err.value) == (f"checkpoint file {str(path)!r} ({size} bytes) is not a readable PyTorch checkpoint: "
                              "it is damaged, truncated or another kind of file; download or copy it again")


def test_truncated_checkpoint_is_named_and_refused(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"model": {"w": torch.arange(2000.0)}, "step": 3}, whole)
    data = whole.read_bytes()
    for cut in range(1, len(data), max(1, len(data) // 60)):
        path = tmp_path / "cut.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"is not a readable PyTorch checkpoint: it is damaged, truncated"):
            restricted_load(path)
    assert restricted_load(whole)["step"] == 3
