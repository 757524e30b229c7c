"""Fields every dataset default config shares beyond the paper's: data location, mixed precision,
sampler options, evaluation outputs and metrics. Each ``configs/default_<dataset>_configs.py`` calls
:func:`add_run_fields` at its end, so all configs stay consistent.

Sampler options: ``config.sampling.sampler`` names any registered sampler (``pc``, ``ode``, ``ddim``,
...) and ``config.sampling.options.<sampler>`` holds that sampler's options with their defaults, passed
as ``**kwargs`` to ``scoresde.sampling.get_sampler``; override any of them on the command line::

    --config.sampling.sampler=ode --config.sampling.options.ode.rtol=1e-3

The paper's names stay valid and are linked to the same values: ``sampling.method`` is
``sampling.sampler``; ``predictor``, ``corrector``, ``snr``, ``n_steps_each``, ``probability_flow`` are
the ``pc`` options; ``noise_removal`` is every sampler's ``denoise``.
"""
import ml_collections
from ml_collections import config_dict

# paper's field in config.sampling -> option of the pc sampler
PAPER_PC_FIELDS = {"predictor": "predictor", "corrector": "corrector", "snr": "snr",
                   "n_steps_each": "n_steps", "probability_flow": "probability_flow", "noise_removal": "denoise"}
# options the run sets itself (from config.device and the model's dtype), never from the config
_RUN_OPTIONS = ("device", "dtype")


def _option_field(value):
    """A config field for an option default: the value itself, or an untyped placeholder for ``None``."""
    if value is None:
        return config_dict.placeholder(object)
    if isinstance(value, (bool, int, float, str)):
        return value
    return None  # not expressible on a command line (e.g. a tensor): leave it to the sampler's default


def sampler_options() -> ml_collections.ConfigDict:
    """``{sampler name: {option: default}}`` for every registered sampler."""
    from scoresde.sampling.base import SAMPLERS
    import scoresde.sampling  # noqa: F401  (registers the samplers)

    options = ml_collections.ConfigDict()
    for name in SAMPLERS.list():
        fields = {key: _option_field(default) for key, default in SAMPLERS.get(name).options.items()
                  if key not in _RUN_OPTIONS}
        options[name] = ml_collections.ConfigDict({k: v for k, v in fields.items() if v is not None})
    return options


def link_paper_sampling_fields(sampling: ml_collections.ConfigDict) -> None:
    """Make the paper's sampling fields and ``sampler`` / ``options.*`` one set of values."""
    sampling.sampler = sampling.get_ref("method")
    for name, opts in sampling.options.items():
        links = PAPER_PC_FIELDS if name == "pc" else {"noise_removal": "denoise"}
        for paper, option in links.items():
            if option in opts:
                del opts[option]
                opts[option] = sampling.get_ref(paper)


def add_run_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Add this project's fields (on top of the paper's) to a dataset default config, in place."""
    data = config.data
    data.root = "data"            # where datasets are read from (and downloaded to)
    data.download = False         # fetch a missing dataset that supports it (CIFAR-10)
    data.archive_md5 = ""         # md5 of the CIFAR-10 archive ("": the official one), checked once
    data.num_workers = 0          # DataLoader worker processes

    training = config.training
    # the numbered-checkpoint period under its plain name; one value with the paper's snapshot_freq
    training.checkpoint_freq = training.get_ref("snapshot_freq")
    # 'auto' (bf16 autocast on a CPU with native bf16, fp32 elsewhere, GPUs included: scoresde.precision), 'no'
    # (fp32), 'bf16' or 'fp16' (torch.autocast; fp16 with a GradScaler, GPU only)
    training.mixed_precision = "auto"
    training.snapshot_num_samples = 64   # samples in the grid PNG written every snapshot_freq
    # class-conditional networks (model.num_classes = K): probability of training a batch row on the
    # null label K instead of its own, so one network also learns the unconditional score (for
    # classifier-free guidance)
    training.label_dropout = 0.0
    # 'score': a score network (denoising score matching); 'classifier': a noise-conditional classifier
    # (model.name = 'classifier', cross-entropy on noised data) for classifier guidance
    training.objective = "score"
    # the score network's loss: 'dsm' (the paper's: continuous DSM, or with training.continuous=False the
    # DDPM loss on VP / the SMLD loss on VE), 'ddpm' / 'smld' (those by name), 'edm' (Karras et al. 2022:
    # the network wrapped in EDM's preconditioner, log sigma ~ N(P_mean, P_std^2), weight lambda(sigma))
    training.loss = "dsm"
    training.sigma_data = 0.5     # edm: the data's standard deviation in the network's range
    training.P_mean = -1.2        # edm: mean and std of log sigma during training
    training.P_std = 1.2
    # what the network predicts under the continuous DSM loss: 'auto' (the paper's: the noise on VP/sub-VP,
    # the score on VE), 'score', 'eps', 'x0', 'v' (VP only); see scoresde.models.get_score_fn
    training.prediction = "auto"
    training.min_snr_gamma = 0.0  # > 0: the min-SNR-gamma weighting (Hang et al. 2023) of the DSM loss; 0 = off
    # the divergence guard (scoresde.divergence): a state whose loss or gradient norm is more than
    # divergence_factor times its running median over the last divergence_window steps is suspect and
    # not saved; divergence_patience suspect steps in a row (or one NaN/inf) stop the run, which then
    # resumes from the last good state. divergence_factor = 0 keeps only the NaN/inf stop.
    training.divergence_factor = 100.0
    training.divergence_window = 200
    training.divergence_patience = 3

    config.optim.beta2 = 0.999

    sampling = config.sampling
    sampling.method = sampling.get("method", "pc")
    for paper, default in (("predictor", "euler_maruyama"), ("corrector", "none"), ("snr", 0.16),
                           ("n_steps_each", 1), ("noise_removal", True), ("probability_flow", False)):
        if paper not in sampling:
            sampling[paper] = default
    sampling.options = sampler_options()
    # --mode sample: how many samples, from which numbered checkpoint (0 = the newest state), where
    sampling.num_samples = 64
    sampling.batch_size = 64
    sampling.ckpt = 0
    sampling.use_ema = True
    sampling.original_checkpoint = ""  # or the path of a checkpoint released with the paper's PyTorch code
    sampling.folder = "samples"
    # samples per shard file of a draw (scoresde.shards): <folder>/<stem>_shards/samples_<start>-<end>.npz, split
    # over the ranks of torchrun and resumed at the first missing shard; a multiple of batch_size keeps every
    # batch full
    sampling.shard_size = 1000
    # conditional sampling (--mode sample): class labels, guidance, and image tasks on test-split images
    sampling.labels = ""              # a label, "0,3,7" (used cyclically), "-1" (unconditional: the null label of
    #                                   a class-conditional network), "" (rows 0..K-1 cyclically for a class-
    #                                   conditional network or a classifier; unconditional for an image task)
    sampling.guidance = "none"        # 'none', 'cfg' (classifier-free, one class-conditional network trained with
    #                                   training.label_dropout), 'classifier' (a noise-conditional classifier)
    sampling.guidance_scale = 1.0     # cfg: s_u + scale (s_c - s_u); classifier: s + scale grad log p_t(y | x)
    sampling.classifier_workdir = ""  # guidance='classifier': the workdir of a run with training.objective='classifier'
    sampling.classifier_config = ""   # its config (.py or .json); "" = <classifier_workdir>/config.json
    sampling.task = "none"            # 'none', 'inpaint', 'colorize' (3-channel data), 'superres'
    sampling.mask = "half"            # inpaint: 'half' (top half observed), 'box' (all but a centred square), 'random'
    sampling.mask_fraction = 0.5      # box: the square's side / image side; random: share of pixels observed
    sampling.superres_factor = 2      # superres: average pooling factor (divides data.image_size)
    sampling.task_noise_std = 0.0     # std of Gaussian noise on the measurement (in the network's data space)
    sampling.task_method = "replace"  # 'replace' (replacement in the sampler), 'dps' or 'pigdm' (score transforms)
    sampling.task_guidance_scale = 1.0  # dps / pigdm: the weight of the likelihood term
    sampling.task_likelihood_std = 0.0  # dps / pigdm: the likelihood's std (0 = task_noise_std; dps needs > 0)
    link_paper_sampling_fields(sampling)

    evaluate = config.eval
    evaluate.eval_folder = "eval"          # results go to <workdir>/<eval_folder>/ckpt_<n>.json
    evaluate.bpd_num_repeats = 5           # bits/dim averaged over this many dequantisation draws
    evaluate.bpd_num_images = 0            # > 0: bits/dim on the first this-many test images only
    evaluate.bpd_rtol = 1e-5               # ODE tolerances of the likelihood
    evaluate.bpd_atol = 1e-5
    evaluate.metrics = ("fid", "is", "kid")  # computed on the samples when enable_sampling is on
    evaluate.require_metrics = False       # True: a metric that cannot be computed is an error
    evaluate.inception_weights = ""        # path of the Inception weights ("" = default lookup)
    evaluate.dataset_stats = ""            # precomputed training-set statistics .npz ("" = compute + cache)
    evaluate.save_samples = True           # write the samples as .npz and a PNG grid
    evaluate.shard_size = 1000             # samples per shard file, <eval_folder>/ckpt_<n>_samples/ (as sampling.shard_size)
    evaluate.wait = False                  # True: follow a training run, evaluating each numbered checkpoint in
    #                                        begin_ckpt..end_ckpt once, in order, as soon as it is complete
    evaluate.wait_timeout = 3600.0         # wait: stop after this many seconds without a new checkpoint
    evaluate.poll_interval = 10.0          # wait: seconds between looks at <workdir>/checkpoints

    if "seed" not in config:
        config.seed = 42
    if "device" not in config:
        config.device = ""  # '' = CUDA when available, else CPU; or 'cpu', 'cuda', 'cuda:1'
    return config


def ddpmpp_model(**changes) -> dict:
    """``config.model`` fields of DDPM++ continuous (the paper's ``vp/cifar10_ddpmpp_continuous``), with
    ``changes`` applied; use as ``config.model.update(ddpmpp_model(nf=64))``."""
    model = dict(name="ncsnpp", scale_by_sigma=False, ema_rate=0.9999, normalization="GroupNorm",
                 nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                 resamp_with_conv=True, conditional=True, fir=False, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
                 resblock_type="biggan", progressive="none", progressive_input="none", progressive_combine="sum",
                 attention_type="ddpm", init_scale=0.0, embedding_type="positional", fourier_scale=16, conv_size=3)
    model.update(changes)
    return model


def ncsnpp_model(**changes) -> dict:
    """``config.model`` fields of NCSN++ continuous (the paper's ``ve/cifar10_ncsnpp_continuous``): DDPM++
    with FIR resampling, a residual input pyramid, Fourier features and the output divided by sigma."""
    model = ddpmpp_model(scale_by_sigma=True, ema_rate=0.999, fir=True, progressive_input="residual",
                         embedding_type="fourier")
    model.update(changes)
    return model


def vp_ddpmpp_continuous(config: ml_collections.ConfigDict, **model_changes) -> ml_collections.ConfigDict:
    """The paper's VP set-up on ``config``, in place: VP SDE, continuous DSM loss averaged over dimensions,
    ``pc`` sampling with Euler-Maruyama and no corrector, the DDPM++ network with ``model_changes``."""
    config.training.update(dict(sde="vpsde", continuous=True, reduce_mean=True))
    config.sampling.update(dict(method="pc", predictor="euler_maruyama", corrector="none"))
    config.model.update(ddpmpp_model(**model_changes))
    return config


def ve_ncsnpp(config: ml_collections.ConfigDict, *, continuous: bool = True, **model_changes) -> ml_collections.ConfigDict:
    """The paper's VE set-up on ``config``, in place: VE SDE, ``pc`` sampling with reverse diffusion and
    Langevin, the NCSN++ network with ``model_changes``."""
    config.training.update(dict(sde="vesde", continuous=continuous))
    config.sampling.update(dict(method="pc", predictor="reverse_diffusion", corrector="langevin"))
    config.model.update(ncsnpp_model(**model_changes))
    return config
