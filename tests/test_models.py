"""Score networks: configs build, sizes equal the paper's code, forward/backward, options,
config errors that name the field, FIR resampling against a direct upfirdn2d, get_score_fn."""
import importlib
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scoresde import sde_lib  # noqa: E402
from scoresde.models import (count_parameters, create_model, get_model, get_score_fn,  # noqa: E402
                             list_models, layers)


pytestmark = pytest.mark.usefixtures("one_thread")

# the released networks' sizes (the paper's PyTorch code)
PARAMETER_COUNTS = {
    "vp.cifar10": 61_804_419,
    "subvp.cifar10": 61_804_419,
    "vp.cifar10_deep": 106_632_579,
    "ve.cifar10": 62_758_915,
    "ve.cifar10_deep": 107_587_075,
    "vp.ddpm.cifar10": 35_218_947,
    "ve.ncsnv2.cifar10": 29_694_083,
}


def load_config(name):
    return importlib.import_module(f"configs.{name}").get_config()


def tiny(config):
    """Shrink a config so that its network runs in a fraction of a second."""
    name = config.model.name
    config.model.nf = 32 if name == "ddpm" else 8
    if name in ("ncsnpp", "ddpm"):
        config.model.num_res_blocks = 1
    config.model.num_scales = 10
    config.model.dropout = 0.0
    return config


def noise_labels_for(config, batch):
    if config.model.name.startswith("ncsnv2"):
        return torch.arange(batch) % config.model.num_scales
    if config.model.name == "ncsnpp" and config.model.embedding_type == "fourier":
        return torch.linspace(0.05, 20.0, batch)
    if config.model.scale_by_sigma:  # positional embedding of the step index of sigmas
        return torch.arange(batch) % config.model.num_scales
    return torch.linspace(0.0, 999.0, batch)


def run(model, config, x, **kwargs):
    return model(x, noise_labels_for(config, x.shape[0]), **kwargs)


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_parameter_count_equals_the_paper(name):
    with torch.device("meta"):
        model = create_model(load_config(name))
    assert count_parameters(model) == PARAMETER_COUNTS[name]


def test_ve_fourier_features_are_frozen_and_counted():
    with torch.device("meta"):
        model = create_model(load_config("ve.cifar10"))
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["all_modules.0.W"]
    assert model.all_modules[0].W.numel() == 128


def test_state_dict_layout_of_the_paper():
    with torch.device("meta"):
        model = create_model(load_config("vp.cifar10"))
    sd = model.state_dict()
    assert sd["sigmas"].dtype == torch.float64 and sd["sigmas"].shape == (1000,)
    # positional embedding: the first modules are the two Dense layers, then the input conv
    assert sd["all_modules.0.weight"].shape == (512, 128)
    assert sd["all_modules.2.weight"].shape == (128, 3, 3, 3)
    block = [k for k in sd if k.startswith("all_modules.3.")]
    assert {k.split(".", 2)[2] for k in block} >= {"GroupNorm_0.weight", "Conv_0.weight", "Dense_0.weight",
                                                   "GroupNorm_1.weight", "Conv_1.weight"}
    nin = [k for k in sd if k.endswith("NIN_0.W")]
    assert nin and sd[nin[0]].shape == (256, 256)  # W stored as (in, out)
    assert all(k == "sigmas" or k.startswith("all_modules.") for k in sd)


def test_sigmas_buffer_is_geometric_from_sigma_max():
    model = create_model(tiny(load_config("ve.cifar10")))
    s = model.sigmas
    assert s.dtype == torch.float64 and len(s) == 10
    assert s[0].item() == pytest.approx(50.0) and s[-1].item() == pytest.approx(0.01)


# ----------------------------------------------------------------------------- forward/backward
@pytest.mark.parametrize("name", ["vp.cifar10", "ve.cifar10", "vp.ddpm.cifar10", "ve.ncsnv2.cifar10"])
def test_forward_backward_shape_and_determinism(name):
    config = tiny(load_config(name))
    torch.manual_seed(0)
    model = create_model(config)
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    out = run(model, config, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0

    torch.manual_seed(0)
    again = create_model(config)
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.equal(run(model, config, x), run(again, config, x))


@pytest.mark.parametrize("name, sizes", [
    ("vp.cifar10", [16, 64]), ("ve.cifar10", [16, 64]),
    ("vp.ddpm.cifar10", [16, 24]), ("ve.ncsnv2.cifar10", [28, 32, 64, 96, 136])])
def test_builds_for_other_image_sizes(name, sizes):
    for size in sizes:
        config = tiny(load_config(name))
        config.data.image_size = size
        if size == 24:  # pyramid 24, 12, 6, 3
            config.model.attn_resolutions = (12,)
        model = create_model(config).eval()
        if config.model.name == "ncsnv2":  # deeper RefineNets for larger images
            assert hasattr(model, "res5") == (size >= 96) and hasattr(model, "res31") == (size > 128)
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            assert run(model, config, x).shape == x.shape


def test_runs_on_input_sizes_other_than_the_config():
    config = tiny(load_config("ve.cifar10"))
    model = create_model(config).eval()
    with torch.no_grad():
        for h, w in [(8, 8), (16, 40), (48, 48)]:
            x = torch.rand(1, 3, h, w)
            assert run(model, config, x).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 8"):
        run(model, config, torch.rand(1, 3, 12, 12))


def test_ncsnv2_runs_at_32x32_with_dilated_convolutions():
    config = tiny(load_config("ve.ncsnv2.cifar10"))
    model = create_model(config).eval()
    dilated = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1]
    assert dilated and all(m.padding[0] == m.dilation[0] for m in dilated)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 9]))
        # the output is divided by sigma: integer labels index the sigmas, floats are sigma
        same = model(x, model.sigmas[[0, 9]].float())
    assert out.shape == x.shape
    torch.testing.assert_close(out, same)


NCSNPP_OPTIONS = [
    dict(resblock_type="ddpm", progressive="none", progressive_input="none", fir=False),
    dict(resblock_type="ddpm", progressive="output_skip", progressive_input="input_skip", fir=True,
         progressive_combine="cat"),
    dict(resblock_type="biggan", progressive="output_skip", progressive_input="input_skip", fir=True),
    dict(resblock_type="biggan", progressive="residual", progressive_input="residual", fir=True),
    dict(resblock_type="biggan", progressive="residual", progressive_input="residual", fir=False,
         skip_rescale=False, resamp_with_conv=False),
    dict(resblock_type="ddpm", progressive="residual", progressive_input="input_skip", fir=True,
         resamp_with_conv=False, conditional=False, embedding_type="positional", scale_by_sigma=True),
]


@pytest.mark.parametrize("options", NCSNPP_OPTIONS)
def test_ncsnpp_options(options):
    config = tiny(load_config("ve.cifar10"))
    config.model.ch_mult = (1, 2, 2)
    config.model.attn_resolutions = (8,)
    for key, value in options.items():
        config.model[key] = value
    model = create_model(config)
    x = torch.rand(2, 3, 16, 16)
    out = run(model, config, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()


def test_class_conditioning():
    for name in ["vp.cifar10", "vp.ddpm.cifar10", "ve.ncsnv2.cifar10"]:
        config = tiny(load_config(name))
        config.model.num_classes = 10
        model = create_model(config).eval()
        x = torch.rand(2, 3, 32, 32)
        labels = noise_labels_for(config, 2)
        with pytest.raises(ValueError, match="class_labels"):
            model(x, labels)
        with torch.no_grad():
            # zero-initialised embedding: starts out as the unconditional network
            a = model(x, labels, torch.tensor([0, 0]))
            model.label_embed.embedding.weight.normal_()
            b = model(x, labels, torch.tensor([0, 0]))
            c = model(x, labels, torch.tensor([3, 3]))
        assert not torch.equal(b, c) and not torch.equal(a, b)
        assert c.shape == x.shape
    unconditional = create_model(tiny(load_config("vp.cifar10")))
    with pytest.raises(ValueError, match="num_classes"):
        unconditional(x, torch.zeros(2), torch.tensor([1, 2]))


@pytest.mark.parametrize("name", ["vp.cifar10", "vp.ddpm.cifar10", "ve.ncsnv2.cifar10", "vp.toy"])
def test_null_label_is_accepted_and_labels_out_of_range_are_refused(name):
    """K classes: labels 0..K-1 and the null label K (an extra embedding row, for label dropout and
    classifier-free guidance); anything else is an error naming class_labels and the range."""
    import scoresde.models.mlp  # noqa: F401  (registers the toy network)
    config = load_config(name) if name == "vp.toy" else tiny(load_config(name))
    config.model.num_classes = 4
    model = create_model(config).eval()
    assert model.label_embed.embedding.num_embeddings == 5
    x = torch.rand(2, 2) if name == "vp.toy" else torch.rand(2, 3, 32, 32)
    labels = torch.full((2,), 0.5) if name == "vp.toy" else noise_labels_for(config, 2)
    with torch.no_grad():
        model.label_embed.embedding.weight.normal_()
        if name == "vp.toy":
            model.out.weight.normal_()  # zero-initialised output layer
        null = model(x, labels, torch.tensor([4, 4]))
        real = model(x, labels, torch.tensor([3, 3]))
    assert null.shape == x.shape and not torch.equal(null, real)
    for bad in ([5, 0], [0, -1]):
        with pytest.raises(ValueError, match=r"class_labels must be in \[0, 4\]"):
            model(x, labels, torch.tensor(bad))
    with pytest.raises(ValueError, match="class_labels must be an integer tensor"):
        model(x, labels, torch.tensor([1.0, 2.0]))


# ----------------------------------------------------------------------------- config errors
BAD_CONFIGS = [
    ("ve.cifar10", "model.resblock_type", "resnet", "model.resblock_type"),
    ("ve.cifar10", "model.progressive", "skip", "model.progressive"),
    ("ve.cifar10", "model.progressive_input", "skip", "model.progressive_input"),
    ("ve.cifar10", "model.progressive_combine", "mean", "model.progressive_combine"),
    ("ve.cifar10", "model.embedding_type", "learned", "model.embedding_type"),
    ("ve.cifar10", "model.nonlinearity", "gelu", "model.nonlinearity"),
    ("ve.cifar10", "model.attention_type", "legacy", "model.attention_type"),
    ("ve.cifar10", "model.conv_size", 5, "model.conv_size"),
    ("ve.cifar10", "model.attn_resolutions", (12,), "model.attn_resolutions"),
    ("ve.cifar10", "data.image_size", 36, "data.image_size"),
    ("ve.cifar10", "training.continuous", False, "model.embedding_type"),
    ("ve.cifar10", "model.nf", 18, "model.nf"),
    ("ve.cifar10", "model.name", "unet", "model.name"),
    ("vp.ddpm.cifar10", "model.nf", 48, "model.nf"),
    ("vp.ddpm.cifar10", "model.attn_resolutions", (16, 5), "model.attn_resolutions"),
    ("vp.ddpm.cifar10", "data.image_size", 20, "data.image_size"),
    ("ve.ncsnv2.cifar10", "model.normalization", "BatchNorm", "model.normalization"),
    ("ve.ncsnv2.cifar10", "data.image_size", 30, "data.image_size"),
    ("vp.cifar10", "model.num_classes", -1, "model.num_classes"),
    ("vp.cifar10", "model.dropout", 1.5, "model.dropout"),
]


@pytest.mark.parametrize("name, path, value, field", BAD_CONFIGS)
def test_bad_config_names_the_field(name, path, value, field):
    config = tiny(load_config(name))
    section, key = path.split(".")
    with config.unlocked():
        config[section][key] = value
    with pytest.raises(ValueError, match=f"config.{field}"):
        with torch.device("meta"):
            create_model(config)


def test_registry():
    assert {"ncsnpp", "ddpm", "ncsnv2"} <= set(list_models())
    with pytest.raises(ValueError, match="ncsnpp"):
        get_model("nope")


# ----------------------------------------------------------------------------- FIR resampling
def upfirdn2d_reference(x, k, up=1, down=1, pad=(0, 0)):
    """Direct upfirdn2d: zero-stuff by ``up``, pad, convolve with ``k`` (true convolution),
    keep every ``down``-th pixel."""
    B, C, H, W = x.shape
    if up > 1:
        y = x.new_zeros(B, C, H * up, W * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    w = torch.flip(k, (0, 1))[None, None].repeat(C, 1, 1, 1)
    return F.conv2d(x, w, groups=C)[:, :, ::down, ::down]


def test_fir_resampling_matches_upfirdn2d():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for taps in ([1, 3, 3, 1], [1, 2, 1], [1, 1]):
        k = layers.fir_kernel_2d(taps).double()
        p = k.shape[0] - 2
        up_ref = upfirdn2d_reference(x, k * 4, up=2, pad=((p + 1) // 2 + 1, p // 2))
        torch.testing.assert_close(layers.upsample_2d(x, k), up_ref)
        down_ref = upfirdn2d_reference(x, k, down=2, pad=((p + 1) // 2, p // 2))
        torch.testing.assert_close(layers.downsample_2d(x, k), down_ref)
    # a constant image stays constant away from the border
    const = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    k = layers.fir_kernel_2d([1, 3, 3, 1]).double()
    torch.testing.assert_close(layers.upsample_2d(const, k)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12, dtype=torch.float64))


def test_fir_conv_matches_separate_ops():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    k = layers.fir_kernel_2d([1, 3, 3, 1]).double()
    down = layers.FIRConv2d(4, 5, down=True).double()
    ref = F.conv2d(upfirdn2d_reference(x, k, pad=(2, 2)), down.weight, down.bias, stride=2)
    torch.testing.assert_close(down(x), ref)
    up = layers.FIRConv2d(4, 5, up=True).double()
    # TF conv2d_transpose with the (flipped) kernel, then the FIR filter
    y = F.conv_transpose2d(x, up.weight.transpose(0, 1).flip((2, 3)), stride=2)
    ref = upfirdn2d_reference(y, k * 4, pad=(1, 1)) + up.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(up(x), ref)
    assert up(x).shape == (2, 5, 16, 16) and down(x).shape == (2, 5, 4, 4)


def test_attention_matches_the_einsum_form():
    torch.manual_seed(0)
    block = layers.AttnBlockpp(16, skip_rescale=True, init_scale=1.0).double()
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    h = block.GroupNorm_0(x)
    q, k, v = (torch.einsum("bchw,cd->bdhw", h, nin.W) + nin.b[:, None, None]
               for nin in (block.NIN_0, block.NIN_1, block.NIN_2))
    w = torch.einsum("bchw,bcij->bhwij", q, k) / math.sqrt(16)
    w = torch.softmax(w.reshape(2, 4, 4, 16), dim=-1).reshape(2, 4, 4, 4, 4)
    a = torch.einsum("bhwij,bcij->bchw", w, v)
    ref = (x + torch.einsum("bchw,cd->bdhw", a, block.NIN_3.W) + block.NIN_3.b[:, None, None]) / math.sqrt(2)
    torch.testing.assert_close(block(x), ref)


# ----------------------------------------------------------------------------- get_score_fn
class Recorder(torch.nn.Module):
    """Returns a constant image and records what it was fed."""

    def forward(self, x, noise_labels, class_labels=None):
        self.noise_labels, self.class_labels = noise_labels, class_labels
        return torch.full_like(x, 2.0)


def test_score_fn_vp_continuous_and_subvp():
    x, t = torch.zeros(3, 1, 2, 2), torch.tensor([0.1, 0.5, 1.0])
    for sde in (sde_lib.VPSDE(0.1, 20.0, 1000), sde_lib.subVPSDE(0.1, 20.0, 1000)):
        for continuous in (True, False) if isinstance(sde, sde_lib.subVPSDE) else (True,):
            net = Recorder()
            score = get_score_fn(sde, net, continuous=continuous)(x, t)
            torch.testing.assert_close(net.noise_labels, 999 * t)
            std = sde.marginal_prob(x, t)[1]
            torch.testing.assert_close(score, -2.0 / std[:, None, None, None].expand_as(x))


def test_score_fn_vp_discrete():
    sde, net = sde_lib.VPSDE(0.1, 20.0, 1000), Recorder()
    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([0.3004, 1.0])
    score = get_score_fn(sde, net, continuous=False)(x, t)
    torch.testing.assert_close(net.noise_labels, t * 999)  # float, not rounded
    std = sde.sqrt_1m_alphas_cumprod[torch.round(t.double() * 999).long()].float()
    torch.testing.assert_close(score, -2.0 / std[:, None, None, None].expand_as(x))


def test_score_fn_ve():
    sde, x, t = sde_lib.VESDE(0.01, 50.0, 1000), torch.zeros(2, 1, 2, 2), torch.tensor([0.0, 0.75])
    net = Recorder()
    score = get_score_fn(sde, net, continuous=True)(x, t)
    torch.testing.assert_close(net.noise_labels, (0.01 * 5000.0 ** t).float())
    assert torch.equal(score, torch.full_like(x, 2.0))
    get_score_fn(sde, net, continuous=False)(x, t)
    assert net.noise_labels.dtype == torch.int64
    assert net.noise_labels.tolist() == [999, round(0.25 * 999)]


def test_score_fn_class_labels_and_mode():
    sde, net = sde_lib.VPSDE(), Recorder()
    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 0.5])
    y = torch.tensor([3, 4])
    get_score_fn(sde, net, class_labels=y)(x, t)
    assert torch.equal(net.class_labels, y)
    get_score_fn(sde, net, class_labels=y)(x, t, class_labels=y + 1)
    assert torch.equal(net.class_labels, y + 1)
    net.train()
    get_score_fn(sde, net)(x, t)
    assert not net.training
    get_score_fn(sde, net, train=True)(x, t)
    assert net.training
    with pytest.raises(ValueError):
        get_score_fn(sde, net)(x, torch.tensor([0.5]))


def test_score_fn_with_a_real_network_ve():
    config = tiny(load_config("ve.cifar10"))
    model = create_model(config)
    sde = sde_lib.VESDE(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
    x = torch.rand(2, 3, 16, 16)
    score = get_score_fn(sde, model, continuous=True)(x, torch.tensor([0.2, 0.9]))
    assert score.shape == x.shape and not model.training


def test_create_model_finds_every_registered_network_without_other_imports():
    """Every ``@register_model`` in scoresde/models is registered by ``import scoresde.models`` alone, so that
    ``create_model`` builds e.g. the toy ``mlp`` config in a fresh process (checked in a subprocess, since this
    test process has imported the network modules already)."""
    import pathlib
    import re
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parents[1]
    declared = sorted(name for path in (root / "scoresde" / "models").glob("*.py")
                      for name in re.findall(r'@register_model\("([^"]+)"\)', path.read_text()))
    assert {"mlp", "ncsnpp", "ddpm", "classifier"} <= set(declared)
    code = ("import importlib, json\n"
            "from scoresde.models import create_model, list_models\n"
            "config = importlib.import_module('configs.vp.toy').get_config()\n"
            "model = create_model(config)\n"
            "print(json.dumps([type(model).__name__, sorted(list_models())]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(root), timeout=120)
    assert out.returncode == 0, out.stderr
    import json
    model_name, registered = json.loads(out.stdout.strip().splitlines()[-1])
    assert registered == declared
    assert model_name == "MLPScore"
