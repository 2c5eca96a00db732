"""The dense head: FPN levels merged at stride 4 into one L2-normalised embedding per output cell."""

from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm

from ..config import OUTPUT_STRIDE


class DenseHead(nn.Module):
    """
    Each FPN level gets a 1x1 lateral conv and is upsampled to the finest level (p2, stride 4); their sum
    goes through ``num_convs`` 3x3 convs and a 1x1 projection to ``embed_dim``, then L2 normalisation.
    Most of the work happens at stride 4, so the lateral convs are 1x1: FPN outputs are already
    3x3-smoothed, and the head stays light next to the backbone (the paper's 128 x 56 x 56 output for a
    224 x 224 input).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: List[str],
        conv_dim: int,
        num_convs: int,
        norm: str,
        embed_dim: int,
    ):
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.VADER.HEAD.IN_FEATURES {missing} are not backbone outputs {list(input_shape)}")
        self.in_features = in_features
        self.finest_feature = min(in_features, key=lambda f: input_shape[f].stride)
        if input_shape[self.finest_feature].stride != OUTPUT_STRIDE:
            # The views' correspondences are computed on the stride-4 grid: a coarser head would silently
            # compare cells of another grid.
            raise ValueError(
                f"MODEL.VADER.HEAD.IN_FEATURES {in_features} must include the stride-{OUTPUT_STRIDE} level (p2); "
                f"the finest given is {self.finest_feature}, stride {input_shape[self.finest_feature].stride}"
            )

        def conv(in_channels, kernel_size):
            layer = Conv2d(
                in_channels,
                conv_dim,
                kernel_size=kernel_size,
                padding=kernel_size // 2,
                bias=not norm,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_msra_fill(layer)
            return layer

        self.laterals = nn.ModuleDict({f: conv(input_shape[f].channels, 1) for f in in_features})
        self.fuse = nn.Sequential(*[conv(conv_dim, 3) for _ in range(num_convs)])
        self.projection = Conv2d(conv_dim, embed_dim, kernel_size=1)
        weight_init.c2_msra_fill(self.projection)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.VADER.HEAD
        return {
            "input_shape": input_shape,
            "in_features": list(head.IN_FEATURES),
            "conv_dim": head.CONV_DIM,
            "num_convs": head.NUM_CONVS,
            "norm": head.NORM,
            "embed_dim": cfg.MODEL.MOMENTUM_CONTRAST.EMBED_DIM,
        }

    def forward(self, features):
        size = features[self.finest_feature].shape[-2:]
        merged = None
        for name in self.in_features:
            x = self.laterals[name](features[name])
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            merged = x if merged is None else merged + x
        return F.normalize(self.projection(self.fuse(merged)), dim=1)
