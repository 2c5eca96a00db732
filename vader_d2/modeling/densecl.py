"""
DenseCL (Wang, Zhang, Shen, Kong, Li, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", CVPR 2021) on Detectron2's ResNet, in the same views, trainer and export as VADeR.

One training step, for a batch of images each given as two views:

1. the query encoder reads view 1's last backbone stage (``MODEL.DENSECL.IN_FEATURE``, res5: stride 32,
   a 7 x 7 grid at 224 px) and gives a global embedding (MoCo v2's pooled 2-layer MLP), a dense embedding
   per cell (1x1 conv - ReLU - 1x1 conv) and the backbone features themselves; all L2-normalised;
2. the key encoder (momentum average, no gradient, shuffle-BN) does the same on view 2, plus the
   *pooled* dense key of the image (the average of its dense map before normalisation);
3. global loss: InfoNCE of the global query against its key, negatives the global queue;
4. dense loss: InfoNCE of each query cell against its positive key cell, negatives the dense queue of
   pooled dense keys of other images. The positive (``MODEL.DENSECL.POSITIVE``): ``feature``, the paper's,
   is the view-2 cell whose *backbone* feature is most cosine-similar to the query cell's backbone
   feature; ``geometric`` is the view-2 cell the query cell's centre falls into by the views' transforms
   (cells without one are left out);
5. loss = (1 - lambda) global + lambda dense (lambda 0.5, temperature 0.2 for both).

The FPN is not part of DenseCL's computation: it stays frozen and is not exported (as for the MoCo
baseline). Queue semantics are this project's (VADeR's, the MoCo baseline's): keys carry their image id,
keys of the query's own image and empty slots are masked, so no random initial queue is needed; the
batch's keys are enqueued before the loss (``MODEL.MOMENTUM_CONTRAST.ENQUEUE before_loss``) or, as DenseCL's code
does, after it (``after_loss``).
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

from ..config.checks import at_least, probability, require
from .cell_geometry import nearest_cells_in_other_view
from .losses import full_precision, info_nce_loss
from .momentum import SKIPPED_IMAGES, MomentumContrast, ResNetStageEncoder, cells_of_each_image, check_stage_name, check_whole_stage_cells
from .shuffle_bn import concat_all_gather

__all__ = ["DenseCL", "DenseCLEncoder", "add_densecl_config", "dense_positive_cells", "dense_contrastive_loss"]

# DenseCL: the top-1 accuracy of its global and of its dense queries, the dense queries' mean cosine
# similarity to their positive key, the share of query cells with a positive (all of them with feature
# matching) and how full its queues are.
DENSECL_GLOBAL_TOP1_ACCURACY = "densecl_global_top1_accuracy"
DENSECL_DENSE_TOP1_ACCURACY = "densecl_dense_top1_accuracy"
DENSECL_DENSE_POSITIVE_SIMILARITY = "densecl_dense_positive_similarity"
DENSECL_CELLS_WITH_POSITIVE = "densecl_cells_with_positive"
DENSECL_QUEUE_FILL = "densecl_queue_fill"


def add_densecl_config(cfg):
    """MODEL.DENSECL: DenseCL's own keys. The momentum keys it shares with the other methods are in
    MODEL.MOMENTUM_CONTRAST (EMBED_DIM, QUEUE_SIZE: the length of both its queues, one key per image and step, ENQUEUE,
    MOMENTUM, KEY_BN, BN_GROUP_SIZE, ...)."""
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


class DenseCLEncoder(ResNetStageEncoder):
    """
    images -> (global (B, D), dense (B, D, S, S), pooled dense (B, D), backbone features (B, C, S, S)),
    each L2-normalised over its channels.
    """

    def __init__(self, backbone: Backbone, in_feature: str, hidden_dim: int, embed_dim: int):
        super().__init__(backbone, in_feature)
        self.global_head = nn.Sequential(nn.Linear(self.channels, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))
        # DenseCL initialises its neck's linear layers He-normal (fan in, zero bias), about 2.4 times
        # PyTorch's default scale; its 1x1 convs keep PyTorch's default, as here.
        for layer in self.global_head:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        self.dense_head = nn.Sequential(
            nn.Conv2d(self.channels, hidden_dim, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, embed_dim, 1)
        )
        # DenseCL's ResNet draws its convs He-normal over their fan *in* (ResNet.init_weights,
        # kaiming_init(mode='fan_in')); Detectron2's, like MoCo's and PixPro's, over their fan out.
        for module in backbone.bottom_up.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, images):
        features = self.stage_features(images)
        global_embedding = F.normalize(self.global_head(features.mean(dim=(2, 3))), dim=1)
        dense = self.dense_head(features)
        return (
            global_embedding,
            F.normalize(dense, dim=1),
            F.normalize(dense.mean(dim=(2, 3)), dim=1),
            F.normalize(features, dim=1),
        )


def dense_positive_cells(query_features, key_features):
    """
    DenseCL's matching: for (B, C, S, S) normalised backbone features of the two views, the flat index
    of the key cell most cosine-similar to each query cell, (B, S*S).
    """
    # In float32 also under autocast: half-precision rounding would turn near-ties into other matches.
    with full_precision(query_features):
        similarity = query_features.float().flatten(2).transpose(1, 2) @ key_features.float().flatten(2)  # (B, P_query, P_key)
    return similarity.argmax(dim=2)


def dense_contrastive_loss(query_dense, key_dense, positive_cells, matched, negatives, negative_image_ids, image_ids, temperature):
    """
    DenseCL's dense InfoNCE, averaged over the query cells that have a positive: for (b, D, S, S) query and
    key maps of the same images, the (b, S*S) flat key cell of each query cell's positive and whether it
    has one, and the queue of pooled dense keys (negatives of other images; ``info_nce_loss`` masks the
    query's own image and empty slots). Returns the loss, the positive logits and the hardest negative
    logits of every query cell, flat (b x P); those of cells without a positive mean nothing.
    """
    queries = query_dense.flatten(2).transpose(1, 2).flatten(0, 1)  # (b P, D)
    keys = torch.gather(key_dense.flatten(2), 2, positive_cells[:, None, :].expand(-1, key_dense.shape[1], -1))
    keys = keys.transpose(1, 2).flatten(0, 1)
    query_ids = image_ids[:, None].expand_as(positive_cells).flatten()
    # Cells without a positive weigh 0 (no dense term where none has one) instead of being indexed out:
    # a boolean index waits for the device to count them.
    loss, positive, hardest, _ = info_nce_loss(
        queries, keys, negatives, query_ids, negative_image_ids, temperature, query_weights=matched.flatten().float()
    )
    return loss, positive, hardest


@META_ARCH_REGISTRY.register()
class DenseCL(MomentumContrast):
    # One global key and one pooled dense key per image and step: two queues of the same length.
    queues = ("queue", "dense_queue")
    checkpoint_prefix = "query_encoder.dense_head."
    metric_names = (
        SKIPPED_IMAGES,
        DENSECL_GLOBAL_TOP1_ACCURACY,
        DENSECL_DENSE_TOP1_ACCURACY,
        DENSECL_DENSE_POSITIVE_SIMILARITY,
        DENSECL_CELLS_WITH_POSITIVE,
        DENSECL_QUEUE_FILL,
    )

    @configurable
    def __init__(
        self,
        *,
        temperature: float,
        dense_loss_weight: float,
        positive: str,
        **kwargs,  # MomentumContrast's
    ):
        super().__init__(**kwargs)
        self.temperature = temperature
        self.dense_loss_weight = dense_loss_weight
        self.positive = positive

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DENSECL
        return {
            **super().from_config(cfg),
            "encoder": DenseCLEncoder(build_backbone(cfg), d.IN_FEATURE, d.HIDDEN_DIM, cfg.MODEL.MOMENTUM_CONTRAST.EMBED_DIM),
            "temperature": d.TEMPERATURE,
            "dense_loss_weight": d.LOSS_WEIGHT,
            "positive": d.POSITIVE,
        }

    @classmethod
    def add_config(cls, cfg):
        add_densecl_config(cfg)

    @classmethod
    def check_ranges(cls, cfg):
        super().check_ranges(cfg)
        d = cfg.MODEL.DENSECL
        check_stage_name(d.IN_FEATURE, "MODEL.DENSECL.IN_FEATURE")
        at_least(d, "MODEL.DENSECL", "HIDDEN_DIM", 1)
        require(d.TEMPERATURE > 0, "MODEL.DENSECL.TEMPERATURE", d.TEMPERATURE, "positive")
        probability(d, "MODEL.DENSECL", "LOSS_WEIGHT")
        require(d.POSITIVE in ("feature", "geometric"), "MODEL.DENSECL.POSITIVE", d.POSITIVE, "'feature' or 'geometric'")

    @classmethod
    def check_config(cls, cfg, world_size):
        super().check_config(cfg, world_size)
        check_whole_stage_cells(cfg, cfg.MODEL.DENSECL.IN_FEATURE, "DenseCL")

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        view1, view2, image_ids = self.read_batch(batched_inputs)
        # Drawn first, on every rank (rank 0's draw is the one all use).
        permutation = self.key_permutation(len(batched_inputs))
        self.momentum_update_key_encoder()

        query_global, query_dense, _, query_features = self.encode_queries(view1)
        key_global, key_dense, key_pooled, key_features = self.encode_key_maps(
            view2, query_dense.shape[1:], query_features.shape[1:], permutation
        )

        all_ids = concat_all_gather(image_ids)
        new_keys = {"queue": key_global, "dense_queue": key_pooled}
        negatives, dense_negatives = self.negatives(new_keys, all_ids)
        rank, batch = comm.get_rank(), len(batched_inputs)
        mine = slice(rank * batch, (rank + 1) * batch)

        global_loss, global_positive, global_hardest, _ = info_nce_loss(
            query_global, key_global[mine], negatives, image_ids, self.queue_image_ids, self.temperature
        )
        key_features = None if key_features is None else key_features[mine]
        cells, matched = self.positive_cells(batched_inputs, query_features, key_features, query_dense.shape[-2:])
        dense_loss, dense_positive, dense_hardest = dense_contrastive_loss(
            query_dense, key_dense[mine], cells, matched, dense_negatives, self.dense_queue_image_ids, image_ids, self.temperature
        )
        self.log_metrics(global_positive, global_hardest, dense_positive, dense_hardest, matched)
        self.enqueue_after_the_loss(new_keys, all_ids)
        return {
            "loss_densecl_global": (1.0 - self.dense_loss_weight) * global_loss,
            "loss_densecl_dense": self.dense_loss_weight * dense_loss,
        }

    @torch.no_grad()
    def encode_key_maps(self, images, dense_shape, feature_shape, permutation):
        """
        The key encoder's outputs for every process's images (rank order): global, dense, pooled dense and,
        for feature matching, backbone features. With shuffle-BN the whole maps travel between processes
        (DenseCL compares every key cell), packed into one row per image.
        """
        with_features = self.positive == "feature"
        sizes = [dense_shape[0], dense_shape.numel(), dense_shape[0]] + ([feature_shape.numel()] if with_features else [])

        def packed(outputs, _):
            global_embedding, dense, pooled, features = outputs
            parts = [global_embedding, dense.flatten(1), pooled] + ([features.flatten(1)] if with_features else [])
            return torch.cat(parts, dim=1)

        rows = self.encode_keys(images, None, packed, permutation)
        parts = rows.split(sizes, dim=1)
        global_embedding, dense, pooled = parts[0], parts[1].view(-1, *dense_shape), parts[2]
        features = parts[3].view(-1, *feature_shape) if with_features else None
        return global_embedding, dense, pooled, features

    def positive_cells(self, batched_inputs, query_features, key_features, grid):
        """(b, P) flat view-2 cell of each query cell's positive, and (b, P) bool: the cell has one."""
        if self.positive == "feature":
            cells = dense_positive_cells(query_features.detach(), key_features)
            return cells, torch.ones_like(cells, dtype=torch.bool)
        rows, cols = grid
        # In float64 on the host, where the mapper's matrices are (float64 is slow on most GPUs); only the
        # result travels, without waiting for the device.
        matrices = [torch.stack([x[name] for x in batched_inputs]) for name in ("view1_matrix", "view2_matrix")]
        heights = torch.tensor([float(x["height"]) for x in batched_inputs], dtype=torch.float64)
        widths = torch.tensor([float(x["width"]) for x in batched_inputs], dtype=torch.float64)
        cells, matched = nearest_cells_in_other_view(*matrices, heights, widths, rows, cols, self.query_encoder.stride)
        return cells.to(self.device, non_blocking=True), matched.to(self.device, non_blocking=True)

    @torch.no_grad()
    def log_metrics(self, global_positive, global_hardest, dense_positive, dense_hardest, matched):
        storage = get_event_storage()
        if storage.iter % self.metrics_period != 0:
            return
        dense_positive, dense_hardest = dense_positive[matched.flatten()], dense_hardest[matched.flatten()]
        self.put_metrics(storage, **{
            DENSECL_GLOBAL_TOP1_ACCURACY: (global_positive > global_hardest).float().mean().item(),
            DENSECL_DENSE_TOP1_ACCURACY: (dense_positive > dense_hardest).float().mean().item(),
            DENSECL_DENSE_POSITIVE_SIMILARITY: (dense_positive * self.temperature).mean().item(),
            DENSECL_CELLS_WITH_POSITIVE: matched.float().mean().item(),
            DENSECL_QUEUE_FILL: (self.queue_image_ids >= 0).float().mean().item(),
        })

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]):
        """The dense embedding of images given the Detectron2 way: [{"embedding": (D, h, w)}], one per res5 cell."""
        padded = self.padded_images(batched_inputs)
        dense = self.query_encoder(padded.tensor)[1]
        return cells_of_each_image(dense, padded.image_sizes, self.query_encoder.stride)
