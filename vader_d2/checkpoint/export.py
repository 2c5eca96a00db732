"""
Weights in and out of VADeR pretraining.

Out: ``export_to_detectron2`` turns a VADeR training checkpoint (``model_final.pth``) into a Detectron2
model-zoo ``.pkl`` that any D2 ResNet / ResNet-FPN config loads through ``MODEL.WEIGHTS``: the ResNet
(``stem.*``, ``res2.*`` .. ``res5.*``) and, for a method that trains it (VADeR: the ``exported_parts`` of
its class), the FPN (``fpn_lateral*``, ``fpn_output*``) under bare D2 names, as numpy arrays, with
``matching_heuristics`` on. D2 then attaches each bare name to the one model key it is a dotted suffix
of: ``res5.0.conv1.weight`` lands in ``backbone.bottom_up.res5.*`` of an FPN model and in
``roi_heads.res5.*`` of a C4 model alike. Every written name starts with a D2 module name that occurs
once in D2's detectors (``stem``, ``resN``, ``fpn_lateralN``, ``fpn_outputN``); a generic name such as
``norm.weight`` would attach to random heads, so an unrecognised backbone key is an error rather than
something to write.

In: ``convert_resnet_to_vader_init`` turns a torchvision ResNet state dict or a MoCo checkpoint into a
``.pth`` that starts VADeR pretraining through ``MODEL.WEIGHTS``. Those names are written in full
(``query_encoder.backbone.bottom_up.*``) and without matching heuristics: with heuristics a bare
``res2.0.conv1.weight`` would match both the query and the key encoder, which D2 refuses. The key encoder
needs no weights of its own: a fresh run copies the query encoder into it (``VADeRTrainer.resume_or_load``).

BatchNorm buffers travel with the weights. ``running_mean`` / ``running_var`` are the pretrained network's
statistics: FrozenBN uses them as they are, and a BN / SyncBN fine-tune starts from them until PreciseBN
re-estimates them. ``num_batches_tracked`` is written too, although D2's BN layers never read it (their
momentum is fixed): it is a buffer of every BN-family layer, so with it a BN-family downstream model
reports only its task heads as missing, and a missing backbone key stands out. (FrozenBN has no such
buffer; loading into it lists these counters as unused checkpoint keys, and nothing else changes.)
"""

import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict

import torch

from .atomic_io import atomic_write
from ..errors import UserError
from ..modeling.momentum import pretraining_methods

__all__ = [
    "ENCODERS",
    "ConversionSummary",
    "export_to_detectron2",
    "detectron2_weights_from_vader",
    "convert_resnet_to_vader_init",
    "resnet_weights_to_detectron2_names",
    "check_torchvision_conventions",
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
]

# The query encoder is the network gradient descent trained; MoCo, DenseCL and PixPro all transfer it
# (MoCo's `encoder_q`). The key encoder is its momentum average, which lags behind it: offered for
# comparison, not the default.
ENCODERS = ("query", "key")

TORCHVISION_PIXEL_MEAN = (123.675, 116.28, 103.53)
TORCHVISION_PIXEL_STD = (58.395, 57.12, 57.375)

VADER_INIT_PREFIX = "query_encoder.backbone.bottom_up."

_BN_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RESNET_NAME = re.compile(r"^(stem|res[2-5])\.")
_FPN_NAME = re.compile(r"^fpn_(lateral|output)\d+\.")


@dataclass
class ConversionSummary:
    """What a conversion wrote and what it left out (checkpoint key -> reason)."""

    source: str
    output: str
    description: str
    written: Dict[str, str] = field(default_factory=dict)  # written name -> checkpoint key
    skipped: Dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason

    def written_by_part(self):
        def part(name):
            body = name[len(VADER_INIT_PREFIX):] if name.startswith(VADER_INIT_PREFIX) else name
            return "FPN" if _FPN_NAME.match(body) else "ResNet"

        return Counter(part(name) for name in self.written)

    def format(self):
        parts = ", ".join(f"{part} {n}" for part, n in sorted(self.written_by_part().items()))
        lines = [
            f"read  {self.source} ({self.description})",
            f"wrote {self.output}: {len(self.written)} tensors ({parts})",
        ]
        reasons = Counter(self.skipped.values())
        lines.append(f"skipped {len(self.skipped)} checkpoint entries" + (":" if reasons else ""))
        for reason, count in reasons.most_common():
            example = next(k for k, r in self.skipped.items() if r == reason)
            lines.append(f"  {count:5d}  {reason} (e.g. {example})")
        return "\n".join(lines)


def _load(path, what):
    if not os.path.isfile(path):
        raise UserError(f"{what} {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read {what} {path!r} with torch.load: {type(e).__name__}: {e}") from None


def _method_of_checkpoint(model_state):
    """The pretraining method that wrote ``model_state``, told by its query encoder's head (each method's
    ``checkpoint_prefix``)."""
    methods = pretraining_methods()
    for method in methods:
        if any(key.startswith(method.checkpoint_prefix) for key in model_state):
            return method
    names = [method.__name__ for method in methods]
    raise UserError(
        f"the checkpoint's 'model' has no pretraining head of {', '.join(names[:-1])} or {names[-1]} "
        f"({', '.join(method.checkpoint_prefix + '*' for method in methods)}); pass a checkpoint written by "
        "pretraining (e.g. output/vader_pretrain_demo/model_final.pth)"
    )


def detectron2_weights_from_vader(model_state, encoder="query"):
    """
    Pick one encoder's backbone out of a pretraining model state dict and give it bare D2 names.

    Returns ``(weights, method, written, skipped)``: weights maps D2 names to tensors, method is the
    pretraining method (class) that wrote the state, written maps the D2 names back to the checkpoint
    keys, skipped maps every other checkpoint key to the reason. A method that never runs the FPN (its
    ``exported_parts`` lack it: the MoCo baseline, DenseCL, PixPro) exports its ResNet only: its FPN is
    still the random initialisation, and a downstream model should start its FPN from its own.
    """
    if encoder not in ENCODERS:
        raise UserError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    method = _method_of_checkpoint(model_state)
    backbone_prefix = f"{encoder}_encoder.backbone."
    other = [e for e in ENCODERS if e != encoder][0]
    weights, written, skipped = {}, {}, {}
    for key, value in model_state.items():
        if not key.startswith(backbone_prefix):
            if key.startswith(f"{other}_encoder."):
                skipped[key] = f"{other} encoder (exporting the {encoder} encoder)"
            elif key.startswith(f"{encoder}_encoder."):
                skipped[key] = f"{method.__name__} pretraining head (not part of a D2 backbone)"
            else:
                skipped[key] = "pretraining state (queues, skip count, PixPro's propagation module)"
            continue
        name = key[len(backbone_prefix):]
        if name.startswith("bottom_up."):
            name = name[len("bottom_up."):]
        if _FPN_NAME.match(name):
            if "FPN" not in method.exported_parts:
                skipped[key] = f"FPN of {method.__name__} pretraining (never trained)"
                continue
        elif not _RESNET_NAME.match(name):
            raise UserError(
                f"checkpoint key {key!r} is neither a D2 ResNet (stem, res2..res5) nor an FPN "
                "(fpn_lateral*, fpn_output*) parameter; this exporter knows D2 ResNet-FPN backbones only"
            )
        weights[name] = value
        written[name] = key
    if not weights:
        raise UserError(f"the checkpoint has no {backbone_prefix}* weights; is it a VADeR checkpoint?")
    return weights, method, written, skipped


def export_to_detectron2(checkpoint_path, output_path, encoder="query"):
    """VADeR training checkpoint (.pth) -> D2 model-zoo pickle (.pkl). Returns a ConversionSummary."""
    if not output_path.endswith(".pkl"):
        # D2 applies matching heuristics (bare names -> model keys) only to .pkl files.
        raise UserError(f"the output must end in .pkl (D2 reads model-zoo weights from .pkl), got {output_path!r}")
    checkpoint = _load(checkpoint_path, "VADeR checkpoint")
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise UserError(f"{checkpoint_path!r} has no 'model' entry; pass a checkpoint written by VADeR pretraining")
    weights, method, written, skipped = detectron2_weights_from_vader(checkpoint["model"], encoder)
    for key in checkpoint:
        if key != "model":
            skipped[key] = "training state (optimizer, scheduler, iteration)"
    zoo = {
        "model": {name: tensor.detach().cpu().numpy() for name, tensor in weights.items()},
        "__author__": "vader_d2",
        "matching_heuristics": True,
    }
    atomic_write(output_path, lambda f: pickle.dump(zoo, f), what="the exported weights")
    iteration = checkpoint.get("iteration")
    description = f"{method.__name__} pretraining checkpoint, {encoder} encoder" + (
        f", iteration {iteration}" if iteration is not None else ""
    )
    return ConversionSummary(checkpoint_path, output_path, description, written, skipped)


_TORCHVISION_RULES = [
    (re.compile(r"^conv1\.weight$"), r"stem.conv1.weight"),
    (re.compile(rf"^bn1\.{_BN_FIELDS}$"), r"stem.conv1.norm.\1"),
    (re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$"), r"res{stage}.\2.conv\3.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.bn([1-3])\.{_BN_FIELDS}$"), r"res{stage}.\2.conv\3.norm.\4"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"), r"res{stage}.\2.shortcut.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_BN_FIELDS}$"), r"res{stage}.\2.shortcut.norm.\3"),
]


def _detectron2_resnet_name(torchvision_name):
    """torchvision ResNet name -> bare D2 name (torchvision's layer1..4 are D2's res2..res5), or None."""
    for pattern, template in _TORCHVISION_RULES:
        match = pattern.match(torchvision_name)
        if match:
            stage = int(match.group(1)) + 1 if template.startswith("res") else None
            return match.expand(template.replace("{stage}", str(stage)))
    return None


def resnet_weights_to_detectron2_names(state_dict):
    """
    torchvision-style ResNet state dict -> (bare D2 name -> tensor, D2 name -> source key, skipped).
    ``fc.*`` (a classifier or a MoCo projection head) and anything that is not a ResNet parameter is skipped.
    """
    weights, written, skipped = {}, {}, {}
    for key, value in state_dict.items():
        name = _detectron2_resnet_name(key)
        if name is None:
            skipped[key] = "classifier / projection head" if key.startswith("fc.") else "not a torchvision ResNet parameter"
            continue
        weights[name] = value
        written[name] = key
    return weights, written, skipped


def _resnet_state_dict(checkpoint, path):
    """
    The ResNet state dict inside a torchvision state dict or a MoCo checkpoint, with torchvision names.
    Returns ``(state, source_key, description, skipped)``; source_key maps a name back to the file's key.
    """
    skipped = {}
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{path!r} is neither a ResNet state dict nor a checkpoint with a 'state_dict' of tensors "
            "(torchvision: torch.save(model.state_dict()), MoCo: checkpoint_*.pth.tar)"
        )
    if state is not checkpoint:
        skipped.update({k: "training state (epoch, optimizer)" for k in checkpoint if k != "state_dict"})
    description = "torchvision-style ResNet state dict"
    prefix = ""
    for moco_prefix in ("module.encoder_q.", "encoder_q."):
        if any(k.startswith(moco_prefix) for k in state):
            prefix, description = moco_prefix, f"MoCo query encoder {moco_prefix}*"
            break
    else:
        if all(k.startswith("module.") for k in state):
            prefix, description = "module.", "ResNet state dict saved from DataParallel"
    skipped.update({k: "MoCo key encoder / queue" for k in state if not k.startswith(prefix)})
    source_key = {k[len(prefix):]: k for k in state if k.startswith(prefix)}
    return {name: state[key] for name, key in source_key.items()}, source_key, description, skipped


def convert_resnet_to_vader_init(input_path, output_path):
    """
    torchvision ResNet state dict or MoCo checkpoint -> ``.pth`` for ``MODEL.WEIGHTS`` of VADeR pretraining.

    The weights are only valid in a config with torchvision's conventions (``check_torchvision_conventions``).
    Returns a ConversionSummary.
    """
    if not output_path.endswith(".pth"):
        # A .pkl would be read with matching heuristics, and the full names here must load exactly.
        raise UserError(f"the output must end in .pth (loaded by exact names), got {output_path!r}")
    checkpoint = _load(input_path, "ResNet checkpoint")
    state, source_key, description, skipped = _resnet_state_dict(checkpoint, input_path)
    weights, written, not_resnet = resnet_weights_to_detectron2_names(state)
    skipped.update({source_key[name]: reason for name, reason in not_resnet.items()})
    if not weights:
        raise UserError(f"{input_path!r} has no torchvision ResNet parameters (conv1.weight, layer1.0.conv1.weight, ...)")
    init = {
        "model": {VADER_INIT_PREFIX + name: tensor.detach().clone() for name, tensor in weights.items()},
        "__author__": "vader_d2",
    }
    atomic_write(output_path, lambda f: torch.save(init, f), what="the converted weights")
    written = {VADER_INIT_PREFIX + name: source_key[key] for name, key in written.items()}
    return ConversionSummary(input_path, output_path, description, written, skipped)


def check_torchvision_conventions(cfg):
    """
    torchvision ResNets put the stride of a bottleneck in its 3x3 conv and were trained on RGB input
    normalised with ImageNet's mean/std. Shapes match whatever the config says, so a mismatch would load
    silently and compute something else: fail on it instead.
    """
    problems = []
    if cfg.MODEL.RESNETS.DEPTH >= 50 and cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        problems.append("MODEL.RESNETS.STRIDE_IN_1X1 must be False")
    if cfg.INPUT.FORMAT != "RGB":
        problems.append("INPUT.FORMAT must be RGB")
    for key, expected in (("PIXEL_MEAN", TORCHVISION_PIXEL_MEAN), ("PIXEL_STD", TORCHVISION_PIXEL_STD)):
        if [round(float(v), 3) for v in cfg.MODEL[key]] != list(expected):
            problems.append(f"MODEL.{key} must be {list(expected)}")
    if problems:
        raise UserError("torchvision / MoCo weights need torchvision's conventions: " + "; ".join(problems))
