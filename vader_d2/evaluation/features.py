"""
Frozen dense features of any checkpoint, the same way for every model a comparison holds.

A VADeR dense checkpoint, a global (MoCo) baseline checkpoint, a random initialisation and an exported
Detectron2 ``.pkl`` all give a D2 ResNet-FPN backbone; only dense VADeR checkpoints also have a dense
head. So every model is read through the same fixed choice, and VADeR additionally through its head:

- ``"p2"``: the FPN's finest output (stride 4), L2-normalised per cell. The global baseline never runs
  its FPN (MoCo transfers only the ResNet), so its p2 is its trained ResNet seen through the FPN's
  random initialisation: a fixed random linear map (1x1 laterals, top-down sums, 3x3 outputs, no
  non-linearity) of res2..res5, which keeps what the ResNet encodes. A random-init model's p2 is the
  same map over a random ResNet.
- ``"head"``: the dense head's embedding (already L2-normalised), what VADeR's loss trained.

Both are (C, ceil(H / 4), ceil(W / 4)) maps of unit vectors for an image of H x W pixels.
"""

import logging
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from detectron2.modeling import build_model
from detectron2.structures import ImageList
from detectron2.utils.env import seed_all_rng

from ..checkpoint.load_checks import load_weights
from ..config import OUTPUT_STRIDE
from ..errors import UserError
from ..modeling.momentum import MomentumMethod

__all__ = ["FEATURE_SOURCES", "DenseFeatureExtractor", "build_feature_extractor"]

logger = logging.getLogger(__name__)

FEATURE_SOURCES = ("head", "p2")


class DenseFeatureExtractor:
    """
    Call with a uint8 RGB image tensor (3, H, W); returns ``{source: (C, ceil(H/4), ceil(W/4))}``, unit
    vectors per cell, for each of ``sources``, from one forward pass of the frozen network.
    """

    def __init__(self, backbone, head, sources: Sequence[str], pixel_mean, pixel_std, input_format: str):
        """
        Args:
            backbone: a D2 FPN backbone with a stride-4 ``p2`` output, in eval mode.
            head: VADeR's DenseHead over ``backbone``'s outputs, or None.
            sources: a subset of FEATURE_SOURCES ("head" needs ``head``).
            pixel_mean, pixel_std: the model's input normalisation, in ``input_format`` channel order.
            input_format: "RGB" or "BGR", the channel order the model expects.
        """
        unknown = [s for s in sources if s not in FEATURE_SOURCES]
        if unknown or not sources:
            raise UserError(f"feature sources must be a non-empty subset of {list(FEATURE_SOURCES)}, got {list(sources)}")
        if "head" in sources and head is None:
            raise UserError("feature source 'head' needs a dense VADeR model (or another method with a dense feature head); use 'p2'")
        if backbone.output_shape().get("p2") is None or backbone.output_shape()["p2"].stride != OUTPUT_STRIDE:
            raise UserError(f"feature source 'p2' needs a ResNet-FPN backbone with a stride-{OUTPUT_STRIDE} 'p2' output")
        self.backbone = backbone
        self.head = head
        self.sources = tuple(sources)
        self.pixel_mean = torch.as_tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self.pixel_std = torch.as_tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1)
        self.input_format = input_format

    @property
    def device(self):
        return next(self.backbone.parameters()).device

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 (3, H, W) RGB image, got {tuple(image.shape)} {image.dtype}")
        if self.input_format == "BGR":
            image = image.flip(0)
        height, width = image.shape[-2:]
        normalised = (image.float() - self.pixel_mean) / self.pixel_std
        padded = ImageList.from_tensors([normalised.to(self.device)], self.backbone.size_divisibility)
        features = self.backbone(padded.tensor)
        cells = (-(-height // OUTPUT_STRIDE), -(-width // OUTPUT_STRIDE))
        out = {}
        if "head" in self.sources:
            out["head"] = self.head(features)[0]
        if "p2" in self.sources:
            out["p2"] = F.normalize(features["p2"][0], dim=0)
        return {name: f[:, : cells[0], : cells[1]].float().cpu() for name, f in out.items()}


def _missing_backbone_keys(missing_keys: List[str]) -> List[str]:
    # The key encoder of a VADeR model is never used for features; everything else under "bottom_up."
    # is the ResNet the features come from.
    return [k for k in missing_keys if "bottom_up." in k and not k.startswith("key_encoder.")]


def build_feature_extractor(cfg, sources: Sequence[str] = None, seed: int = 0) -> DenseFeatureExtractor:
    """
    Build ``cfg``'s model, load ``cfg.MODEL.WEIGHTS`` (empty: the seeded random initialisation) and wrap
    its frozen backbone (and dense head, for a dense VADeR model) as a DenseFeatureExtractor.

    ``sources`` defaults to every source the model has: ("head", "p2") for a dense VADeR model, ("p2",)
    otherwise. A ``.pkl`` (D2 model-zoo format, e.g. from tools/convert_vader_to_d2.py) holds bare
    backbone names and is loaded into the backbone alone; it has no dense head, so its source is "p2".
    """
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but no CUDA GPU is visible; add MODEL.DEVICE cpu to the command line")
    seed_all_rng(seed)
    model = build_model(cfg)
    model.eval().requires_grad_(False)
    backbone = model.backbone
    # A method's dense head at stride 4 (VADeR's), the feature source "head".
    head_name = model.feature_head if isinstance(model, MomentumMethod) else None
    head = model.get_submodule(head_name) if head_name else None

    weights = cfg.MODEL.WEIGHTS
    if weights:
        from_zoo_pickle = weights.endswith(".pkl")
        incompatible = load_weights(backbone if from_zoo_pickle else model, weights)
        missing = incompatible.missing_keys
        absent = _missing_backbone_keys(missing)
        if absent:
            raise UserError(
                f"MODEL.WEIGHTS={weights!r} lacks {len(absent)} ResNet tensors of this config's model "
                f"(e.g. {absent[0]}); pass the config the checkpoint was trained with"
            )
        if from_zoo_pickle or (head_name and any(k.startswith(f"{head_name}.") for k in missing)):
            head = None
        if any(".fpn_" in k or k.startswith("fpn_") for k in missing):
            logger.warning(f"{weights} has no FPN weights: 'p2' reads its ResNet through the FPN's random initialisation")
    if sources is None:
        sources = FEATURE_SOURCES if head is not None else ("p2",)
    return DenseFeatureExtractor(backbone, head, sources, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT)
