"""
What every momentum method here (VADeR, the MoCo baseline, DenseCL, PixPro) shares, as base classes.

``MomentumMethod``, every method:

* the query (online) encoder, trained by gradient descent, and the momentum (key) encoder: a frozen
  copy, reset to the query encoder at the start of a run and moved towards it after every step,
  theta_k <- m theta_k + (1 - m) theta_q;
* the views of a batch: stacked as uint8 on the device, normalised there;
* the count of unreadable files the loaders skipped, kept across a resume and logged.

``MomentumContrast``, the methods that contrast against queued keys (VADeR, the MoCo baseline, DenseCL):

* the momentum of ``MODEL.MOMENTUM_CONTRAST.MOMENTUM``;
* key queues: ring buffers of keys, each with the id of the image it came from (-1: empty slot), so that
  a loss can mask out the query's own image and the slots not yet filled; a step's keys enter them
  before or after its loss (``MODEL.MOMENTUM_CONTRAST.ENQUEUE``);
* batch-norm groups (``MODEL.MOMENTUM_CONTRAST.KEY_BN``): the query encoder on contiguous groups, the key encoder on
  a random permutation of the global batch (``shuffle_bn.py`` holds the mechanics).

``ResNetStageEncoder``, the encoders that read one stage of the ResNet (the MoCo baseline, DenseCL,
PixPro): the FPN of Detectron2's ResNet-FPN backbone takes no part in their computation and stays frozen.

The rest of the package never asks for a method by name: the trainer, the config checks, the exporter and
the evaluation tools find the class a config builds (``pretraining_method``) and read what it declares:
its queues, the backbone parts it trains and exports, its dense feature head, the metrics it logs, how
its checkpoints are recognised, and its config checks (``check_ranges``, ``check_config``).

A method's parts are attributes of the method itself (``query_encoder``, ``key_encoder``, ``queue``, ...),
not of a sub-module: they stay at the top level of its state dict, whose names checkpoints, the exporter
and the resume checks read.
"""

import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import ImageList
from detectron2.utils import comm

from ..config.checks import at_least, require
from ..errors import UserError
from .losses import full_precision
from .shuffle_bn import concat_all_gather, draw_permutation, encode_shuffled, forward_in_groups

__all__ = [
    "MomentumMethod",
    "MomentumContrast",
    "ResNetStageEncoder",
    "pretraining_methods",
    "pretraining_method",
    "check_stage_name",
    "check_whole_stage_cells",
    "momentum_update_",
    "cells_of_each_image",
    "SKIPPED_IMAGES",
    "POSITIVE_SIMILARITY",
    "NEGATIVE_SIMILARITY",
    "TOP1_ACCURACY",
    "QUEUE_FILL",
    "QUERIES_WITHOUT_NEGATIVE",
    "SIMILARITY_STATS",
    "QUEUE_STATS",
]

# The scalars the base classes log to Detectron2's event storage (metrics.json, TensorBoard): every
# method the skip count, the queue-based ones (``MomentumContrast.queue_metrics``) their queue's
# statistics. A method's own scalars are named in its module; each lists all it logs in ``metric_names``.
# Mean cosine similarity of a query to its positive key, and to the usable negatives of the queue.
POSITIVE_SIMILARITY = "vader_positive_similarity"
NEGATIVE_SIMILARITY = "vader_negative_similarity"
# Fraction of queries whose positive beats every usable negative.
TOP1_ACCURACY = "vader_top1_accuracy"
QUEUE_FILL = "vader_queue_fill"
# Unreadable files skipped by the loaders of every process since the run began.
SKIPPED_IMAGES = "vader_skipped_images"
# Fraction of queries none of whose negatives is usable (all from the query's own image, or empty
# slots): their loss is 0 and they learn nothing. A share that stays high means the data cannot teach.
QUERIES_WITHOUT_NEGATIVE = "vader_queries_without_negative"

# How well the queries tell their positive from the negatives: what to look at when training diverges.
SIMILARITY_STATS = (POSITIVE_SIMILARITY, NEGATIVE_SIMILARITY, TOP1_ACCURACY)
# What a method that contrasts against one queue (VADeR, the MoCo baseline) logs of it.
QUEUE_STATS = (*SIMILARITY_STATS, QUERIES_WITHOUT_NEGATIVE, QUEUE_FILL)


@torch.no_grad()
def momentum_update_(target: nn.Module, source: nn.Module, momentum: float):
    """theta_t <- m theta_t + (1 - m) theta_s, as theta_t + (1 - m)(theta_s - theta_t): one pass, all at once."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), 1.0 - momentum)


def cells_of_each_image(maps, image_sizes, stride):
    """[{"embedding": (D, ceil(H / stride), ceil(W / stride))}]: each image's cells of a padded batch's (B, D, h, w) maps."""
    return [{"embedding": m[:, : -(-h // stride), : -(-w // stride)]} for m, (h, w) in zip(maps, image_sizes)]


def pretraining_methods():
    """Every registered meta-architecture that is a ``MomentumMethod``, in the order they were registered."""
    return [method for _, method in META_ARCH_REGISTRY if isinstance(method, type) and issubclass(method, MomentumMethod)]


def pretraining_method(cfg):
    """The ``MomentumMethod`` class ``cfg`` builds, or None for a stock Detectron2 model (fine-tuning)."""
    name = cfg.MODEL.META_ARCHITECTURE
    method = META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None
    return method if isinstance(method, type) and issubclass(method, MomentumMethod) else None


class MomentumMethod(nn.Module):
    """
    A query encoder and its momentum copy, the input normalisation and the skip count. A method's
    ``from_config`` adds its own arguments to ``MomentumMethod.from_config``'s; it declares what the rest
    of the package asks of it in the class attributes below.
    """

    # The queues of keys it keeps (``MomentumContrast``): buffers NAME, NAME_image_ids and NAME_ptr each.
    queues: Tuple[str, ...] = ()
    # The parts of the backbone it trains, which the exporter writes (vader_d2/checkpoint/export.py): "ResNet",
    # and "FPN" for a method that runs the FPN (the others leave it at its random initialisation).
    exported_parts: Tuple[str, ...] = ("ResNet",)
    # The start of the names of its query encoder's head in a state dict, which no other method's
    # checkpoint has: how the exporter tells which method wrote a checkpoint.
    checkpoint_prefix: str = ""
    # The sub-module that embeds the backbone's outputs densely at stride 4, if it has one: the evaluation
    # tools' feature source "head" (vader_d2/evaluation/features.py). Every model gives "p2".
    feature_head: Optional[str] = None
    # The scalars it logs to Detectron2's event storage (names from this module and its own).
    metric_names: Tuple[str, ...] = (SKIPPED_IMAGES,)

    def __init__(
        self,
        *,
        encoder: nn.Module,
        metrics_period: int,
        channels_last: bool = False,
        pixel_mean: List[float],
        pixel_std: List[float],
    ):
        super().__init__()
        if channels_last:
            encoder.to(memory_format=torch.channels_last)
        self.query_encoder = encoder
        # Gradients never reach it: it follows the query encoder by momentum only.
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.metrics_period = metrics_period
        self.channels_last = channels_last
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # Unreadable files skipped by every process's loader, as of the last logging step; a buffer, so that
        # a resumed run goes on counting. Skips since then are this process's alone, summed when logged.
        self.register_buffer("skipped_images", torch.zeros((), dtype=torch.long))
        self.skipped_since_logged = 0

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.MOMENTUM_CONTRAST
        return {
            "metrics_period": m.METRICS_PERIOD,
            "channels_last": m.CHANNELS_LAST,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @classmethod
    def add_config(cls, cfg):
        """Add the method's own config section (``vader_d2.config.add_vader_config`` calls this for every
        registered method; PointRend's ``add_pointrend_config``, per method)."""

    @classmethod
    def resolve_old_spellings(cls, cfg, defaults):
        """Translate, in place, what configs of the method's older spelling say (``defaults``: the default
        config); ``vader_d2.config.resolve_old_spellings`` calls this for every registered method."""

    @classmethod
    def queue_buffers(cls):
        """The names of the buffers of its queues."""
        return tuple(f"{queue}{suffix}" for queue in cls.queues for suffix in ("", "_image_ids", "_ptr"))

    @classmethod
    def check_ranges(cls, cfg):
        """
        Fail with one line naming the key on a value of the method's own keys outside what it can use. Runs
        before any other check (``vader_d2.config.check_vader_config``), so that those can rely on it.
        """
        at_least(cfg.MODEL.MOMENTUM_CONTRAST, "MODEL.MOMENTUM_CONTRAST", "METRICS_PERIOD", 1)

    @classmethod
    def check_config(cls, cfg, world_size):
        """Fail with one line on values that cannot work together, for ``world_size`` processes (the
        ranges, the batch's split over the processes and the views' crop grid are checked)."""

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def backbone(self):
        return self.query_encoder.backbone

    @torch.no_grad()
    def reset_key_encoder(self):
        """Make the key encoder a copy of the query encoder, parameters and buffers (the start of a fresh run)."""
        for key, query in zip(self.key_encoder.state_dict().values(), self.query_encoder.state_dict().values()):
            key.copy_(query)

    @torch.no_grad()
    def reset_run_state(self):
        """Forget the skip count (and, with queues, the queued keys): what MODEL.WEIGHTS brings there belongs to another run."""
        self.skipped_images.zero_()

    @staticmethod
    def stack(images: List[torch.Tensor], device):
        """The views of a batch as one uint8 tensor on ``device``, copied without waiting for the device."""
        return torch.stack(images).to(device, non_blocking=True)

    def normalize(self, images):
        """uint8 views -> the encoder's float input (per-channel mean and std), in the memory order asked for."""
        images = (images.float() - self.pixel_mean) / self.pixel_std
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def padded_images(self, batched_inputs: List[Dict]) -> ImageList:
        """Images given the Detectron2 way ({"image": uint8 (3, H, W)}), normalised and padded into one batch."""
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def note_skipped_images(self, batched_inputs: List[Dict]):
        """Add the files the mapper skipped before each of this batch's images (its ``num_skipped``)."""
        self.skipped_since_logged += sum(x.get("num_skipped", 0) for x in batched_inputs)

    def put_metrics(self, storage, **scalars):
        """
        Log ``scalars`` and the skipped files of every process since the run began. Every process calls
        this on the same steps (the skips are summed over them); reading the values waits for the device,
        so only every ``metrics_period`` steps.
        """
        skipped = torch.tensor(self.skipped_since_logged, device=self.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(skipped)
        with torch.no_grad():
            self.skipped_images += skipped
        self.skipped_since_logged = 0
        storage.put_scalars(**{SKIPPED_IMAGES: self.skipped_images.item()}, **scalars, smoothing_hint=False)


class MomentumContrast(MomentumMethod):
    """
    ``MomentumMethod`` plus MoCo's machinery: a constant momentum, key queues (``queues``: the names of
    the (QUEUE_SIZE, EMBED_DIM) buffers, each with ``NAME_image_ids`` and ``NAME_ptr``) filled before or
    after the loss, and batch norm over the groups ``KEY_BN`` asks for.
    """

    queues: Tuple[str, ...] = ("queue",)

    def __init__(
        self,
        *,
        embed_dim: int,
        queue_size: int,
        momentum: float,
        key_bn: str = "shuffle",
        bn_group_size: int,
        enqueue: str = "before_loss",
        **kwargs,  # MomentumMethod's
    ):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.key_bn = key_bn
        self.bn_group_size = bn_group_size
        self.enqueue_order = enqueue
        for name in self.queues:
            self.register_buffer(name, torch.zeros(queue_size, embed_dim))
            # -1 marks a slot not yet filled: masked like a key of the query's own image.
            self.register_buffer(f"{name}_image_ids", torch.full((queue_size,), -1, dtype=torch.long))
            self.register_buffer(f"{name}_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.MOMENTUM_CONTRAST
        return {
            **super().from_config(cfg),
            "embed_dim": m.EMBED_DIM,
            "queue_size": m.QUEUE_SIZE,
            "momentum": m.MOMENTUM,
            "key_bn": m.KEY_BN,
            "bn_group_size": m.BN_GROUP_SIZE,
            "enqueue": m.ENQUEUE,
        }

    @classmethod
    def keys_enqueued_per_step(cls, cfg):
        """
        The keys every step adds to each queue, and how they come about (for messages): one per image of
        the global batch here; a method with more says so.
        """
        return cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH x 1 key per image"

    @classmethod
    def check_ranges(cls, cfg):
        super().check_ranges(cfg)
        for key in ("EMBED_DIM", "QUEUE_SIZE"):
            at_least(cfg.MODEL.MOMENTUM_CONTRAST, "MODEL.MOMENTUM_CONTRAST", key, 1)

    @classmethod
    def check_config(cls, cfg, world_size):
        super().check_config(cfg, world_size)
        m = cfg.MODEL.MOMENTUM_CONTRAST
        if m.ENQUEUE not in ("before_loss", "after_loss"):
            raise UserError(f"MODEL.MOMENTUM_CONTRAST.ENQUEUE must be 'before_loss' or 'after_loss', got {m.ENQUEUE!r}")
        if not 0.0 <= m.MOMENTUM < 1.0:
            raise UserError(f"MODEL.MOMENTUM_CONTRAST.MOMENTUM must be in [0, 1), got {m.MOMENTUM}")
        check_batch_norm_groups(cfg, world_size)
        keys_per_step, formula = cls.keys_enqueued_per_step(cfg)
        if m.QUEUE_SIZE % keys_per_step != 0 or m.QUEUE_SIZE < keys_per_step:
            # The queue is written in whole steps.
            raise UserError(
                f"MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE={m.QUEUE_SIZE} must be a positive multiple of the keys enqueued per "
                f"step ({keys_per_step} = {formula}); e.g. {max(1, m.QUEUE_SIZE // keys_per_step) * keys_per_step}"
            )
        check_queries_have_negatives(cfg, keys_per_step)

    @torch.no_grad()
    def reset_run_state(self):
        """Empty the queues and the skip count: what MODEL.WEIGHTS brings there belongs to another run."""
        super().reset_run_state()
        for name in self.queues:
            getattr(self, name).zero_()
            getattr(self, f"{name}_image_ids").fill_(-1)
            getattr(self, f"{name}_ptr").zero_()

    @torch.no_grad()
    def momentum_update_key_encoder(self):
        """theta_k <- m theta_k + (1 - m) theta_q."""
        momentum_update_(self.key_encoder, self.query_encoder, self.momentum)

    def image_ids(self, batched_inputs: List[Dict]):
        """This process's images' ids on the device, built on the host and copied without waiting (a device
        tensor made from a list would wait for the device)."""
        return torch.tensor([x["image_id"] for x in batched_inputs]).to(self.device, non_blocking=True)

    def read_batch(self, batched_inputs: List[Dict]):
        """The batch's two views and its images' ids on the device; the files skipped before them are counted."""
        view1 = self.stack([x["view1"] for x in batched_inputs], self.device)
        view2 = self.stack([x["view2"] for x in batched_inputs], self.device)
        image_ids = self.image_ids(batched_inputs)
        self.note_skipped_images(batched_inputs)
        return view1, view2, image_ids

    @torch.no_grad()
    def enqueue(self, keys, image_ids, queue="queue"):
        """Write ``keys`` (of every process's images, in rank order) over the oldest entries of ``queue``."""
        keys_queued = getattr(self, queue)
        ids_queued, ptr = getattr(self, f"{queue}_image_ids"), getattr(self, f"{queue}_ptr")
        slots = (ptr + torch.arange(keys.shape[0], device=keys.device)) % keys_queued.shape[0]
        if keys.dtype != keys_queued.dtype:
            # Keys of an autocast step are half-precision unit vectors, norms off by up to 2^-8: the float32
            # queue gets them re-normalised in float32.
            with full_precision(keys):
                keys = F.normalize(keys.to(keys_queued.dtype), dim=1)
        keys_queued.index_copy_(0, slots, keys)
        ids_queued.index_copy_(0, slots, image_ids)
        ptr.copy_((ptr + keys.shape[0]) % keys_queued.shape[0])

    def negatives(self, keys: Dict[str, torch.Tensor], image_ids):
        """
        What this step's loss contrasts against, one tensor per queue named in ``keys`` ({queue: this step's
        keys of every process, rank order}, image ids ``image_ids``). ENQUEUE before_loss: the queues with
        the step's keys written in. after_loss: copies of the queues as earlier steps left them (the loss
        keeps its negatives for the backward pass, and ``enqueue_after_the_loss`` writes in place).
        """
        if self.enqueue_order == "after_loss":
            return [getattr(self, queue).clone() for queue in keys]
        for queue, queue_keys in keys.items():
            self.enqueue(queue_keys, image_ids, queue)
        return [getattr(self, queue) for queue in keys]

    def enqueue_after_the_loss(self, keys: Dict[str, torch.Tensor], image_ids):
        """With ENQUEUE after_loss, write this step's keys into their queues now (see ``negatives``)."""
        if self.enqueue_order == "after_loss":
            for queue, queue_keys in keys.items():
                self.enqueue(queue_keys, image_ids, queue)

    def encode_queries(self, images):
        """The query encoder on this process's uint8 images, batch norm over the groups of ``KEY_BN``."""
        images = self.normalize(images)
        if self.key_bn == "sync":
            return self.query_encoder(images)
        return forward_in_groups(self.query_encoder, images, self.bn_group_size)

    @torch.no_grad()
    def encode_keys(self, images, locations, read, permutation):
        """
        Keys of every process's images (rank order), no gradient: ``read(key encoder outputs, locations)``
        for this process's uint8 ``images`` and per-image ``locations`` (or None). With ``permutation``
        (shuffle-BN) the key encoder sees the global batch in that order; without, its own images.
        """
        if permutation is None:
            outputs = self.key_encoder(self.normalize(images))
            return concat_all_gather(read(outputs, locations))
        return encode_shuffled(self.key_encoder, images, locations, read, permutation, self.bn_group_size, self.normalize)

    def key_permutation(self, batch_size):
        """The order in which the key encoder sees the global batch; None where it cannot matter."""
        world_size = comm.get_world_size()
        if self.key_bn == "sync" or world_size * batch_size == self.bn_group_size:
            return None  # one BN group over the whole batch: no order changes its statistics
        return draw_permutation(world_size * batch_size, self.device)


    @torch.no_grad()
    def queue_metrics(self, queries, positive, hardest, excluded, temperature):
        """
        How the (N, D) ``queries`` of an ``info_nce_loss`` against ``queue`` (its positive and hardest
        logits and exclusion mask) tell their positive from the negatives, and how full the queue is.
        """
        usable = (~excluded).to(self.queue.dtype)
        # Sum over each query's usable negatives as one matrix product: the loss does not keep the logits.
        negative_cos = (queries.to(self.queue.dtype) * (usable @ self.queue)).sum() / usable.sum().clamp(min=1)
        return {
            POSITIVE_SIMILARITY: (positive * temperature).mean().item(),
            NEGATIVE_SIMILARITY: negative_cos.item(),
            TOP1_ACCURACY: (positive > hardest).float().mean().item(),
            QUERIES_WITHOUT_NEGATIVE: excluded.all(dim=1).float().mean().item(),
            QUEUE_FILL: (self.queue_image_ids >= 0).float().mean().item(),
        }


# Norms whose statistics are shared across processes (Detectron2's names).
SYNCHRONISED_NORMS = ("naiveSyncBN", "naiveSyncBN_N", "SyncBN", "nnSyncBN")


def check_batch_norm_groups(cfg, world_size):
    """KEY_BN needs norms and batch sizes that make its groups what it says they are."""
    m = cfg.MODEL.MOMENTUM_CONTRAST
    if m.KEY_BN not in ("shuffle", "sync"):
        raise UserError(f"MODEL.MOMENTUM_CONTRAST.KEY_BN must be 'shuffle' or 'sync', got {m.KEY_BN!r}")
    norms = {"MODEL.RESNETS.NORM": cfg.MODEL.RESNETS.NORM, "MODEL.FPN.NORM": cfg.MODEL.FPN.NORM}
    if m.KEY_BN == "shuffle":
        synchronised = [key for key, norm in norms.items() if norm in SYNCHRONISED_NORMS]
        if synchronised:
            raise UserError(
                f"MODEL.MOMENTUM_CONTRAST.KEY_BN shuffle needs per-process batch norm, but {synchronised[0]} is "
                f"{norms[synchronised[0]]!r}; set {' and '.join(f'{key} BN' for key in synchronised)} "
                "(or MODEL.MOMENTUM_CONTRAST.KEY_BN sync)"
            )
        per_process = cfg.SOLVER.IMS_PER_BATCH // world_size
        if m.BN_GROUP_SIZE < 1 or per_process % m.BN_GROUP_SIZE != 0:
            largest = max(d for d in range(1, max(1, min(per_process, m.BN_GROUP_SIZE)) + 1) if per_process % d == 0)
            raise UserError(
                f"MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE={m.BN_GROUP_SIZE} must divide the {per_process} images each of the "
                f"{world_size} processes gets (SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}); "
                f"e.g. MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE {largest}"
            )
    elif world_size > 1:
        unsynchronised = [key for key, norm in norms.items() if norm == "BN"]
        if unsynchronised:
            raise UserError(
                f"MODEL.MOMENTUM_CONTRAST.KEY_BN sync with {world_size} processes needs synchronised batch norm, but "
                f"{unsynchronised[0]} is 'BN'; set {' and '.join(f'{key} naiveSyncBN' for key in unsynchronised)}"
            )


def check_queries_have_negatives(cfg, keys_per_step):
    """
    A query's negatives are the queued keys of *other* images. After a step's keys are enqueued the
    queue holds the keys of its last QUEUE_SIZE / keys-per-step steps, i.e. of that many global batches:
    with one image per global batch and a queue of one step's keys it only ever holds the query's own
    image, every negative is masked, the loss is 0 and nothing is learned. Any larger queue or batch
    gives negatives from the second step on (the first step of a one-image batch has none).
    With ENQUEUE after_loss the queue holds earlier steps' keys only, of other images from the second
    step on, whatever its size.
    """
    m = cfg.MODEL.MOMENTUM_CONTRAST
    if m.ENQUEUE == "after_loss":
        return
    images_in_queue = (m.QUEUE_SIZE // keys_per_step) * cfg.SOLVER.IMS_PER_BATCH
    if images_in_queue < 2:
        raise UserError(
            f"with SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} and MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE={m.QUEUE_SIZE} (the keys "
            "of one step) the queue only ever holds keys of the query's own image, which are masked: no query "
            f"has a negative and nothing is learned; use MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE {2 * keys_per_step} or more, "
            "or a larger SOLVER.IMS_PER_BATCH"
        )


# Input pixels per cell of each stage of Detectron2's ResNet.
RESNET_STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def check_stage_name(in_feature, key):
    """``in_feature`` (the value of ``key``) names a stage of Detectron2's ResNet."""
    stages = tuple(RESNET_STAGE_STRIDES)
    require(in_feature in stages, key, in_feature, f"one of {stages}")


def check_whole_stage_cells(cfg, in_feature, method):
    """The views' crop is a whole number of ``in_feature``'s cells, which ``method`` compares: cells cut by
    the view's border would be compared by where their centres would lie."""
    crop, stride = cfg.INPUT.VIEWS.CROP_SIZE, RESNET_STAGE_STRIDES[in_feature]
    if crop % stride != 0:
        raise UserError(
            f"INPUT.VIEWS.CROP_SIZE={crop} must be a multiple of {stride}, the stride of {in_feature} whose cells {method} compares"
        )


class ResNetStageEncoder(nn.Module):
    """
    The base of an encoder that reads the ResNet stage ``in_feature`` (``stage_features``) of a ResNet-FPN
    backbone. The FPN takes no part in its computation: it stays frozen (and is not exported; downstream
    configs start their FPN from their own initialisation).
    """

    def __init__(self, backbone: Backbone, in_feature: str):
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        shape = backbone.bottom_up.output_shape()[in_feature]
        self.channels = shape.channels
        # Input pixels per cell of the stage (32 for res5): where the cells' centres lie in the views.
        self.stride = shape.stride
        for name, p in backbone.named_parameters():
            if not name.startswith("bottom_up."):
                p.requires_grad_(False)

    def stage_features(self, images):
        return self.backbone.bottom_up(images)[self.in_feature]
