"""training.mixed_precision = "auto": bf16 autocast exactly on CPUs with native bf16, fp32 elsewhere."""
import logging

import pytest
import torch

import run_lib
from scoresde import precision
from test_run_lib import tiny_config


def _cpu(monkeypatch, machine: str, mkldnn_bf16: bool, avx512_bf16: bool = False, amx: bool = False):
    """Pretend to run on a CPU with these properties."""
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn_bf16)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize("machine,mkldnn_bf16,avx512_bf16,amx,native", [
    ("x86_64", False, False, False, False),   # AVX2 (this machine's kind): the reference convolution
    ("x86_64", True, False, False, False),    # AVX512 without bf16 instructions: oneDNN only emulates them
    ("x86_64", True, True, False, True),      # AVX512-BF16 (Cooper Lake, Zen 4)
    ("x86_64", True, False, True, True),      # AMX (Sapphire Rapids)
    ("AMD64", True, True, False, True),
    ("aarch64", True, False, False, True),    # oneDNN checks ARM's bf16 instructions itself
    ("aarch64", False, False, False, False),
])
def test_native_bf16_by_cpu(monkeypatch, machine, mkldnn_bf16, avx512_bf16, amx, native):
    _cpu(monkeypatch, machine, mkldnn_bf16, avx512_bf16, amx)
    assert precision.cpu_has_native_bf16() is native
    assert precision.resolve("auto", "cpu") == ("bf16" if native else "no")


def test_native_bf16_is_false_where_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert precision.cpu_has_native_bf16() is False


def test_this_machines_answer_matches_its_cpu_flags():
    """On Linux x86 the kernel lists the instructions: no avx512_bf16 and no amx_bf16 means no native bf16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    if precision.platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the flags are x86's")
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        assert precision.cpu_has_native_bf16() is False
    elif torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert precision.cpu_has_native_bf16() is True


def test_auto_is_fp32_on_a_gpu_and_explicit_settings_are_kept(monkeypatch):
    _cpu(monkeypatch, "x86_64", True, amx=True)
    assert precision.resolve("auto", torch.device("cuda")) == "no"
    for setting in ("no", "bf16", "fp16"):
        assert precision.resolve(setting, "cpu") == setting
    with pytest.raises(ValueError, match="training.mixed_precision = 'fp8'"):
        precision.resolve("fp8", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_decides_the_runs_autocast_and_is_recorded(monkeypatch, tmp_path, caplog, native):
    """A run with "auto" trains and samples under bf16 autocast on a native-bf16 CPU and in fp32 elsewhere;
    the log and the samples' record name what was used."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    config = tiny_config(**{"training.mixed_precision": "auto", "training.n_iters": 2,
                            "training.snapshot_freq": 2, "training.snapshot_sampling": False,
                            "eval.begin_ckpt": 1, "eval.end_ckpt": 1, "eval.enable_loss": False,
                            "eval.enable_bpd": False, "eval.enable_sampling": True, "eval.metrics": ()})
    expected = "bf16" if native else "no"
    run = run_lib.setup(config, str(tmp_path / "setup"))
    assert run.mixed_precision == expected
    with run_lib._autocast(run):
        assert torch.is_autocast_enabled("cpu") is native
        if native:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    seen = []   # whether autocast was on in each call of the network
    real_create = run_lib.create_model

    def create_and_watch(*args, **kwargs):
        model = real_create(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(torch.is_autocast_enabled("cpu")))
        return model

    monkeypatch.setattr(run_lib, "create_model", create_and_watch)
    with caplog.at_level(logging.INFO, logger="scoresde"):
        history = run_lib.train(config, str(tmp_path / "run"))
    assert len(history) == 2 and all(abs(v) < 1e3 for v in history)
    assert seen and set(seen) == {native}
    seen.clear()
    assert ("precision bf16 autocast (training.mixed_precision = auto)" if native
            else "precision fp32 (training.mixed_precision = auto)") in caplog.text
    samples = run_lib.evaluate(config, str(tmp_path / "run"))[1]["samples"]
    assert samples["mixed_precision"] == expected
    assert seen and set(seen) == {native}
