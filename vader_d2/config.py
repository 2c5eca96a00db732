"""Config keys of VADeR pretraining: ``add_vader_config(cfg)`` must run before ``merge_from_file``."""

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .dense_grid import OUTPUT_STRIDE
from .errors import UserError
from .mixed_precision import check_amp_config
from .modeling.vader import OLD_MOCO_SPELLING


# The meta-architectures that pretrain on two views (vader_d2/modeling): the trainer gives them the view
# mapper, these checks and a fresh key encoder; anything else is a stock Detectron2 model (fine-tuning).
PRETRAINING_ARCHITECTURES = ("VADeR", "MoCo", "DenseCL", "PixPro")

# Input pixels per cell of each ResNet stage: DenseCL and PixPro compare the cells of one of them.
RESNET_STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def add_vader_config(cfg):
    """
    Add the ``MODEL.VADER``, ``MODEL.MOCO``, ``MODEL.DENSECL``, ``MODEL.PIXPRO``, ``MODEL.FROZEN_BACKBONE``,
    ``INPUT.VIEWS`` and optimizer sections to a Detectron2 config.
    """
    add_frozen_backbone_config(cfg)
    cfg.MODEL.VADER = CN()
    # "dense", VADeR's pixel-level InfoNCE. "global" is the old spelling of MODEL.META_ARCHITECTURE MoCo,
    # translated by ``resolve_old_spellings`` (with GLOBAL_HEAD below).
    cfg.MODEL.VADER.LOSS = "dense"
    cfg.MODEL.VADER.EMBED_DIM = 128
    cfg.MODEL.VADER.TEMPERATURE = 0.07
    # Number of key embeddings (pixels for "dense", images for "global") kept as negatives.
    cfg.MODEL.VADER.QUEUE_SIZE = 65536
    # When a step's keys enter the queue (VADeR, the MoCo baseline, both DenseCL queues): "before_loss",
    # this project's, so that the batch's other images are negatives too (the freshest keys there are,
    # and negatives from the first step on); "after_loss", MoCo's and DenseCL's official order, so that
    # negatives are the keys of earlier steps only. Keys of the query's own image are masked either way.
    cfg.MODEL.VADER.ENQUEUE = "before_loss"
    cfg.MODEL.VADER.MOMENTUM = 0.999
    # Matched pixel pairs per image the loss is applied to (paper: 32).
    cfg.MODEL.VADER.PAIRS_PER_IMAGE = 32
    # The two views must share at least this many output cells (paper: 32), else they are re-drawn. 0
    # (the MoCo baseline, DenseCL, PixPro only) draws them unconstrained, as those methods' own code.
    cfg.MODEL.VADER.MIN_SHARED_CELLS = 32
    # Also use view 2 as query and view 1 as key (off in the paper's recipe).
    cfg.MODEL.VADER.SYMMETRIC = False
    # How a query cell reads its positive key from view 2's embedding map at a sub-cell location:
    # "bilinear" (re-normalised after interpolation) or "nearest" cell.
    cfg.MODEL.VADER.KEY_SAMPLING = "bilinear"
    # Batch norm of the two encoders (vader_d2/modeling/shuffle_bn.py). "shuffle": MoCo's shuffle-BN;
    # each process normalises over groups of BN_GROUP_SIZE of its images (MODEL.RESNETS.NORM and
    # MODEL.FPN.NORM must be the per-process "BN"), the query encoder over contiguous groups, the key
    # encoder over groups of a random permutation of the global batch, so that a key is never normalised
    # with its query's statistics. "sync": both encoders on the whole batch with the configured norm
    # (naiveSyncBN: statistics of the global batch), which lets the positive key be told apart by this
    # step's statistics; kept for comparison.
    cfg.MODEL.VADER.KEY_BN = "shuffle"
    # Images per batch-norm group with KEY_BN "shuffle" (MoCo: 32, its per-GPU batch). It must divide
    # the per-process batch; one process then emulates IMS_PER_BATCH / BN_GROUP_SIZE GPUs.
    cfg.MODEL.VADER.BN_GROUP_SIZE = 32
    # Similarity / accuracy / queue statistics are read off the device every this many iterations.
    cfg.MODEL.VADER.METRICS_PERIOD = 20
    # Keep both encoders' weights and inputs in channels_last memory order: faster convolutions on GPUs
    # with tensor cores (with SOLVER.AMP.ENABLED); on CPUs it depends on the oneDNN kernels (benchmark it).
    cfg.MODEL.VADER.CHANNELS_LAST = False

    cfg.MODEL.VADER.HEAD = CN()
    cfg.MODEL.VADER.HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.VADER.HEAD.CONV_DIM = 128
    # 3x3 convs applied after the FPN levels are merged at stride 4.
    cfg.MODEL.VADER.HEAD.NUM_CONVS = 1
    cfg.MODEL.VADER.HEAD.NORM = "GN"

    # The old spelling's MODEL.MOCO.IN_FEATURE and HIDDEN_DIM (``resolve_old_spellings``).
    cfg.MODEL.VADER.GLOBAL_HEAD = CN()
    cfg.MODEL.VADER.GLOBAL_HEAD.IN_FEATURE = "res5"
    cfg.MODEL.VADER.GLOBAL_HEAD.HIDDEN_DIM = 2048

    # The MoCo v2 baseline (vader_d2/modeling/moco.py). It shares MODEL.VADER's momentum-contrast keys:
    # EMBED_DIM, QUEUE_SIZE (image keys), ENQUEUE, MOMENTUM, KEY_BN, BN_GROUP_SIZE, METRICS_PERIOD,
    # CHANNELS_LAST.
    cfg.MODEL.MOCO = CN()
    # The backbone stage pooled into one vector per view, and the hidden width of the MLP after it.
    cfg.MODEL.MOCO.IN_FEATURE = "res5"
    cfg.MODEL.MOCO.HIDDEN_DIM = 2048
    # MoCo v2's (v1's: 0.07).
    cfg.MODEL.MOCO.TEMPERATURE = 0.2
    # Also use view 2 as query and view 1 as key (not MoCo's recipe).
    cfg.MODEL.MOCO.SYMMETRIC = False

    # DenseCL (vader_d2/modeling/densecl.py). It shares MODEL.VADER's momentum-contrast keys: EMBED_DIM,
    # QUEUE_SIZE (the length of both its queues, global and dense, one key per image and step), MOMENTUM,
    # KEY_BN, BN_GROUP_SIZE, METRICS_PERIOD, CHANNELS_LAST.
    cfg.MODEL.DENSECL = CN()
    # The backbone stage both heads read (paper: C5 = res5, stride 32).
    cfg.MODEL.DENSECL.IN_FEATURE = "res5"
    # Hidden width of the global MLP and of the dense 1x1-conv head (paper: 2048).
    cfg.MODEL.DENSECL.HIDDEN_DIM = 2048
    cfg.MODEL.DENSECL.TEMPERATURE = 0.2
    # lambda: loss = (1 - lambda) global + lambda dense.
    cfg.MODEL.DENSECL.LOSS_WEIGHT = 0.5
    # A query cell's positive key cell: "feature" (the paper's: the most similar backbone feature of
    # view 2) or "geometric" (where the views' transforms put the cell's centre in view 2).
    cfg.MODEL.DENSECL.POSITIVE = "feature"

    # PixPro (vader_d2/modeling/pixpro.py); MODEL.VADER.METRICS_PERIOD and CHANNELS_LAST apply to it too.
    cfg.MODEL.PIXPRO = CN()
    cfg.MODEL.PIXPRO.IN_FEATURE = "res5"  # the paper's C5, stride 32
    cfg.MODEL.PIXPRO.HIDDEN_DIM = 4096
    cfg.MODEL.PIXPRO.EMBED_DIM = 256
    # Norm of the projection's hidden layer (PixPro: SyncBN).
    cfg.MODEL.PIXPRO.NORM = "BN"
    # Pixel propagation: similarity exponent gamma and layers of the transform g (0: identity, 1: one
    # 1x1 conv, the paper's best; 2: conv-norm-ReLU-conv).
    cfg.MODEL.PIXPRO.PROPAGATION_GAMMA = 2.0
    cfg.MODEL.PIXPRO.TRANSFORM_LAYERS = 1
    # Cells of the two views are a positive pair when their centres lie closer in the source image than
    # this many feature-bin diagonals (paper: 0.7).
    cfg.MODEL.PIXPRO.POSITIVE_RADIUS = 0.7
    # Momentum of the momentum encoder at iteration 0; it rises to 1 at SOLVER.MAX_ITER on a cosine.
    cfg.MODEL.PIXPRO.MOMENTUM = 0.99

    # "SGD" (Detectron2's) or "LARS" (vader_d2/solver.py; PixPro's optimizer), for every method. LARS
    # applies SOLVER.WEIGHT_DECAY to weight tensors only and leaves biases and norms undecayed and
    # unadapted, as PixPro's recipe; SOLVER.WEIGHT_DECAY_NORM, WEIGHT_DECAY_BIAS and BIAS_LR_FACTOR are SGD's.
    cfg.SOLVER.OPTIMIZER = "SGD"
    # Checkpoint retention: after each checkpoint, rank 0 keeps the newest CHECKPOINT_KEEP periodic
    # checkpoints (model_<iteration>.pth) and deletes older ones; model_final.pth and the file
    # last_checkpoint names always stay (vader_d2/output_dir.py: prune_checkpoints). 0 keeps them all.
    cfg.SOLVER.CHECKPOINT_KEEP = 0
    # Signals that pre-empt a run (vader_d2/preemption.py): every process finishes its iteration, rank 0
    # writes its checkpoint, all exit with status 75; [] leaves the signals' default action (death).
    cfg.SOLVER.PREEMPTION_SIGNALS = ["SIGTERM", "SIGUSR1"]
    # Mixed precision with SOLVER.AMP.ENABLED (vader_d2/mixed_precision.py): "float16" (Detectron2's
    # AMPTrainer with a gradient scaler; CUDA only), "bfloat16" (no scaler: float32's exponent range), or
    # "auto": float16 on CUDA, bfloat16 on the CPU. Losses, queues and the momentum update stay float32.
    cfg.SOLVER.AMP.PRECISION = "auto"
    cfg.SOLVER.LARS = CN()
    # eta of LARS's trust ratio eta ||w|| / ||g + wd w|| (PixPro: 0.001).
    cfg.SOLVER.LARS.TRUST_COEFFICIENT = 0.001

    cfg.INPUT.VIEWS = CN()
    cfg.INPUT.VIEWS.CROP_SIZE = 224
    cfg.INPUT.VIEWS.CROP_SCALE = (0.2, 1.0)
    cfg.INPUT.VIEWS.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
    cfg.INPUT.VIEWS.FLIP_PROB = 0.5
    # Random affine: rotation in degrees, shear in degrees, applied with AFFINE_PROB.
    cfg.INPUT.VIEWS.AFFINE_PROB = 0.5
    cfg.INPUT.VIEWS.AFFINE_ROTATION = 15.0
    cfg.INPUT.VIEWS.AFFINE_SHEAR = 5.0
    # Random homography: each corner moves by up to this fraction of the view size.
    cfg.INPUT.VIEWS.HOMOGRAPHY_PROB = 0.5
    cfg.INPUT.VIEWS.HOMOGRAPHY_STRENGTH = 0.1
    # Photometric recipe of MoCo v2: brightness, contrast, saturation, hue.
    cfg.INPUT.VIEWS.COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)
    cfg.INPUT.VIEWS.COLOR_JITTER_PROB = 0.8
    cfg.INPUT.VIEWS.GRAYSCALE_PROB = 0.2
    cfg.INPUT.VIEWS.BLUR_SIGMA = (0.1, 2.0)
    cfg.INPUT.VIEWS.BLUR_PROB = 0.5
    # (view 1, view 2) blur probabilities where the views differ (BYOL's and PixPro's: (1.0, 0.1)); ()
    # gives both views BLUR_PROB.
    cfg.INPUT.VIEWS.BLUR_PROB_PER_VIEW = ()
    # (view 1, view 2) probabilities of solarizing a view (PIL's threshold 128; BYOL's and PixPro's: (0.0, 0.2)).
    cfg.INPUT.VIEWS.SOLARIZE_PROB = (0.0, 0.0)
    # Additive Gaussian pixel noise, std as a fraction of the 0..255 range.
    cfg.INPUT.VIEWS.NOISE_STD = 0.03
    cfg.INPUT.VIEWS.NOISE_PROB = 0.2
    # Attempts at a view pair sharing MODEL.VADER.MIN_SHARED_CELLS before falling back to identical
    # geometry for both views (logged).
    cfg.INPUT.VIEWS.MAX_REDRAWS = 20
    # Sources larger than this (longest side, pixels) are downscaled once at decode time.
    cfg.INPUT.VIEWS.MAX_SOURCE_SIZE = 1024


def add_frozen_backbone_config(cfg):
    """Downstream keys of the frozen-backbone protocol (vader_d2/frozen_backbone.py)."""
    # True: the ResNet and the FPN of a downstream model keep their loaded weights and batch-norm
    # statistics (frozen batch norm) and only the task head trains. Detectron2's
    # MODEL.BACKBONE.FREEZE_AT cannot freeze the FPN.
    cfg.MODEL.FROZEN_BACKBONE = False


def resolve_old_spellings(cfg):
    """
    Translate, in place, what configs written before the methods had configs of their own say:
    ``MODEL.META_ARCHITECTURE VADeR`` with ``MODEL.VADER.LOSS global`` is ``MODEL.META_ARCHITECTURE MoCo``,
    its MODEL.VADER.TEMPERATURE, SYMMETRIC and GLOBAL_HEAD.* are MODEL.MOCO's. Returns ``cfg``.
    """
    v = cfg.MODEL.VADER
    if cfg.MODEL.META_ARCHITECTURE != "VADeR" or v.LOSS != "global":
        return cfg
    # Keys of both spellings in one config would say two things; the old spelling's are the ones it reads.
    defaults = get_cfg()
    add_vader_config(defaults)
    moved = [key for key, value in cfg.MODEL.MOCO.items() if value != defaults.MODEL.MOCO[key]]
    if moved:
        raise UserError(
            f"MODEL.MOCO.{moved[0]} is set in a config of the old spelling MODEL.VADER.LOSS global, which reads "
            "MODEL.VADER's keys; write MODEL.META_ARCHITECTURE MoCo instead of MODEL.VADER.LOSS global"
        )
    cfg.MODEL.META_ARCHITECTURE = "MoCo"
    cfg.MODEL.MOCO.IN_FEATURE = v.GLOBAL_HEAD.IN_FEATURE
    cfg.MODEL.MOCO.HIDDEN_DIM = v.GLOBAL_HEAD.HIDDEN_DIM
    cfg.MODEL.MOCO.TEMPERATURE = v.TEMPERATURE
    cfg.MODEL.MOCO.SYMMETRIC = v.SYMMETRIC
    v.LOSS = "dense"
    return cfg


# Norms whose statistics are shared across processes (Detectron2's names).
SYNCHRONISED_NORMS = ("naiveSyncBN", "naiveSyncBN_N", "SyncBN", "nnSyncBN")


def check_batch_norm_config(cfg, world_size):
    """KEY_BN needs norms and batch sizes that make its groups what it says they are."""
    v = cfg.MODEL.VADER
    if v.KEY_BN not in ("shuffle", "sync"):
        raise UserError(f"MODEL.VADER.KEY_BN must be 'shuffle' or 'sync', got {v.KEY_BN!r}")
    norms = {"MODEL.RESNETS.NORM": cfg.MODEL.RESNETS.NORM, "MODEL.FPN.NORM": cfg.MODEL.FPN.NORM}
    if v.KEY_BN == "shuffle":
        synchronised = [key for key, norm in norms.items() if norm in SYNCHRONISED_NORMS]
        if synchronised:
            raise UserError(
                f"MODEL.VADER.KEY_BN shuffle needs per-process batch norm, but {synchronised[0]} is "
                f"{norms[synchronised[0]]!r}; set {' and '.join(f'{key} BN' for key in synchronised)} "
                "(or MODEL.VADER.KEY_BN sync)"
            )
        per_process = cfg.SOLVER.IMS_PER_BATCH // world_size
        if v.BN_GROUP_SIZE < 1 or per_process % v.BN_GROUP_SIZE != 0:
            raise UserError(
                f"MODEL.VADER.BN_GROUP_SIZE={v.BN_GROUP_SIZE} must divide the {per_process} images each of the "
                f"{world_size} processes gets (SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}); "
                f"e.g. MODEL.VADER.BN_GROUP_SIZE {_largest_divisor_at_most(per_process, v.BN_GROUP_SIZE)}"
            )
    elif world_size > 1:
        unsynchronised = [key for key, norm in norms.items() if norm == "BN"]
        if unsynchronised:
            raise UserError(
                f"MODEL.VADER.KEY_BN sync with {world_size} processes needs synchronised batch norm, but "
                f"{unsynchronised[0]} is 'BN'; set {' and '.join(f'{key} naiveSyncBN' for key in unsynchronised)}"
            )


def _largest_divisor_at_most(number, bound):
    return max(d for d in range(1, max(1, min(number, bound)) + 1) if number % d == 0)


def keys_enqueued_per_step(cfg):
    """Keys every step adds to the queue: one per matched pair (dense) or per image (global), of the
    global batch, twice with MODEL.VADER.SYMMETRIC."""
    v = cfg.MODEL.VADER
    if cfg.MODEL.META_ARCHITECTURE == "DenseCL":
        return cfg.SOLVER.IMS_PER_BATCH  # one global and one pooled dense key per image, each to its queue
    if cfg.MODEL.META_ARCHITECTURE == "MoCo":
        return cfg.SOLVER.IMS_PER_BATCH * (2 if cfg.MODEL.MOCO.SYMMETRIC else 1)
    keys = cfg.SOLVER.IMS_PER_BATCH * v.PAIRS_PER_IMAGE
    return keys * 2 if v.SYMMETRIC else keys


def check_vader_config(cfg, world_size=1):
    """Fail at start-up, with one line naming the key, on values that would break training later."""
    check_solver_config(cfg)
    check_value_ranges(cfg)
    v = cfg.MODEL.VADER
    if v.LOSS not in ("dense", "global"):
        raise UserError(f"MODEL.VADER.LOSS must be 'dense' or 'global', got {v.LOSS!r}")
    if cfg.MODEL.META_ARCHITECTURE == "VADeR" and v.LOSS == "global":
        raise UserError(OLD_MOCO_SPELLING)  # a config not built by vader_d2.cli.build_config
    if cfg.MODEL.META_ARCHITECTURE == "MoCo" and cfg.MODEL.MOCO.TEMPERATURE <= 0:
        raise UserError(f"MODEL.MOCO.TEMPERATURE must be positive, got {cfg.MODEL.MOCO.TEMPERATURE}")
    if v.ENQUEUE not in ("before_loss", "after_loss"):
        raise UserError(f"MODEL.VADER.ENQUEUE must be 'before_loss' or 'after_loss', got {v.ENQUEUE!r}")
    if v.KEY_SAMPLING not in ("bilinear", "nearest"):
        raise UserError(f"MODEL.VADER.KEY_SAMPLING must be 'bilinear' or 'nearest', got {v.KEY_SAMPLING!r}")
    if not 0.0 <= v.MOMENTUM < 1.0:
        raise UserError(f"MODEL.VADER.MOMENTUM must be in [0, 1), got {v.MOMENTUM}")
    if v.TEMPERATURE <= 0:
        raise UserError(f"MODEL.VADER.TEMPERATURE must be positive, got {v.TEMPERATURE}")
    if not cfg.DATASETS.TRAIN:
        raise UserError("DATASETS.TRAIN is empty; name the datasets to pretrain on, e.g. DATASETS.TRAIN \"('imagenet_train',)\"")
    batch = cfg.SOLVER.IMS_PER_BATCH
    if batch % world_size != 0:
        raise UserError(
            f"SOLVER.IMS_PER_BATCH={batch} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    # PixPro has no queue, and normalises each view's batch as the config's norm says (no key shuffle).
    if cfg.MODEL.META_ARCHITECTURE != "PixPro":
        check_batch_norm_config(cfg, world_size)
        check_queue_size(cfg)
        check_queries_have_negatives(cfg)
    views = cfg.INPUT.VIEWS
    if views.CROP_SIZE % OUTPUT_STRIDE != 0:
        raise UserError(f"INPUT.VIEWS.CROP_SIZE={views.CROP_SIZE} must be a multiple of {OUTPUT_STRIDE}")
    method = {"DenseCL": cfg.MODEL.DENSECL, "PixPro": cfg.MODEL.PIXPRO}.get(cfg.MODEL.META_ARCHITECTURE)
    if method is not None:
        # Cells cut by the view's border would be compared by where their centres would lie.
        stride = RESNET_STAGE_STRIDES[method.IN_FEATURE]
        if views.CROP_SIZE % stride != 0:
            raise UserError(
                f"INPUT.VIEWS.CROP_SIZE={views.CROP_SIZE} must be a multiple of {stride}, the stride of "
                f"{method.IN_FEATURE} whose cells {cfg.MODEL.META_ARCHITECTURE} compares"
            )
    cells = (views.CROP_SIZE // OUTPUT_STRIDE) ** 2
    if samples_matched_pairs(cfg):
        if not v.PAIRS_PER_IMAGE <= v.MIN_SHARED_CELLS <= cells:
            raise UserError(
                f"MODEL.VADER.MIN_SHARED_CELLS={v.MIN_SHARED_CELLS} must lie between "
                f"MODEL.VADER.PAIRS_PER_IMAGE={v.PAIRS_PER_IMAGE} and the {cells} cells of a view"
            )
    elif not v.MIN_SHARED_CELLS <= cells:
        # 0, the official recipes' unconstrained crops, is allowed: nothing here needs a match.
        raise UserError(f"MODEL.VADER.MIN_SHARED_CELLS={v.MIN_SHARED_CELLS} must lie between 0 and the {cells} cells of a view")
    lo, hi = views.CROP_SCALE
    if not 0 < lo <= hi <= 1:
        raise UserError(f"INPUT.VIEWS.CROP_SCALE must satisfy 0 < min <= max <= 1, got {tuple(views.CROP_SCALE)}")
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise UserError(f"INPUT.FORMAT must be RGB or BGR for VADeR views, got {cfg.INPUT.FORMAT!r}")


def samples_matched_pairs(cfg):
    """Whether the method draws PAIRS_PER_IMAGE matched cells per image (VADeR's dense loss); the MoCo
    baseline, DenseCL and PixPro find their positives without the views' stride-4 matches."""
    return cfg.MODEL.META_ARCHITECTURE == "VADeR"


def check_queue_size(cfg):
    """The queue is written in whole steps: its length must be a multiple of a step's keys."""
    v = cfg.MODEL.VADER
    keys_per_step = keys_enqueued_per_step(cfg)
    if v.QUEUE_SIZE % keys_per_step != 0 or v.QUEUE_SIZE < keys_per_step:
        method = cfg.MODEL.META_ARCHITECTURE
        per_image = "pairs per image" if method == "VADeR" else "1 key per image"
        symmetric = {"VADeR": v.SYMMETRIC, "MoCo": cfg.MODEL.MOCO.SYMMETRIC}.get(method, False)
        raise UserError(
            f"MODEL.VADER.QUEUE_SIZE={v.QUEUE_SIZE} must be a positive multiple of the keys enqueued per "
            f"step ({keys_per_step} = SOLVER.IMS_PER_BATCH x {per_image}"
            f"{' x 2 (symmetric)' if symmetric else ''}); e.g. {max(1, v.QUEUE_SIZE // keys_per_step) * keys_per_step}"
        )


def check_queries_have_negatives(cfg):
    """
    A query's negatives are the queued keys of *other* images. After a step's keys are enqueued the
    queue holds the keys of its last QUEUE_SIZE / keys-per-step steps, i.e. of that many global batches:
    with one image per global batch and a queue of one step's keys it only ever holds the query's own
    image, every negative is masked, the loss is 0 and nothing is learned. Any larger queue or batch
    gives negatives from the second step on (the first step of a one-image batch has none).
    With ENQUEUE after_loss the queue holds earlier steps' keys only, of other images from the second
    step on, whatever its size.
    """
    v = cfg.MODEL.VADER
    if v.ENQUEUE == "after_loss":
        return
    keys_per_step = keys_enqueued_per_step(cfg)
    images_in_queue = (v.QUEUE_SIZE // keys_per_step) * cfg.SOLVER.IMS_PER_BATCH
    if images_in_queue < 2:
        raise UserError(
            f"with SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} and MODEL.VADER.QUEUE_SIZE={v.QUEUE_SIZE} (the keys "
            "of one step) the queue only ever holds keys of the query's own image, which are masked: no query "
            f"has a negative and nothing is learned; use MODEL.VADER.QUEUE_SIZE {2 * keys_per_step} or more, "
            "or a larger SOLVER.IMS_PER_BATCH"
        )


# ---------------------------------------------------------------------------------------------------
# Value ranges, checked before anything else so that later checks (and training) can rely on them.
# One helper per kind of range: each names the key, the value and what is allowed.


def _require(ok, key, value, allowed):
    if not ok:
        raise UserError(f"{key} must be {allowed}, got {value!r}")


def _at_least(cfg_node, prefix, key, minimum):
    value = cfg_node[key]
    _require(isinstance(value, (int, float)) and value >= minimum, f"{prefix}.{key}", value, f"at least {minimum}")


def _probability(cfg_node, prefix, key):
    value = cfg_node[key]
    _require(0.0 <= value <= 1.0, f"{prefix}.{key}", value, "a probability in [0, 1]")


def _ordered_pair(cfg_node, prefix, key, minimum, strict_minimum):
    value = tuple(cfg_node[key])
    lo_ok = len(value) == 2 and (value[0] > minimum if strict_minimum else value[0] >= minimum)
    _require(
        lo_ok and value[0] <= value[1], f"{prefix}.{key}", value,
        f"two values ({'>' if strict_minimum else '>='} {minimum}) min <= max",
    )


# Detectron2's, and vader_d2/solver.py's WarmupThenCosineLR (PixPro's: the cosine starts after the warm-up).
SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR", "WarmupThenCosineLR")


def check_solver_config(cfg):
    """The solver and data-loader values every training run (pretraining and downstream) relies on."""
    solver = cfg.SOLVER
    lr = solver.BASE_LR
    _require(lr > 0 and lr != float("inf"), "SOLVER.BASE_LR", lr, "a positive, finite learning rate")
    for key in ("IMS_PER_BATCH", "MAX_ITER", "CHECKPOINT_PERIOD"):
        _at_least(solver, "SOLVER", key, 1)
    _at_least(solver, "SOLVER", "WARMUP_ITERS", 0)
    _require(0.0 <= solver.MOMENTUM < 1.0, "SOLVER.MOMENTUM", solver.MOMENTUM, "in [0, 1)")
    _at_least(solver, "SOLVER", "WEIGHT_DECAY", 0)
    _require(0.0 < solver.WARMUP_FACTOR <= 1.0, "SOLVER.WARMUP_FACTOR", solver.WARMUP_FACTOR, "in (0, 1]")
    _require(solver.LR_SCHEDULER_NAME in SCHEDULERS, "SOLVER.LR_SCHEDULER_NAME", solver.LR_SCHEDULER_NAME, f"one of {SCHEDULERS}")
    if solver.LR_SCHEDULER_NAME in ("WarmupCosineLR", "WarmupThenCosineLR"):
        _require(0.0 <= solver.BASE_LR_END <= lr, "SOLVER.BASE_LR_END", solver.BASE_LR_END, f"in [0, SOLVER.BASE_LR={lr}]")
    if solver.LR_SCHEDULER_NAME == "WarmupThenCosineLR":
        _require(
            solver.WARMUP_ITERS < solver.MAX_ITER, "SOLVER.WARMUP_ITERS", solver.WARMUP_ITERS,
            f"below SOLVER.MAX_ITER={solver.MAX_ITER} with WarmupThenCosineLR (its cosine follows the warm-up)",
        )
    else:
        _require(solver.GAMMA > 0, "SOLVER.GAMMA", solver.GAMMA, "positive")
    _require(solver.OPTIMIZER in ("SGD", "LARS"), "SOLVER.OPTIMIZER", solver.OPTIMIZER, "'SGD' or 'LARS'")
    check_amp_config(cfg)
    keep = solver.CHECKPOINT_KEEP
    _require(type(keep) is int and keep >= 0, "SOLVER.CHECKPOINT_KEEP", keep, "a whole number of checkpoints >= 0 (0 keeps them all)")
    from .preemption import parse_signal_names  # it imports cli, which imports this module

    parse_signal_names(solver.PREEMPTION_SIGNALS)
    trust = solver.LARS.TRUST_COEFFICIENT
    _require(0 < trust <= 1, "SOLVER.LARS.TRUST_COEFFICIENT", trust, "in (0, 1]")
    _at_least(cfg.DATALOADER, "DATALOADER", "NUM_WORKERS", 0)
    _at_least(cfg.TEST, "TEST", "EVAL_PERIOD", 0)


def check_value_ranges(cfg):
    """Every MODEL.VADER.* and INPUT.VIEWS.* value within the range the model and the views can use."""
    v = cfg.MODEL.VADER
    for key in ("EMBED_DIM", "QUEUE_SIZE", "PAIRS_PER_IMAGE", "METRICS_PERIOD"):
        _at_least(v, "MODEL.VADER", key, 1)
    _at_least(v, "MODEL.VADER", "MIN_SHARED_CELLS", 1 if samples_matched_pairs(cfg) else 0)
    _at_least(v.HEAD, "MODEL.VADER.HEAD", "CONV_DIM", 1)
    _at_least(v.HEAD, "MODEL.VADER.HEAD", "NUM_CONVS", 0)
    _at_least(cfg.MODEL.MOCO, "MODEL.MOCO", "HIDDEN_DIM", 1)
    if v.LOSS == "dense":
        levels = ("p2", "p3", "p4", "p5", "p6")
        features = list(v.HEAD.IN_FEATURES)
        _require(
            "p2" in features and all(f in levels for f in features), "MODEL.VADER.HEAD.IN_FEATURES", features,
            f"FPN outputs among {list(levels)} including p2 (the dense head predicts at stride {OUTPUT_STRIDE})",
        )
        _check_norm(v.HEAD.NORM, v.HEAD.CONV_DIM)
    stages = tuple(RESNET_STAGE_STRIDES)
    _require(cfg.MODEL.MOCO.IN_FEATURE in stages, "MODEL.MOCO.IN_FEATURE", cfg.MODEL.MOCO.IN_FEATURE, f"one of {stages}")

    check_densecl_and_pixpro_ranges(cfg)

    views = cfg.INPUT.VIEWS
    p = "INPUT.VIEWS"
    _at_least(views, p, "CROP_SIZE", OUTPUT_STRIDE)
    _require(
        views.MAX_SOURCE_SIZE >= views.CROP_SIZE, f"{p}.MAX_SOURCE_SIZE", views.MAX_SOURCE_SIZE,
        f"at least INPUT.VIEWS.CROP_SIZE={views.CROP_SIZE} (sources are downscaled to it before views are cut)",
    )
    # Attempts at a view pair before the fallback; the fallback reuses the last attempt's geometry.
    _at_least(views, p, "MAX_REDRAWS", 1)
    _ordered_pair(views, p, "CROP_SCALE", 0, strict_minimum=True)
    _ordered_pair(views, p, "CROP_RATIO", 0, strict_minimum=True)
    _ordered_pair(views, p, "BLUR_SIGMA", 0, strict_minimum=False)
    for key in ("FLIP_PROB", "AFFINE_PROB", "HOMOGRAPHY_PROB", "COLOR_JITTER_PROB", "GRAYSCALE_PROB", "BLUR_PROB", "NOISE_PROB"):
        _probability(views, p, key)
    for key, allowed_empty in (("BLUR_PROB_PER_VIEW", True), ("SOLARIZE_PROB", False)):
        value = tuple(views[key])
        _require(
            (allowed_empty and not value) or (len(value) == 2 and all(0.0 <= x <= 1.0 for x in value)), f"{p}.{key}", value,
            f"{'() or ' if allowed_empty else ''}two probabilities in [0, 1] (view 1, view 2)",
        )
    _require(0 <= views.AFFINE_ROTATION <= 180, f"{p}.AFFINE_ROTATION", views.AFFINE_ROTATION, "in [0, 180] degrees")
    _require(0 <= views.AFFINE_SHEAR < 90, f"{p}.AFFINE_SHEAR", views.AFFINE_SHEAR, "in [0, 90) degrees")
    _require(0 <= views.HOMOGRAPHY_STRENGTH < 0.25, f"{p}.HOMOGRAPHY_STRENGTH", views.HOMOGRAPHY_STRENGTH, "in [0, 0.25)")
    _at_least(views, p, "NOISE_STD", 0)
    jitter = tuple(views.COLOR_JITTER)
    _require(
        len(jitter) == 4 and min(jitter[:3]) >= 0 and 0 <= jitter[3] <= 0.5, f"{p}.COLOR_JITTER", jitter,
        "(brightness, contrast, saturation, hue), the first three >= 0, hue in [0, 0.5]",
    )


def check_densecl_and_pixpro_ranges(cfg):
    """MODEL.DENSECL.* and MODEL.PIXPRO.* within the ranges their models can use."""
    stages = tuple(RESNET_STAGE_STRIDES)
    d, p = cfg.MODEL.DENSECL, cfg.MODEL.PIXPRO
    _require(d.IN_FEATURE in stages, "MODEL.DENSECL.IN_FEATURE", d.IN_FEATURE, f"one of {stages}")
    _at_least(d, "MODEL.DENSECL", "HIDDEN_DIM", 1)
    _require(d.TEMPERATURE > 0, "MODEL.DENSECL.TEMPERATURE", d.TEMPERATURE, "positive")
    _probability(d, "MODEL.DENSECL", "LOSS_WEIGHT")
    _require(d.POSITIVE in ("feature", "geometric"), "MODEL.DENSECL.POSITIVE", d.POSITIVE, "'feature' or 'geometric'")
    _require(p.IN_FEATURE in stages, "MODEL.PIXPRO.IN_FEATURE", p.IN_FEATURE, f"one of {stages}")
    for key in ("HIDDEN_DIM", "EMBED_DIM"):
        _at_least(p, "MODEL.PIXPRO", key, 1)
    # Below 1 the gradient of s^gamma is infinite where a similarity is clamped to 0.
    _require(p.PROPAGATION_GAMMA >= 1, "MODEL.PIXPRO.PROPAGATION_GAMMA", p.PROPAGATION_GAMMA, "at least 1")
    _require(p.TRANSFORM_LAYERS in (0, 1, 2), "MODEL.PIXPRO.TRANSFORM_LAYERS", p.TRANSFORM_LAYERS, "0, 1 or 2")
    _require(p.POSITIVE_RADIUS > 0, "MODEL.PIXPRO.POSITIVE_RADIUS", p.POSITIVE_RADIUS, "positive (in feature-bin diagonals)")
    _require(0.0 <= p.MOMENTUM <= 1.0, "MODEL.PIXPRO.MOMENTUM", p.MOMENTUM, "in [0, 1]")
    if cfg.MODEL.META_ARCHITECTURE == "PixPro":
        _check_norm(p.NORM, p.HIDDEN_DIM, "MODEL.PIXPRO.NORM", "MODEL.PIXPRO.HIDDEN_DIM")


def _check_norm(norm, channels, norm_key="MODEL.VADER.HEAD.NORM", channels_key="MODEL.VADER.HEAD.CONV_DIM"):
    from detectron2.layers import get_norm

    try:
        get_norm(norm, channels)
    except (KeyError, ValueError) as e:
        raise UserError(
            f"{norm_key}={norm!r} cannot normalise {channels_key}={channels} channels "
            f"({type(e).__name__}: {e}); use 'GN' with a multiple of 32 channels, 'BN' or ''"
        ) from None
