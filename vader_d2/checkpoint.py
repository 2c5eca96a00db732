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

import contextlib
import os
import pickle
import re
import secrets
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from .errors import UserError
from .modeling.momentum import pretraining_method, pretraining_methods

__all__ = [
    "ENCODERS",
    "ConversionSummary",
    "export_to_detectron2",
    "detectron2_weights_from_vader",
    "convert_resnet_to_vader_init",
    "resnet_weights_to_detectron2_names",
    "check_torchvision_conventions",
    "load_weights",
    "check_weights_load",
    "check_backbone_loaded",
    "checkpoint_problem",
    "atomic_write",
    "VADeRCheckpointer",
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


# ---------------------------------------------------------------------------------------------------
# Writing and reading checkpoint files safely


class _ErrorRecordingFile:
    """A binary file whose first OSError on write is kept: torch.save reports a failed write (a full
    disk) only as a RuntimeError of its zip writer ("unexpected pos ..."), which hides the cause."""

    def __init__(self, file):
        self.file = file
        self.error = None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.file.flush()


def atomic_write(path, write, what="file"):
    """
    Write ``path`` so that it either holds everything ``write(binary_file)`` wrote or is left as it was:
    the data go to a temporary file in the same folder, are flushed and fsync'ed, and the temporary file
    is renamed to ``path`` (atomic on POSIX file systems). On failure (e.g. a full disk) the temporary
    file is removed and a one-line UserError names the cause.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    try:
        os.makedirs(folder, exist_ok=True)
        # Created as open() creates files (mode 0666 less the umask), unlike tempfile's private 0600.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}; check that its folder can be written") from None
    recorder = None
    try:
        with os.fdopen(fd, "wb") as f:
            recorder = _ErrorRecordingFile(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_folder(folder)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        cause = (recorder.error if recorder is not None else None) or (e if isinstance(e, OSError) else None)
        if cause is None:
            raise
        raise UserError(
            f"cannot write {what} {path}: {cause.strerror or cause} (errno {cause.errno}); nothing was written under "
            "that name; free space on its file system or choose another folder"
        ) from None


def _fsync_folder(folder):
    # The rename is durable only once the folder's entry is on disk; not every file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# atomic_write's temporary files: ".NAME.<random>.tmp" beside NAME.
TEMPORARY_SUFFIX = ".tmp"

EXPECTED_CHECKPOINT = (
    "expected a .pth written by torch.save (a VADeR or Detectron2 training checkpoint, or the output of "
    "tools/convert_vader_to_d2.py --from-resnet) or a Detectron2 model-zoo .pkl (tools/convert_vader_to_d2.py)"
)


def checkpoint_problem(path):
    """
    Why ``path`` is not a complete checkpoint file, or None if it is (as far as can be told without
    unpickling it). torch.save writes a zip archive: a truncated one lacks its central directory, and
    one torn by two writers fails the CRC of a record, which ``torch.load`` does not check, so every
    record is read and its CRC compared. Other files (.pkl, legacy torch format) are checked when loaded.
    """
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isfile(path):
        return "is not a file"
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    if path.endswith(".pkl"):
        return None
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                return "is truncated: its zip archive has no end (an interrupted write, or one still running)"
        try:  # torch's legacy (pre-zip) format
            torch.load(path, map_location="cpu")
        except Exception as e:
            return f"cannot be read by torch.load ({short_error(e)}): truncated, or not a checkpoint"
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"is a damaged zip archive ({short_error(e)})"
    if bad is not None:
        return f"is damaged: record {bad} fails its CRC check (a torn or interrupted write)"
    return None


def short_error(error):
    """The exception's type and first sentence (torch's messages run on for several)."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(". ")[0][:300] if lines else ""
    return f"{type(error).__name__}: {text}".rstrip(": ")


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
