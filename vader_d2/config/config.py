"""Config keys of VADeR pretraining: ``add_vader_config(cfg)`` must run before ``merge_from_file``."""

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY

from .checks import at_least, ordered_pair, parse_signal_names, probability, require
from ..errors import UserError


# The grid VADeR's dense embeddings live on: one cell per OUTPUT_STRIDE x OUTPUT_STRIDE pixels of the
# input, the stride of p2, the finest level of Detectron2's FPN, where the dense head predicts. The views'
# correspondences, the config checks, the dense evaluation and the model's dense head all take it from here.
OUTPUT_STRIDE = 4


def configurable_methods():
    """
    Every meta-architecture registered with Detectron2 that declares its own config: the pretraining
    methods of vader_d2/modeling (``MomentumMethod``: ``add_config``, ``check_ranges``, ``check_config``),
    in the order they were registered. Read from Detectron2's registry, so that this module needs no
    import of the models (they import the config's checks); importing vader_d2 registers them.
    """
    return [method for _, method in META_ARCH_REGISTRY if isinstance(method, type) and callable(getattr(method, "add_config", None))]


def configurable_method(cfg):
    """The class of ``configurable_methods`` that ``cfg`` builds, or None (a stock Detectron2 model)."""
    name = cfg.MODEL.META_ARCHITECTURE
    method = META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None
    return method if method in configurable_methods() else None


def add_vader_config(cfg):
    """
    Add every section vader_d2 reads to a Detectron2 config: the views (``INPUT.VIEWS``), the keys the
    momentum methods share (``MODEL.MOMENTUM_CONTRAST``), each registered method's own section (its class's
    ``add_config``: ``MODEL.VADER``, ``MODEL.MOCO``, ``MODEL.DENSECL``, ``MODEL.PIXPRO``), the optimizer's
    and the downstream frozen-backbone protocol's (``MODEL.FROZEN_BACKBONE``).
    """
    add_frozen_backbone_config(cfg)
    add_momentum_config(cfg)
    for method in configurable_methods():
        method.add_config(cfg)
    add_solver_config(cfg)
    add_views_config(cfg)
    for old in MOVED_KEYS:
        # The old name, None unless a config or a command line uses it (``vader_d2.cli.build_config``
        # moves it to the new one).
        _set(cfg, old, None)


# Keys that moved, old name: new name. Configs and command lines that use an old name keep working.
MOVED_KEYS = {
    "MODEL.VADER.MIN_SHARED_CELLS": "INPUT.VIEWS.MIN_SHARED_CELLS",
    **{
        f"MODEL.VADER.{key}": f"MODEL.MOMENTUM_CONTRAST.{key}"
        for key in ("EMBED_DIM", "QUEUE_SIZE", "ENQUEUE", "MOMENTUM", "KEY_BN", "BN_GROUP_SIZE", "METRICS_PERIOD", "CHANNELS_LAST")
    },
}


def _node_and_key(cfg, full_key):
    *path, key = full_key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    return node, key


def config_value(cfg, full_key):
    """The value of the dotted key ``full_key`` ("MODEL.VADER.TEMPERATURE") of ``cfg``."""
    return _value(cfg, full_key)


def set_config_value(cfg, full_key, value):
    """Set the dotted key ``full_key`` of ``cfg`` to ``value``."""
    _set(cfg, full_key, value)


def _value(cfg, full_key):
    node, key = _node_and_key(cfg, full_key)
    return node[key]


def _set(cfg, full_key, value):
    node, key = _node_and_key(cfg, full_key)
    node[key] = value


def moved_keys_of_a_file(cfg, leaf):
    """
    The overrides (KEY VALUE ...) that give the new names of the keys a config file gave under their old
    names (MOVED_KEYS), and clear the old names. ``cfg`` is the file merged with its ``_BASE_`` files,
    ``leaf`` what the file itself says (a dict): an old name there wins over a new name from a base
    (an older config on top of a shipped one); both names from the files below it say two things.
    """
    defaults = get_cfg()
    add_vader_config(defaults)
    overrides = []
    for old, new in MOVED_KEYS.items():
        value = _value(cfg, old)
        if value is None:
            continue
        if _gives(leaf, old):
            both = _gives(leaf, new)
        else:  # from a base file: the merged config cannot tell which base gave the new name
            both = _value(cfg, new) not in (_value(defaults, new), value)
        if both:
            raise UserError(f"the config gives both {new} and its old name {old}; give {new} only")
        overrides += [new, value]
        _set(cfg, old, None)
    return overrides


def _gives(tree, full_key):
    """Whether the nested dict ``tree`` (a yaml file) has ``full_key``."""
    for part in full_key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def with_moved_keys_renamed(opts):
    """``KEY VALUE ...`` overrides with the old names of moved keys (MOVED_KEYS) replaced by the new ones."""
    return [MOVED_KEYS.get(item, item) if i % 2 == 0 else item for i, item in enumerate(opts)]


def add_momentum_config(cfg):
    """
    MODEL.MOMENTUM_CONTRAST: the keys the momentum methods share (vader_d2/modeling/momentum.py).
    METRICS_PERIOD and CHANNELS_LAST apply to every method; the others to those that contrast against
    queued keys (VADeR, the MoCo baseline, DenseCL).
    """
    cfg.MODEL.MOMENTUM_CONTRAST = CN()
    # The width of the keys queued (each method's embedding: VADeR's dense head, MoCo's and DenseCL's heads).
    cfg.MODEL.MOMENTUM_CONTRAST.EMBED_DIM = 128
    # Number of key embeddings kept as negatives (pixel keys for VADeR, image keys for MoCo, the length of
    # each of DenseCL's two queues).
    cfg.MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE = 65536
    # When a step's keys enter the queue (VADeR, the MoCo baseline, both DenseCL queues): "before_loss",
    # this project's, so that the batch's other images are negatives too (the freshest keys there are,
    # and negatives from the first step on); "after_loss", MoCo's and DenseCL's official order, so that
    # negatives are the keys of earlier steps only. Keys of the query's own image are masked either way.
    cfg.MODEL.MOMENTUM_CONTRAST.ENQUEUE = "before_loss"
    cfg.MODEL.MOMENTUM_CONTRAST.MOMENTUM = 0.999
    # Batch norm of the two encoders (vader_d2/modeling/shuffle_bn.py). "shuffle": MoCo's shuffle-BN;
    # each process normalises over groups of BN_GROUP_SIZE of its images (MODEL.RESNETS.NORM and
    # MODEL.FPN.NORM must be the per-process "BN"), the query encoder over contiguous groups, the key
    # encoder over groups of a random permutation of the global batch, so that a key is never normalised
    # with its query's statistics. "sync": both encoders on the whole batch with the configured norm
    # (naiveSyncBN: statistics of the global batch), which lets the positive key be told apart by this
    # step's statistics; kept for comparison.
    cfg.MODEL.MOMENTUM_CONTRAST.KEY_BN = "shuffle"
    # Images per batch-norm group with KEY_BN "shuffle" (MoCo: 32, its per-GPU batch). It must divide
    # the per-process batch; one process then emulates IMS_PER_BATCH / BN_GROUP_SIZE GPUs.
    cfg.MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE = 32
    # Similarity / accuracy / queue statistics are read off the device every this many iterations.
    cfg.MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD = 20
    # Keep both encoders' weights and inputs in channels_last memory order: faster convolutions on GPUs
    # with tensor cores (with SOLVER.AMP.ENABLED); on CPUs it depends on the oneDNN kernels (benchmark it).
    cfg.MODEL.MOMENTUM_CONTRAST.CHANNELS_LAST = False


def add_solver_config(cfg):
    """The optimizer, checkpoint and precision keys vader_d2 adds to Detectron2's SOLVER, for every model."""
    # "SGD" (Detectron2's) or "LARS" (vader_d2/engine/solver.py; PixPro's optimizer), for every method. LARS
    # applies SOLVER.WEIGHT_DECAY to weight tensors only and leaves biases and norms undecayed and
    # unadapted, as PixPro's recipe; SOLVER.WEIGHT_DECAY_NORM, WEIGHT_DECAY_BIAS and BIAS_LR_FACTOR are SGD's.
    cfg.SOLVER.OPTIMIZER = "SGD"
    # The run's length in passes over DATASETS.TRAIN (0: SOLVER.MAX_ITER as written). With EPOCHS > 0,
    # tools/train_net.py sets MAX_ITER to EPOCHS x images / IMS_PER_BATCH and stretches WARMUP_ITERS and
    # STEPS with it, so that the config's MAX_ITER, WARMUP_ITERS and STEPS give the schedule's shape and
    # EPOCHS its length for your dataset (vader_d2/engine/solver.py: rescale_schedule; docs/pretraining.md).
    cfg.SOLVER.EPOCHS = 0
    # Checkpoint retention: after each checkpoint, rank 0 keeps the newest CHECKPOINT_KEEP periodic
    # checkpoints (model_<iteration>.pth) and deletes older ones; model_final.pth and the file
    # last_checkpoint names always stay (vader_d2/engine/output_dir.py: prune_checkpoints). 0 keeps them all.
    cfg.SOLVER.CHECKPOINT_KEEP = 0
    # Signals that pre-empt a run (vader_d2/engine/preemption.py): every process finishes its iteration, rank 0
    # writes its checkpoint, all exit with status 75; [] leaves the signals' default action (death).
    cfg.SOLVER.PREEMPTION_SIGNALS = ["SIGTERM", "SIGUSR1"]
    # Mixed precision with SOLVER.AMP.ENABLED (vader_d2/engine/mixed_precision.py): "float16" (Detectron2's
    # AMPTrainer with a gradient scaler; CUDA only), "bfloat16" (no scaler: float32's exponent range), or
    # "auto": float16 on CUDA, bfloat16 on the CPU. Losses, queues and the momentum update stay float32.
    cfg.SOLVER.AMP.PRECISION = "auto"
    cfg.SOLVER.LARS = CN()
    # eta of LARS's trust ratio eta ||w|| / ||g + wd w|| (PixPro: 0.001).
    cfg.SOLVER.LARS.TRUST_COEFFICIENT = 0.001


def add_views_config(cfg):
    """The two views of every pretraining method (vader_d2/data/view_mapper.py, transforms.py)."""
    cfg.INPUT.VIEWS = CN()
    cfg.INPUT.VIEWS.CROP_SIZE = 224
    # The two views must share at least this many stride-4 cells (VADeR's paper: 32), else they are
    # re-drawn. 0 (the MoCo baseline, DenseCL, PixPro only) draws them unconstrained, as those methods' code.
    cfg.INPUT.VIEWS.MIN_SHARED_CELLS = 32
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
    # Attempts at a view pair sharing MIN_SHARED_CELLS before falling back to identical
    # geometry for both views (logged).
    cfg.INPUT.VIEWS.MAX_REDRAWS = 20
    # Sources larger than this (longest side, pixels) are downscaled once at decode time.
    cfg.INPUT.VIEWS.MAX_SOURCE_SIZE = 1024


def add_frozen_backbone_config(cfg):
    """Downstream keys of the frozen-backbone protocol (vader_d2/engine/frozen_backbone.py)."""
    # True: the ResNet and the FPN of a downstream model keep their loaded weights and batch-norm
    # statistics (frozen batch norm) and only the task head trains. Detectron2's
    # MODEL.BACKBONE.FREEZE_AT cannot freeze the FPN.
    cfg.MODEL.FROZEN_BACKBONE = False


def resolve_old_spellings(cfg):
    """
    Translate, in place, what configs written in a method's older spelling say, as each registered method
    declares (its ``resolve_old_spellings``: MoCo's, configs written before MoCo was a meta-architecture of
    its own). Returns ``cfg``.
    """
    defaults = get_cfg()
    add_vader_config(defaults)
    for method in configurable_methods():
        method.resolve_old_spellings(cfg, defaults)
    return cfg


def check_vader_config(cfg, world_size=1):
    """
    Fail at start-up, with one line naming the key, on values of a pretraining config that would break
    training later: the value ranges first (the method's own, then the views'), so that the checks after
    them can rely on them, then what the values must satisfy together (the method's ``check_config``).
    """
    check_solver_config(cfg)
    for old, new in MOVED_KEYS.items():
        if _value(cfg, old) is not None:  # a config not built by vader_d2.cli.build_config, which moves it
            raise UserError(f"{old} is now {new}; set that")
    method = configurable_method(cfg)
    method.check_ranges(cfg)
    check_view_ranges(cfg)
    if not cfg.DATASETS.TRAIN:
        raise UserError("DATASETS.TRAIN is empty; name the datasets to pretrain on, e.g. DATASETS.TRAIN \"('imagenet_train',)\"")
    batch = cfg.SOLVER.IMS_PER_BATCH
    if batch % world_size != 0:
        raise UserError(
            f"SOLVER.IMS_PER_BATCH={batch} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    views = cfg.INPUT.VIEWS
    if views.CROP_SIZE % OUTPUT_STRIDE != 0:
        raise UserError(f"INPUT.VIEWS.CROP_SIZE={views.CROP_SIZE} must be a multiple of {OUTPUT_STRIDE}")
    method.check_config(cfg, world_size)
    cells = (views.CROP_SIZE // OUTPUT_STRIDE) ** 2
    if not views.MIN_SHARED_CELLS <= cells:
        # 0, the official recipes' unconstrained crops, is allowed where the method needs no match.
        raise UserError(f"INPUT.VIEWS.MIN_SHARED_CELLS={views.MIN_SHARED_CELLS} must lie between 0 and the {cells} cells of a view")
    lo, hi = views.CROP_SCALE
    if not 0 < lo <= hi <= 1:
        raise UserError(f"INPUT.VIEWS.CROP_SCALE must satisfy 0 < min <= max <= 1, got {tuple(views.CROP_SCALE)}")
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise UserError(f"INPUT.FORMAT must be RGB or BGR for VADeR views, got {cfg.INPUT.FORMAT!r}")


# SOLVER.AMP.PRECISION's names (vader_d2/engine/mixed_precision.py).
AMP_PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}



def check_amp_config(cfg):
    """SOLVER.AMP.PRECISION is a known name, and one the configured device trains with."""
    precision = cfg.SOLVER.AMP.PRECISION
    if precision not in ("auto", *AMP_PRECISIONS):
        raise UserError(f"SOLVER.AMP.PRECISION must be 'auto', 'float16' or 'bfloat16', got {precision!r}")
    if cfg.SOLVER.AMP.ENABLED and precision == "float16" and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise UserError(
            f"SOLVER.AMP.PRECISION float16 needs a CUDA device (its gradient scaler; MODEL.DEVICE is "
            f"{cfg.MODEL.DEVICE!r}); on the CPU use bfloat16 or auto"
        )


# Detectron2's, and vader_d2/engine/solver.py's WarmupThenCosineLR (PixPro's: the cosine starts after the warm-up).
SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR", "WarmupThenCosineLR")


def check_solver_config(cfg):
    """The solver and data-loader values every training run (pretraining and downstream) relies on."""
    solver = cfg.SOLVER
    lr = solver.BASE_LR
    require(lr > 0 and lr != float("inf"), "SOLVER.BASE_LR", lr, "a positive, finite learning rate")
    for key in ("IMS_PER_BATCH", "MAX_ITER", "CHECKPOINT_PERIOD"):
        at_least(solver, "SOLVER", key, 1)
    at_least(solver, "SOLVER", "WARMUP_ITERS", 0)
    require(type(solver.EPOCHS) is int and solver.EPOCHS >= 0, "SOLVER.EPOCHS", solver.EPOCHS, "a whole number of passes >= 0 (0: SOLVER.MAX_ITER as written)")
    require(0.0 <= solver.MOMENTUM < 1.0, "SOLVER.MOMENTUM", solver.MOMENTUM, "in [0, 1)")
    at_least(solver, "SOLVER", "WEIGHT_DECAY", 0)
    require(0.0 < solver.WARMUP_FACTOR <= 1.0, "SOLVER.WARMUP_FACTOR", solver.WARMUP_FACTOR, "in (0, 1]")
    require(solver.LR_SCHEDULER_NAME in SCHEDULERS, "SOLVER.LR_SCHEDULER_NAME", solver.LR_SCHEDULER_NAME, f"one of {SCHEDULERS}")
    if solver.LR_SCHEDULER_NAME in ("WarmupCosineLR", "WarmupThenCosineLR"):
        require(0.0 <= solver.BASE_LR_END <= lr, "SOLVER.BASE_LR_END", solver.BASE_LR_END, f"in [0, SOLVER.BASE_LR={lr}]")
    if solver.LR_SCHEDULER_NAME == "WarmupThenCosineLR":
        require(
            solver.WARMUP_ITERS < solver.MAX_ITER, "SOLVER.WARMUP_ITERS", solver.WARMUP_ITERS,
            f"below SOLVER.MAX_ITER={solver.MAX_ITER} with WarmupThenCosineLR (its cosine follows the warm-up)",
        )
    else:
        require(solver.GAMMA > 0, "SOLVER.GAMMA", solver.GAMMA, "positive")
    require(solver.OPTIMIZER in ("SGD", "LARS"), "SOLVER.OPTIMIZER", solver.OPTIMIZER, "'SGD' or 'LARS'")
    check_amp_config(cfg)
    keep = solver.CHECKPOINT_KEEP
    require(type(keep) is int and keep >= 0, "SOLVER.CHECKPOINT_KEEP", keep, "a whole number of checkpoints >= 0 (0 keeps them all)")
    parse_signal_names(solver.PREEMPTION_SIGNALS)
    trust = solver.LARS.TRUST_COEFFICIENT
    require(0 < trust <= 1, "SOLVER.LARS.TRUST_COEFFICIENT", trust, "in (0, 1]")
    at_least(cfg.DATALOADER, "DATALOADER", "NUM_WORKERS", 0)
    at_least(cfg.TEST, "TEST", "EVAL_PERIOD", 0)


def check_view_ranges(cfg):
    """Every INPUT.VIEWS.* value within the range the views can use."""
    views = cfg.INPUT.VIEWS
    p = "INPUT.VIEWS"
    at_least(views, p, "MIN_SHARED_CELLS", 0)
    at_least(views, p, "CROP_SIZE", OUTPUT_STRIDE)
    require(
        views.MAX_SOURCE_SIZE >= views.CROP_SIZE, f"{p}.MAX_SOURCE_SIZE", views.MAX_SOURCE_SIZE,
        f"at least INPUT.VIEWS.CROP_SIZE={views.CROP_SIZE} (sources are downscaled to it before views are cut)",
    )
    # Attempts at a view pair before the fallback; the fallback reuses the last attempt's geometry.
    at_least(views, p, "MAX_REDRAWS", 1)
    ordered_pair(views, p, "CROP_SCALE", 0, strict_minimum=True)
    ordered_pair(views, p, "CROP_RATIO", 0, strict_minimum=True)
    ordered_pair(views, p, "BLUR_SIGMA", 0, strict_minimum=False)
    for key in ("FLIP_PROB", "AFFINE_PROB", "HOMOGRAPHY_PROB", "COLOR_JITTER_PROB", "GRAYSCALE_PROB", "BLUR_PROB", "NOISE_PROB"):
        probability(views, p, key)
    for key, allowed_empty in (("BLUR_PROB_PER_VIEW", True), ("SOLARIZE_PROB", False)):
        value = tuple(views[key])
        require(
            (allowed_empty and not value) or (len(value) == 2 and all(0.0 <= x <= 1.0 for x in value)), f"{p}.{key}", value,
            f"{'() or ' if allowed_empty else ''}two probabilities in [0, 1] (view 1, view 2)",
        )
    require(0 <= views.AFFINE_ROTATION <= 180, f"{p}.AFFINE_ROTATION", views.AFFINE_ROTATION, "in [0, 180] degrees")
    require(0 <= views.AFFINE_SHEAR < 90, f"{p}.AFFINE_SHEAR", views.AFFINE_SHEAR, "in [0, 90) degrees")
    require(0 <= views.HOMOGRAPHY_STRENGTH < 0.25, f"{p}.HOMOGRAPHY_STRENGTH", views.HOMOGRAPHY_STRENGTH, "in [0, 0.25)")
    at_least(views, p, "NOISE_STD", 0)
    jitter = tuple(views.COLOR_JITTER)
    require(
        len(jitter) == 4 and min(jitter[:3]) >= 0 and 0 <= jitter[3] <= 0.5, f"{p}.COLOR_JITTER", jitter,
        "(brightness, contrast, saturation, hue), the first three >= 0, hue in [0, 0.5]",
    )
