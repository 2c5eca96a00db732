"""
Checkpoints: written whole or not at all, loaded with a one-line error, converted to and from Detectron2
and torchvision.

- ``checkpointer.py``: ``VADeRCheckpointer``, Detectron2's checkpointer with atomic saves and a
  ``LoadReport`` of what a load matched, skipped or left out;
- ``load_checks.py``: ``load_weights``, ``check_weights_load``, ``check_backbone_loaded``: the backbone
  arrived whole, or one line says what did not;
- ``export.py``: a pretraining checkpoint to a Detectron2 ``.pkl`` (``export_to_detectron2``), a
  torchvision ResNet to a pretraining start (``convert_resnet_to_vader_init``);
- ``atomic_io.py``: ``atomic_write`` and ``checkpoint_problem`` (a missing, damaged or foreign file).
"""

from .atomic_io import atomic_write, checkpoint_problem
from .checkpointer import EXPECTED_CHECKPOINT, LoadReport, VADeRCheckpointer
from .export import (
    ConversionSummary,
    check_torchvision_conventions,
    convert_resnet_to_vader_init,
    detectron2_weights_from_vader,
    export_to_detectron2,
    resnet_weights_to_detectron2_names,
)
from .load_checks import check_backbone_loaded, check_weights_load, load_weights

__all__ = [
    "VADeRCheckpointer",
    "LoadReport",
    "EXPECTED_CHECKPOINT",
    "load_weights",
    "check_weights_load",
    "check_backbone_loaded",
    "export_to_detectron2",
    "detectron2_weights_from_vader",
    "convert_resnet_to_vader_init",
    "resnet_weights_to_detectron2_names",
    "check_torchvision_conventions",
    "ConversionSummary",
    "atomic_write",
    "checkpoint_problem",
]
