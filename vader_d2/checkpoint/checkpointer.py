"""
``VADeRCheckpointer``: Detectron2's DetectionCheckpointer with atomic saves, one-line errors for files that
are not checkpoints, and a record of what the last load left out (``LoadReport``).
"""

import os
from dataclasses import dataclass

import torch

from detectron2.checkpoint import DetectionCheckpointer

from .atomic_io import atomic_write, checkpoint_problem, short_error
from ..errors import UserError

__all__ = ["EXPECTED_CHECKPOINT", "LoadReport", "VADeRCheckpointer"]

EXPECTED_CHECKPOINT = (
    "expected a .pth written by torch.save (a VADeR or Detectron2 training checkpoint, or the output of "
    "tools/convert_vader_to_d2.py --from-resnet) or a Detectron2 model-zoo .pkl (tools/convert_vader_to_d2.py)"
)


class VADeRCheckpointer(DetectionCheckpointer):
    """
    Detectron2's DetectionCheckpointer, plus:

    - ``save`` writes atomically (``atomic_write``): a crash or a full disk never leaves a partial file
      under a checkpoint's name, and ``last_checkpoint`` is replaced only after the checkpoint is complete;
    - files that are missing, truncated or not checkpoints at all are reported as one UserError line
      naming ``what`` was read (``load(path, what="MODEL.WEIGHTS")``) and what was expected;
    - ``last_load`` keeps what the last load left out (Detectron2 only logs it): ``incompatible``
      (fvcore's missing / unexpected keys and incorrect shapes) and ``file_keys`` (the names in the file).
    """

    def __init__(self, model, save_dir="", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.last_load = None
        self._what = "checkpoint"

    def save(self, name, **kwargs):
        # fvcore's save opens the final file name for writing, so an interrupted write leaves a partial
        # file there; this writes the same content (model, checkpointables, extra data) atomically.
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f), what="checkpoint")
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename):
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()), what="the checkpoint tag")

    def load(self, path, *args, what="checkpoint", **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise UserError(f"{what} {path!r} {checkpoint_problem(path)}; give the path of a .pth/.pkl checkpoint")
        self._what = what
        try:
            return super().load(path, *args, **kwargs)
        except OSError as e:  # a URL that cannot be fetched
            raise UserError(f"cannot read {what} {path!r}: {short_error(e)}") from None
        finally:
            self._what = "checkpoint"

    def _load_file(self, filename):
        # The one place Detectron2 reads the file: a truncated or foreign file raises whatever its
        # unpickler or zip reader raises (EOFError, UnpicklingError, RuntimeError, ...) with a traceback.
        try:
            loaded = super()._load_file(filename)
        except Exception as e:
            raise UserError(f"{self._what} {filename!r} cannot be read as a checkpoint ({short_error(e)}); {EXPECTED_CHECKPOINT}") from None
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise UserError(f"{self._what} {filename!r} holds no state dict of weights; {EXPECTED_CHECKPOINT}")
        return loaded

    def _load_model(self, checkpoint):
        # Overridden to keep the incompatible keys (Detectron2 only logs them) and to turn Detectron2's
        # ValueErrors about the file's content into one line.
        file_keys = list(checkpoint["model"])
        try:
            incompatible = super()._load_model(checkpoint)
        except ValueError as e:
            raise UserError(f"{self._what} {self._loading_path()}cannot be loaded into this model: {short_error(e)}") from None
        self.last_load = LoadReport(incompatible, file_keys, list(self.model.state_dict()))
        return incompatible

    def _loading_path(self):
        parsed = self._parsed_url_during_load
        return f"{parsed.geturl()!r} " if parsed is not None else ""


@dataclass
class LoadReport:
    """What one load did: fvcore's incompatible keys, the names in the file and the model's names."""

    incompatible: object  # fvcore's _IncompatibleKeys
    file_keys: list
    model_keys: list
