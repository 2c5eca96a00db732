"""
The VADeR meta-architecture: query and momentum key encoders, the negative queue and the pixel InfoNCE.

One training step, for a batch of images each given as two views plus the correspondence between them:

1. the query encoder embeds view 1 densely (one L2-normalised vector per stride-4 cell);
2. the key encoder (a momentum average of the query encoder, no gradient) embeds view 2;
3. per image, PAIRS_PER_IMAGE cells of view 1 that have a match in view 2 are drawn at random; a
   query is the cell's view-1 embedding, its positive key the view-2 embedding at the matched location;
4. negatives are the keys in the queue that come from *other images* (a key from the query's own image,
   whether from this batch or an earlier epoch, is masked out);
5. InfoNCE with temperature-scaled cosine similarity; the batch's keys (the keys of every process's
   images) are written to the queue, oldest first out.

By default (``MODEL.MOMENTUM_CONTRAST.ENQUEUE before_loss``) the current batch's keys are enqueued *before* the loss
is computed, so the other images of the batch serve as negatives too (the freshest ones available), and
the first step already has negatives; ``after_loss`` is MoCo's order, negatives from earlier steps only.

Batch norm (``MODEL.MOMENTUM_CONTRAST.KEY_BN``): ``shuffle`` (MoCo's shuffle-BN, ``shuffle_bn.py``) normalises the
query encoder over contiguous groups of ``BN_GROUP_SIZE`` images of each process and the key encoder over
groups of a random permutation of the global batch, so that a key never shares its query's statistics;
``sync`` runs each encoder on the whole per-process batch with the configured norm (synchronised BN
across processes), the behaviour kept for comparison.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..config import OUTPUT_STRIDE
from ..config.checks import at_least, check_norm, require
from ..errors import UserError
from .dense_head import DenseHead
from .losses import info_nce_loss
from .momentum import QUEUE_STATS, SKIPPED_IMAGES, MomentumContrast, cells_of_each_image
from .shuffle_bn import concat_all_gather

__all__ = ["VADeR", "DenseEncoder", "add_vader_method_config", "sample_grid", "VALID_MATCHES"]

# VADeR's own scalar, beside the queue's (vader_d2/modeling/momentum.py): cells of view 1 with a match in
# view 2, per image.
VALID_MATCHES = "vader_valid_matches"

# VADeR.from_config's answer to MODEL.VADER.LOSS global where vader_d2.cli.build_config (which translates
# it) did not build the config.
OLD_MOCO_SPELLING = (
    "MODEL.VADER.LOSS global: the MoCo baseline is MODEL.META_ARCHITECTURE MoCo now, its own keys under MODEL.MOCO; "
    "vader_d2.cli.build_config translates configs written the old way"
)


class DenseEncoder(nn.Module):
    """Backbone (ResNet-FPN) + dense head: images (B, 3, H, W) -> embeddings (B, D, H/4, W/4)."""

    def __init__(self, backbone: Backbone, head: DenseHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images):
        return self.head(self.backbone(images))


def add_vader_method_config(cfg):
    """MODEL.VADER: VADeR's own keys. The momentum keys it shares with the other methods are in
    MODEL.MOMENTUM_CONTRAST (EMBED_DIM, QUEUE_SIZE of pixel keys, ENQUEUE, MOMENTUM, KEY_BN, BN_GROUP_SIZE, ...)."""
    v = cfg.MODEL.VADER = CN()
    # "dense", VADeR's pixel-level InfoNCE. "global" is the old spelling of MODEL.META_ARCHITECTURE MoCo,
    # translated by MoCo.resolve_old_spellings in moco.py (with GLOBAL_HEAD below).
    v.LOSS = "dense"
    v.TEMPERATURE = 0.07
    # Matched pixel pairs per image the loss is applied to (paper: 32).
    v.PAIRS_PER_IMAGE = 32
    # Also use view 2 as query and view 1 as key (off in the paper's recipe).
    v.SYMMETRIC = False
    # How a query cell reads its positive key from view 2's embedding map at a sub-cell location:
    # "bilinear" (re-normalised after interpolation) or "nearest" cell.
    v.KEY_SAMPLING = "bilinear"

    v.HEAD = CN()
    v.HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    v.HEAD.CONV_DIM = 128
    # 3x3 convs applied after the FPN levels are merged at stride 4.
    v.HEAD.NUM_CONVS = 1
    v.HEAD.NORM = "GN"

    # The old spelling's MODEL.MOCO.IN_FEATURE and HIDDEN_DIM (MoCo.resolve_old_spellings in moco.py).
    v.GLOBAL_HEAD = CN()
    v.GLOBAL_HEAD.IN_FEATURE = "res5"
    v.GLOBAL_HEAD.HIDDEN_DIM = 2048


def sample_grid(embeddings, positions, mode):
    """
    Read (B, D, H, W) embeddings at (B, P, 2) sub-cell grid positions (x, y; cell (r, c) is at (c, r)).
    Returns (B, P, D), re-normalised after bilinear interpolation.
    """
    height, width = embeddings.shape[-2:]
    if mode == "nearest":
        x = positions[..., 0].round().clamp_(0, width - 1).long()
        y = positions[..., 1].round().clamp_(0, height - 1).long()
        flat = embeddings.flatten(2)
        return torch.gather(flat, 2, (y * width + x)[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)
    # grid_sample's align_corners=False puts cell c's centre at (2c + 1) / size - 1.
    size = positions.new_tensor([width, height])
    grid = (2 * positions + 1) / size - 1
    sampled = F.grid_sample(embeddings, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(sampled[..., 0].transpose(1, 2), dim=2)


@META_ARCH_REGISTRY.register()
class VADeR(MomentumContrast):
    exported_parts = ("ResNet", "FPN")
    checkpoint_prefix = "query_encoder.head.laterals."
    feature_head = "query_encoder.head"
    metric_names = (SKIPPED_IMAGES, *QUEUE_STATS, VALID_MATCHES)

    @configurable
    def __init__(
        self,
        *,
        temperature: float,
        pairs_per_image: int,
        symmetric: bool,
        key_sampling: str,
        **kwargs,  # MomentumContrast's
    ):
        super().__init__(**kwargs)
        self.temperature = temperature
        self.pairs_per_image = pairs_per_image
        self.symmetric = symmetric
        self.key_sampling = key_sampling

    @classmethod
    def from_config(cls, cfg):
        v = cfg.MODEL.VADER
        if v.LOSS != "dense":
            raise UserError(OLD_MOCO_SPELLING)
        backbone = build_backbone(cfg)
        return {
            **super().from_config(cfg),
            "encoder": DenseEncoder(backbone, DenseHead(cfg, backbone.output_shape())),
            "temperature": v.TEMPERATURE,
            "pairs_per_image": v.PAIRS_PER_IMAGE,
            "symmetric": v.SYMMETRIC,
            "key_sampling": v.KEY_SAMPLING,
        }

    @classmethod
    def add_config(cls, cfg):
        add_vader_method_config(cfg)

    @classmethod
    def keys_enqueued_per_step(cls, cfg):
        v = cfg.MODEL.VADER
        keys = cfg.SOLVER.IMS_PER_BATCH * v.PAIRS_PER_IMAGE * (2 if v.SYMMETRIC else 1)
        return keys, f"SOLVER.IMS_PER_BATCH x pairs per image{' x 2 (symmetric)' if v.SYMMETRIC else ''}"

    @classmethod
    def check_ranges(cls, cfg):
        v = cfg.MODEL.VADER
        if v.LOSS not in ("dense", "global"):
            raise UserError(f"MODEL.VADER.LOSS must be 'dense' or 'global', got {v.LOSS!r}")
        if v.LOSS == "global":
            raise UserError(OLD_MOCO_SPELLING)
        super().check_ranges(cfg)
        at_least(v, "MODEL.VADER", "PAIRS_PER_IMAGE", 1)
        at_least(cfg.INPUT.VIEWS, "INPUT.VIEWS", "MIN_SHARED_CELLS", 1)
        at_least(v.HEAD, "MODEL.VADER.HEAD", "CONV_DIM", 1)
        at_least(v.HEAD, "MODEL.VADER.HEAD", "NUM_CONVS", 0)
        levels = ("p2", "p3", "p4", "p5", "p6")
        features = list(v.HEAD.IN_FEATURES)
        require(
            "p2" in features and all(f in levels for f in features), "MODEL.VADER.HEAD.IN_FEATURES", features,
            f"FPN outputs among {list(levels)} including p2 (the dense head predicts at stride {OUTPUT_STRIDE})",
        )
        check_norm(v.HEAD.NORM, v.HEAD.CONV_DIM, "MODEL.VADER.HEAD.NORM", "MODEL.VADER.HEAD.CONV_DIM")

    @classmethod
    def check_config(cls, cfg, world_size):
        v = cfg.MODEL.VADER
        if v.KEY_SAMPLING not in ("bilinear", "nearest"):
            raise UserError(f"MODEL.VADER.KEY_SAMPLING must be 'bilinear' or 'nearest', got {v.KEY_SAMPLING!r}")
        if v.TEMPERATURE <= 0:
            raise UserError(f"MODEL.VADER.TEMPERATURE must be positive, got {v.TEMPERATURE}")
        super().check_config(cfg, world_size)
        views = cfg.INPUT.VIEWS
        cells = (views.CROP_SIZE // OUTPUT_STRIDE) ** 2
        if not v.PAIRS_PER_IMAGE <= views.MIN_SHARED_CELLS <= cells:
            # The views must share the cells the pairs are drawn from.
            raise UserError(
                f"INPUT.VIEWS.MIN_SHARED_CELLS={views.MIN_SHARED_CELLS} must lie between "
                f"MODEL.VADER.PAIRS_PER_IMAGE={v.PAIRS_PER_IMAGE} and the {cells} cells of a view"
            )

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        view1, view2, image_ids = self.read_batch(batched_inputs)
        # Drawn before the pair sampling, on every rank (rank 0's draw is the one all use), so that the
        # draws after it follow the same sequence in every process of a run.
        permutation = self.key_permutation(len(batched_inputs))

        self.momentum_update_key_encoder()
        queries, keys = self.dense_pairs(batched_inputs, view1, view2, permutation)

        # One query per key, in the same order: image i's rows of each direction of the pairs.
        directions = len(keys)
        all_image_ids = concat_all_gather(image_ids).repeat_interleave(self.pairs_per_image).repeat(directions)
        new_keys = {"queue": torch.cat([k.reshape(-1, k.shape[-1]) for k in keys])}
        (negatives,) = self.negatives(new_keys, all_image_ids)
        rank, batch = comm.get_rank(), len(batched_inputs)
        mine = torch.cat([k[rank * batch : (rank + 1) * batch].reshape(-1, k.shape[-1]) for k in keys])
        queries = torch.cat([q.reshape(-1, q.shape[-1]) for q in queries])
        query_ids = image_ids.repeat_interleave(self.pairs_per_image).repeat(directions)
        loss, positive, hardest, excluded = info_nce_loss(
            queries, mine, negatives, query_ids, self.queue_image_ids, self.temperature
        )
        self.log_metrics(batched_inputs, queries, positive, hardest, excluded)
        self.enqueue_after_the_loss(new_keys, all_image_ids)
        return {"loss_vader": loss}

    def sample_cells(self, valid, matches):
        """
        PAIRS_PER_IMAGE cells per image drawn uniformly among the (B, C) ``valid`` view-1 cells, without
        replacement, and where they lie in view 2 according to the (B, C, 2) ``matches``.
        Returns (B, P) flat view-1 cell indices and (B, P, 2) view-2 grid positions.
        """
        # The top-P of random scores, invalid cells last: one kernel, no data-dependent shapes.
        scores = torch.rand(valid.shape, device=valid.device).masked_fill_(~valid, -1.0)
        cells = scores.topk(self.pairs_per_image, dim=1).indices
        return cells, torch.gather(matches, 1, cells[..., None].expand(-1, -1, 2))

    @staticmethod
    def at_cells(embeddings, cells):
        """(B, D, H, W) embeddings at (B, P) flat cell indices -> (B, P, D)."""
        flat = embeddings.flatten(2)
        return torch.gather(flat, 2, cells[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)

    def sample_keys(self, embeddings, positions):
        return sample_grid(embeddings, positions, self.key_sampling)

    def dense_pairs(self, batched_inputs, view1, view2, permutation):
        """
        Queries (this process's images, (b, P, D) per direction) and positive keys (every process's images,
        (B, P, D) per direction) for PAIRS_PER_IMAGE matched cells per image; both directions if symmetric.
        """
        valid = torch.stack([x["valid"] for x in batched_inputs]).to(self.device, non_blocking=True).flatten(1)
        matches = torch.stack([x["correspondence"] for x in batched_inputs]).to(self.device, non_blocking=True)
        cells, positions = self.sample_cells(valid, matches.flatten(1, 2))

        queries = [self.at_cells(self.encode_queries(view1), cells)]
        keys = [self.encode_keys(view2, positions, self.sample_keys, permutation)]
        if self.symmetric:
            queries.append(self.sample_keys(self.encode_queries(view2), positions))
            keys.append(self.encode_keys(view1, cells, self.at_cells, permutation))
        return queries, keys

    @torch.no_grad()
    def log_metrics(self, batched_inputs, queries, positive, hardest, excluded):
        storage = get_event_storage()
        if storage.iter % self.metrics_period != 0:
            return
        matches = sum(int(x["valid"].sum()) for x in batched_inputs) / len(batched_inputs)
        self.put_metrics(
            storage, **self.queue_metrics(queries, positive, hardest, excluded, self.temperature), **{VALID_MATCHES: matches}
        )

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]):
        """
        Embed images given the Detectron2 way ({"image": uint8 (3, H, W) in INPUT.FORMAT}):
        [{"embedding": (D, ceil(H/4), ceil(W/4))}].
        """
        padded = self.padded_images(batched_inputs)
        return cells_of_each_image(self.query_encoder(padded.tensor), padded.image_sizes, OUTPUT_STRIDE)
