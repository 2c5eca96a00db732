"""Config keys of VADeR pretraining: ``add_vader_config(cfg)`` must run before ``merge_from_file``."""

from detectron2.config import CfgNode as CN

from .dense_grid import OUTPUT_STRIDE
from .errors import UserError


def add_vader_config(cfg):
    """Add the ``MODEL.VADER`` section and the ``INPUT.VIEWS`` section to a Detectron2 config."""
    cfg.MODEL.VADER = CN()
    # "dense": VADeR's pixel-level InfoNCE. "global": the MoCo v2 baseline (pooled res5 + MLP head,
    # image-level InfoNCE, image-level queue) with the same backbone, views and trainer.
    cfg.MODEL.VADER.LOSS = "dense"
    cfg.MODEL.VADER.EMBED_DIM = 128
    cfg.MODEL.VADER.TEMPERATURE = 0.07
    # Number of key embeddings (pixels for "dense", images for "global") kept as negatives.
    cfg.MODEL.VADER.QUEUE_SIZE = 65536
    cfg.MODEL.VADER.MOMENTUM = 0.999
    # Matched pixel pairs per image the loss is applied to (paper: 32).
    cfg.MODEL.VADER.PAIRS_PER_IMAGE = 32
    # The two views must share at least this many output cells (paper: 32), else they are re-drawn.
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

    cfg.MODEL.VADER.GLOBAL_HEAD = CN()
    cfg.MODEL.VADER.GLOBAL_HEAD.IN_FEATURE = "res5"
    cfg.MODEL.VADER.GLOBAL_HEAD.HIDDEN_DIM = 2048

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
    # Additive Gaussian pixel noise, std as a fraction of the 0..255 range.
    cfg.INPUT.VIEWS.NOISE_STD = 0.03
    cfg.INPUT.VIEWS.NOISE_PROB = 0.2
    # Attempts at a view pair sharing MODEL.VADER.MIN_SHARED_CELLS before falling back to identical
    # geometry for both views (logged).
    cfg.INPUT.VIEWS.MAX_REDRAWS = 20
    # Sources larger than this (longest side, pixels) are downscaled once at decode time.
    cfg.INPUT.VIEWS.MAX_SOURCE_SIZE = 1024



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


def check_vader_config(cfg, world_size=1):
    """Fail at start-up, with one line naming the key, on values that would break training later."""
    v = cfg.MODEL.VADER
    if v.LOSS not in ("dense", "global"):
        raise UserError(f"MODEL.VADER.LOSS must be 'dense' or 'global', got {v.LOSS!r}")
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
    check_batch_norm_config(cfg, world_size)
    keys_per_step = batch * (v.PAIRS_PER_IMAGE if v.LOSS == "dense" else 1)
    if v.SYMMETRIC:
        keys_per_step *= 2
    if v.QUEUE_SIZE % keys_per_step != 0 or v.QUEUE_SIZE < keys_per_step:
        raise UserError(
            f"MODEL.VADER.QUEUE_SIZE={v.QUEUE_SIZE} must be a positive multiple of the keys enqueued per "
            f"step ({keys_per_step} = SOLVER.IMS_PER_BATCH x pairs per image"
            f"{' x 2 (symmetric)' if v.SYMMETRIC else ''}); e.g. {max(1, v.QUEUE_SIZE // keys_per_step) * keys_per_step}"
        )
    views = cfg.INPUT.VIEWS
    if views.CROP_SIZE % OUTPUT_STRIDE != 0:
        raise UserError(f"INPUT.VIEWS.CROP_SIZE={views.CROP_SIZE} must be a multiple of {OUTPUT_STRIDE}")
    cells = (views.CROP_SIZE // OUTPUT_STRIDE) ** 2
    if not v.PAIRS_PER_IMAGE <= v.MIN_SHARED_CELLS <= cells:
        raise UserError(
            f"MODEL.VADER.MIN_SHARED_CELLS={v.MIN_SHARED_CELLS} must lie between "
            f"MODEL.VADER.PAIRS_PER_IMAGE={v.PAIRS_PER_IMAGE} and the {cells} cells of a view"
        )
    lo, hi = views.CROP_SCALE
    if not 0 < lo <= hi <= 1:
        raise UserError(f"INPUT.VIEWS.CROP_SCALE must satisfy 0 < min <= max <= 1, got {tuple(views.CROP_SCALE)}")
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise UserError(f"INPUT.FORMAT must be RGB or BGR for VADeR views, got {cfg.INPUT.FORMAT!r}")
