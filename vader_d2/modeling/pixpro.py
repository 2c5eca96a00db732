"""
PixPro (Xie, Lin, Zhang, Cao, Lin, Hu, "Propagate Yourself: Exploring Pixel-Level Consistency for
Unsupervised Visual Representation Learning", CVPR 2021), pixel-propagation loss only (no instance
branch), on Detectron2's ResNet, in the same views, trainer and export as VADeR.

One training step, for a batch of images each given as two views:

1. the online (query) encoder reads each view's last backbone stage (``MODEL.PIXPRO.IN_FEATURE``, res5 =
   the paper's C5: stride 32, 7 x 7 at 224 px) and projects every cell (1x1 conv - BN - ReLU - 1x1 conv);
2. the pixel propagation module smooths the online projections within each view:
   y_i = sum_j max(cos(x_i, x_j), 0)^gamma g(x_j), g a 1x1 transform whose output is L2-normalised per
   cell (as in the authors' code); gamma 2, one transform layer;
3. the momentum encoder (no gradient) projects each view too; its momentum rises from
   ``MODEL.PIXPRO.MOMENTUM`` (0.99) to 1 on a cosine schedule over SOLVER.MAX_ITER;
4. positive pairs: cell i of view 1 and cell j of view 2 whose centres, mapped into the source image by
   the views' transforms, lie closer than ``MODEL.PIXPRO.POSITIVE_RADIUS`` (0.7) x the larger bin diagonal
   (coordinates normalised by the source width and height, as PixPro's; ``cell_geometry.py``);
5. loss, symmetric: -2 x the mean cosine of y_i (view 1) and the momentum projection x'_j (view 2) over an
   image's positive pairs, averaged over images, plus the same with the views swapped (the authors'
   scale: BYOL's 2 - 2 cos up to a constant; an image without a positive pair adds 0).

No queue and no negatives. Batch norm as the config says (PixPro: synchronised BN over the global batch,
each view normalised on its own). The FPN is frozen and not exported (PixPro's FPN variant is not built
here).
"""

import math
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from detectron2.utils.events import get_event_storage

from ..config.checks import at_least, check_norm, require
from .cell_geometry import pixpro_positive_mask
from .losses import full_precision
from .momentum import (
    SKIPPED_IMAGES,
    MomentumMethod,
    ResNetStageEncoder,
    cells_of_each_image,
    check_stage_name,
    check_whole_stage_cells,
    momentum_update_,
)

__all__ = ["PixPro", "PixProEncoder", "PixelPropagation", "add_pixpro_config", "pixpro_loss", "pixpro_momentum", "PIXPRO_MOMENTUM", "PIXPRO_POSITIVE_PAIRS"]

# PixPro: the momentum of its momentum encoder at the step, and positive cell pairs per image.
PIXPRO_MOMENTUM = "pixpro_momentum"
PIXPRO_POSITIVE_PAIRS = "pixpro_positive_pairs"


def add_pixpro_config(cfg):
    """MODEL.PIXPRO: PixPro's own keys. MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD and CHANNELS_LAST, which every momentum
    method reads, apply to it too."""
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


def _projection(in_channels, hidden_dim, out_channels, norm):
    """PixPro's 2-layer per-cell MLP: 1x1 conv - norm - ReLU - 1x1 conv."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden_dim, 1),
        get_norm(norm, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden_dim, out_channels, 1),
    )


@torch.no_grad()
def zero_init_residual_branches_(resnet: nn.Module):
    """
    Scale 0 for the last norm of every residual branch (PixPro's ResNet, after Goyal et al. 2017 sec. 5.1):
    each block starts as its shortcut. Detectron2's ResNet leaves it at 1, as MoCo's and DenseCL's do.
    """
    for block in resnet.modules():
        last = {BottleneckBlock: "conv3", BasicBlock: "conv2"}.get(type(block))
        norm = getattr(block, last).norm if last else None
        if getattr(norm, "weight", None) is not None:  # no norm, or a frozen one: nothing to initialise
            nn.init.zeros_(norm.weight)


class PixProEncoder(ResNetStageEncoder):
    """images -> (B, D, S, S) projections of the backbone's ``in_feature`` cells (not normalised)."""

    def __init__(self, backbone: Backbone, in_feature: str, hidden_dim: int, embed_dim: int, norm: str):
        super().__init__(backbone, in_feature)
        self.projection = _projection(self.channels, hidden_dim, embed_dim, norm)
        zero_init_residual_branches_(backbone.bottom_up)

    def forward(self, images):
        return self.projection(self.stage_features(images))


class PixelPropagation(nn.Module):
    """y_i = sum_j max(cos(x_i, x_j), 0)^gamma normalize(g(x_j)) over the cells j of the same view."""

    def __init__(self, channels: int, gamma: float, transform_layers: int, norm: str):
        super().__init__()
        self.gamma = gamma
        if transform_layers == 0:
            self.transform = nn.Identity()
        elif transform_layers == 1:
            self.transform = nn.Conv2d(channels, channels, 1)
        else:
            self.transform = _projection(channels, channels, channels, norm)

    def forward(self, x):
        values = F.normalize(self.transform(x), dim=1).flatten(2)  # (B, D, P)
        cells = F.normalize(x, dim=1).flatten(2)
        similarity = (cells.transpose(1, 2) @ cells).clamp(min=0) ** self.gamma  # (B, P_i, P_j)
        return (values @ similarity.transpose(1, 2)).view_as(x)


def pixpro_loss(predictions, targets, positive):
    """
    -2 x the mean over images of the mean cosine over the image's positive pairs, for (B, D, P)
    normalised ``predictions`` (view a, cells i) and ``targets`` (view b, cells j) and a (B, P_i, P_j)
    bool ``positive`` mask. Images without a positive pair add 0.
    """
    # In float32 at least, also under autocast, as every loss here.
    dtype = torch.promote_types(predictions.dtype, torch.float32)
    with full_precision(predictions):
        cosine = predictions.to(dtype).transpose(1, 2) @ targets.to(dtype)  # (B, P_i, P_j)
        mask = positive.to(cosine.dtype)
        per_image = (cosine * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp(min=1)
        return -2.0 * per_image.mean()


def pixpro_momentum(base, iteration, max_iter):
    """PixPro's momentum at ``iteration``: from ``base`` at 0 up to 1 at ``max_iter`` on a half cosine."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * iteration / max_iter) + 1.0) / 2.0


@META_ARCH_REGISTRY.register()
class PixPro(MomentumMethod):
    checkpoint_prefix = "query_encoder.projection."
    metric_names = (SKIPPED_IMAGES, PIXPRO_MOMENTUM, PIXPRO_POSITIVE_PAIRS)

    @configurable
    def __init__(
        self,
        *,
        propagation: PixelPropagation,
        base_momentum: float,
        max_iter: int,
        positive_radius: float,
        **kwargs,  # MomentumMethod's
    ):
        super().__init__(**kwargs)
        self.propagation = propagation
        self.base_momentum = base_momentum
        self.max_iter = max_iter
        self.positive_radius = positive_radius

    @classmethod
    def from_config(cls, cfg):
        p = cfg.MODEL.PIXPRO
        return {
            **super().from_config(cfg),
            "encoder": PixProEncoder(build_backbone(cfg), p.IN_FEATURE, p.HIDDEN_DIM, p.EMBED_DIM, p.NORM),
            "propagation": PixelPropagation(p.EMBED_DIM, p.PROPAGATION_GAMMA, p.TRANSFORM_LAYERS, p.NORM),
            "base_momentum": p.MOMENTUM,
            "max_iter": cfg.SOLVER.MAX_ITER,
            "positive_radius": p.POSITIVE_RADIUS,
        }

    @classmethod
    def add_config(cls, cfg):
        add_pixpro_config(cfg)

    @classmethod
    def check_ranges(cls, cfg):
        super().check_ranges(cfg)
        p = cfg.MODEL.PIXPRO
        check_stage_name(p.IN_FEATURE, "MODEL.PIXPRO.IN_FEATURE")
        for key in ("HIDDEN_DIM", "EMBED_DIM"):
            at_least(p, "MODEL.PIXPRO", key, 1)
        # Below 1 the gradient of s^gamma is infinite where a similarity is clamped to 0.
        require(p.PROPAGATION_GAMMA >= 1, "MODEL.PIXPRO.PROPAGATION_GAMMA", p.PROPAGATION_GAMMA, "at least 1")
        require(p.TRANSFORM_LAYERS in (0, 1, 2), "MODEL.PIXPRO.TRANSFORM_LAYERS", p.TRANSFORM_LAYERS, "0, 1 or 2")
        require(p.POSITIVE_RADIUS > 0, "MODEL.PIXPRO.POSITIVE_RADIUS", p.POSITIVE_RADIUS, "positive (in feature-bin diagonals)")
        require(0.0 <= p.MOMENTUM <= 1.0, "MODEL.PIXPRO.MOMENTUM", p.MOMENTUM, "in [0, 1]")
        check_norm(p.NORM, p.HIDDEN_DIM, "MODEL.PIXPRO.NORM", "MODEL.PIXPRO.HIDDEN_DIM")

    @classmethod
    def check_config(cls, cfg, world_size):
        # No queue, and each view's batch normalised as the config's norm says (no key to shuffle).
        super().check_config(cfg, world_size)
        check_whole_stage_cells(cfg, cfg.MODEL.PIXPRO.IN_FEATURE, "PixPro")

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        views = [self.normalize(self.stack([x[name] for x in batched_inputs], self.device)) for name in ("view1", "view2")]
        self.note_skipped_images(batched_inputs)
        storage = get_event_storage()
        momentum = pixpro_momentum(self.base_momentum, storage.iter, self.max_iter)
        with torch.no_grad():
            momentum_update_(self.key_encoder, self.query_encoder, momentum)
            targets = [F.normalize(self.key_encoder(view), dim=1).flatten(2) for view in views]
        predictions = [F.normalize(self.propagation(self.query_encoder(view)), dim=1) for view in views]
        rows, cols = predictions[0].shape[-2:]
        positive = self.positive_mask(batched_inputs, rows, cols)
        predictions = [p.flatten(2) for p in predictions]
        loss = pixpro_loss(predictions[0], targets[1], positive) + pixpro_loss(
            predictions[1], targets[0], positive.transpose(1, 2)
        )
        if storage.iter % self.metrics_period == 0:
            self.put_metrics(
                storage, **{PIXPRO_MOMENTUM: momentum, PIXPRO_POSITIVE_PAIRS: positive.sum(dim=(1, 2)).float().mean().item()}
            )
        return {"loss_pixpro": loss}

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]):
        """The online projection of images given the Detectron2 way, normalised: [{"embedding": (D, h, w)}], one per res5 cell."""
        padded = self.padded_images(batched_inputs)
        projections = F.normalize(self.query_encoder(padded.tensor), dim=1)
        return cells_of_each_image(projections, padded.image_sizes, self.query_encoder.stride)

    def positive_mask(self, batched_inputs, rows, cols):
        """(B, P, P) positive pairs of view-1 and view-2 cells, from the views' matrices (``cell_geometry``)."""
        # In float64 on the host, where the mapper's matrices are (float64 is slow on most GPUs); only the
        # mask travels, without waiting for the device.
        matrices = [torch.stack([x[name] for x in batched_inputs]) for name in ("view1_matrix", "view2_matrix")]
        heights = torch.tensor([float(x["height"]) for x in batched_inputs], dtype=torch.float64)
        widths = torch.tensor([float(x["width"]) for x in batched_inputs], dtype=torch.float64)
        mask = pixpro_positive_mask(*matrices, heights, widths, rows, cols, self.query_encoder.stride, self.positive_radius)
        return mask.to(self.device, non_blocking=True)
