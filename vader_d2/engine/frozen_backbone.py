"""
The frozen-backbone protocol (``MODEL.FROZEN_BACKBONE: True``): the pretrained ResNet *and* FPN are a
fixed feature extractor and only the task head trains — the paper's "feature extractor" setting, which
judges the pretrained features themselves rather than how well they serve as an initialisation.

Detectron2's ``MODEL.BACKBONE.FREEZE_AT`` freezes ResNet stages only, never the FPN, so the freezing is
ours: after the model is built (before any weights are loaded), every batch norm of ``model.backbone``
becomes Detectron2's ``FrozenBatchNorm2d`` and every backbone parameter stops requiring a gradient.

Batch-norm statistics: a frozen batch norm normalises with the running mean and variance it loads from
MODEL.WEIGHTS (the statistics of pretraining; a random initialisation's are mean 0, variance 1) and never
updates them, in training as in evaluation. Plain batch norm in eval mode computes the same thing, but
``model.train()`` would switch it back to batch statistics and update the running ones; the frozen
module has no training mode. For the same reason ``TEST.PRECISE_BN`` finds no backbone batch norm to
re-estimate: it only touches batch norms of the head, if the head has any.
"""

import logging

from detectron2.layers import FrozenBatchNorm2d

from ..errors import UserError

__all__ = ["freeze_backbone"]

logger = logging.getLogger(__name__)


def freeze_backbone(model):
    """Freeze ``model.backbone`` (ResNet and FPN) in place, as described above; returns ``model``."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise UserError(
            f"MODEL.FROZEN_BACKBONE needs a model with a backbone (GeneralizedRCNN, SemanticSegmentor, ...), "
            f"got {type(model).__name__}"
        )
    # convert_frozen_batchnorm replaces the batch norms among the backbone's children in place (it only
    # returns a new module when given a batch norm itself, which a backbone never is).
    FrozenBatchNorm2d.convert_frozen_batchnorm(backbone)
    backbone.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    if not trained:
        raise UserError(f"MODEL.FROZEN_BACKBONE leaves nothing to train: {type(model).__name__} has no parameters outside its backbone")
    # Detectron2 logs the model before it is frozen; this says what changed.
    frozen_norms = sum(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    logger.info(
        f"MODEL.FROZEN_BACKBONE: the backbone's {sum(p.numel() for p in backbone.parameters())} parameters are frozen "
        f"and its {frozen_norms} batch norms use their loaded statistics; training the "
        f"{sum(p.numel() for p in trained)} parameters outside it"
    )
    return model
