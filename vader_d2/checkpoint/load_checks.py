"""
Did a load give the model its whole pretrained backbone? ``load_weights`` loads as training does with
MODEL.WEIGHTS; ``check_weights_load`` / ``check_backbone_loaded`` fail with one line when a ResNet / FPN
tensor stayed behind, has another shape or has no place in the model.
"""

import re

from detectron2.modeling import build_model

from .checkpointer import VADeRCheckpointer
from ..errors import UserError
from ..modeling.momentum import pretraining_method

__all__ = ["load_weights", "check_weights_load", "check_backbone_loaded"]


def load_weights(model, path, what="checkpoint"):
    """Load ``path`` into ``model`` as training does with MODEL.WEIGHTS; return fvcore's incompatible keys."""
    checkpointer = VADeRCheckpointer(model)
    checkpointer.load(path, what=what)
    return checkpointer.last_load.incompatible


def _model_part(key):
    """Which pretrained part a model key belongs to: 'ResNet', 'FPN', 'key encoder' or None (a task head)."""
    if key.startswith("key_encoder."):
        return "key encoder"
    parts = key.split(".")
    if any(p == "stem" or re.fullmatch(r"res[2-5]", p) for p in parts):
        return "ResNet"
    if any(re.fullmatch(r"fpn_(lateral|output)\d+", p) for p in parts):
        return "FPN"
    return None


def check_weights_load(cfg, path, expect_fpn=True):
    """
    Build ``cfg``'s model on the CPU, load ``path`` into it and fail if a pretrained parameter or buffer
    stayed behind: any ResNet key (of the query encoder, for VADeR), the FPN when ``expect_fpn``, and any
    shape mismatch (D2 skips those with a warning only, e.g. ResNet-50 weights in a ResNet-18 config).
    Returns ``{part: [missing model keys]}`` for the parts allowed to be missing (task heads, ...).
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    checkpointer = VADeRCheckpointer(build_model(cfg))
    checkpointer.load(path)
    return check_backbone_loaded(checkpointer.last_load, cfg, path, expect_fpn=expect_fpn)


def check_backbone_loaded(report, cfg, path, expect_fpn=None, any_shape=True, what=None):
    """
    Fail with one line unless the load that ``report`` (``VADeRCheckpointer.last_load``) describes gave
    the model its whole pretrained backbone from ``path``:

    - every ResNet tensor of the model (the query encoder's, for VADeR) loaded;
    - every FPN tensor loaded, when ``expect_fpn`` (None: when the file holds FPN tensors);
    - no tensor of another shape: any tensor (but VADeR's queue) when ``any_shape``, else ResNet / FPN
      tensors only (a new task head of another size is expected when fine-tuning from a detector's
      checkpoint);
    - no ResNet tensor of the file, nor an FPN tensor when the model has an FPN, left unused: the file
      then comes from another backbone (e.g. ResNet-34 weights hold every ResNet-18 name and more).

    Returns ``{part: [missing model keys]}`` for the parts allowed to be missing (task heads, ...).
    """
    incompatible = report.incompatible
    source = f"{what} {path!r}" if what else repr(path)
    resnets = cfg.MODEL.RESNETS
    model = (
        f"{cfg.MODEL.META_ARCHITECTURE} (MODEL.RESNETS.DEPTH={resnets.DEPTH}, RES2_OUT_CHANNELS={resnets.RES2_OUT_CHANNELS}, "
        f"FPN.OUT_CHANNELS={cfg.MODEL.FPN.OUT_CHANNELS})"
    )
    fix = "export from a checkpoint with the same backbone (MODEL.RESNETS.DEPTH, RES2_OUT_CHANNELS, norms, FPN), or use the config the weights were trained with"
    method = pretraining_method(cfg)
    if method is None and any(k.startswith("query_encoder.") for k in report.file_keys):
        fix = "it is a VADeR training checkpoint: export its backbone first with tools/convert_vader_to_d2.py and load the .pkl"
    missing = {}
    for key in incompatible.missing_keys:
        part = _model_part(key) or "heads and other state"
        missing.setdefault(part, []).append(key)
    # A queue may be sized anew by a run that starts from a checkpoint's weights.
    queue_buffers = method.queue_buffers() if method is not None else ()
    shapes = [
        s for s in incompatible.incorrect_shapes
        if (any_shape and s[0] not in queue_buffers) or _model_part(s[0]) in ("ResNet", "FPN")
    ]
    if shapes:
        key, in_checkpoint, in_model = shapes[0]
        raise UserError(
            f"{source} does not fit {model}: {len(shapes)} tensors have other shapes, e.g. {key} {in_checkpoint} "
            f"in the file vs {in_model} in the model; {fix}"
        )
    file_parts = {_model_part(k) for k in report.file_keys}
    model_has_fpn = any(_model_part(k) == "FPN" for k in report.model_keys)
    if expect_fpn is None:
        expect_fpn = model_has_fpn and "FPN" in file_parts
    required = ["ResNet"] + (["FPN"] if expect_fpn else [])
    absent = [key for part in required for key in missing.pop(part, [])]
    if absent:
        # With matching heuristics D2 leaves a tensor of another shape unmatched: it shows up here.
        raise UserError(
            f"{len(absent)} pretrained backbone tensors of the model {model} did not load from {source} (absent, or "
            f"of another shape), e.g. {absent[0]}; {fix}"
        )
    unused_parts = ("ResNet", "FPN") if model_has_fpn else ("ResNet",)
    unused = [
        k for k in incompatible.unexpected_keys
        # FrozenBN has no batch counter: BN checkpoints list it as unused there, and nothing else changes.
        if _model_part(k) in unused_parts and not k.endswith("num_batches_tracked")
    ]
    if unused:
        raise UserError(
            f"{source} holds {len(unused)} backbone tensors that have no place in the model {model}, e.g. {unused[0]}: "
            f"its backbone is another one; {fix}"
        )
    return missing
