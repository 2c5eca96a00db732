"""Datasets VADeR knows by name, and registration of your own folders of unlabeled images.

Builtin datasets live under ``$DETECTRON2_DATASETS`` (default ``./datasets``), as in Detectron2, and are
registered when this module is imported:

- ``imagenet_train``: ``imagenet/train/**`` (ImageNet's train split, which you provide; labels unused).
- ``coco_2017_train_images`` / ``coco_2017_unlabeled_images``: ``coco/train2017/*`` and
  ``coco/unlabeled2017/*``, COCO's train and unlabeled images (which you provide) without annotations, as
  DenseCL pretrains on COCO. Not ``coco_2017_train``: Detectron2 registers that name for the annotated
  instances, which need ``coco/annotations/instances_train2017.json``; ``_images`` says the same
  images as a plain list. (Detectron2 has no ``coco_2017_unlabeled``; the suffix keeps the two alike.)
- ``vader_demo_photos_train`` / ``_val``: unlabeled real photos, from ``datasets/prepare_demo_photos.py``.
- ``vader_cutpaste_train`` / ``_val``: COCO-format instances (masks, boxes, 4 keypoints each) and
  ``vader_cutpaste_sem_seg_train`` / ``_val``: semantic masks of the same images, both from
  ``datasets/prepare_cutpaste.py``.
- ``vader_lowlabel_unlabeled``: unlabeled cut-paste images for in-domain pretraining;
  ``vader_lowlabel_train_10`` / ``_30`` / ``_100`` and ``vader_lowlabel_sem_seg_train_10`` / ``_30`` /
  ``_100``: the first 10 / 30 / 100 labelled train images (each budget holds the smaller ones), as
  instances and as semantic masks; ``vader_lowlabel_val`` / ``vader_lowlabel_sem_seg_val``: train images
  51-100, for choosing a recipe at the 10 and 30 budgets; ``vader_lowlabel_holdout`` /
  ``vader_lowlabel_sem_seg_holdout``: train images 101-150, in no budget, for choosing at the 100 budget;
  ``vader_lowlabel_test`` / ``vader_lowlabel_sem_seg_test``: the test
  images. All from ``datasets/prepare_lowlabel.py``; no stamp or background photo of the unlabeled images
  is in a labelled one, and the test images' backgrounds are in no other split.

Your own data need no registration: the dataset name ``folder:/data/photos`` is the unlabeled images
under ``/data/photos``, ``coco:/data/train.json`` (or ``coco:/data/train.json:/data/images``) a COCO-format
instances file, and ``subset:/study/budget.json`` the images such a file lists of another dataset
(``register_named_datasets`` registers these names where names are resolved). From Python,
``register_unlabeled_folder(name, folder)`` gives a folder a name of your choice.

Registration never touches the disk: a dataset that is not there yet raises a one-line
:class:`~vader_d2.errors.UserError` when it is first loaded, naming the script that prepares it.
"""

import json
import os
import re

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from ..errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "CUTPASTE_CLASSES",
    "CUTPASTE_KEYPOINT_NAMES",
    "CUTPASTE_KEYPOINT_FLIP_MAP",
    "CUTPASTE_KEYPOINT_OKS_SIGMAS",
    "LOWLABEL_BUDGETS",
    "FOLDER_DATASET_PREFIX",
    "COCO_DATASET_PREFIX",
    "SUBSET_DATASET_PREFIX",
    "NAMED_DATASET_PREFIXES",
    "load_image_folder",
    "resolve_subset_file",
    "subset_file_names",
    "register_unlabeled_folder",
    "register_named_datasets",
    "register_all_builtin",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Classes of the cut-paste dataset: real-photo cut-outs from Debian's tuxpaint-stamps-default, one class
# per stamp folder (see datasets/prepare_cutpaste.py). Category id k in the json and label k in the
# semantic PNGs is CUTPASTE_CLASSES[k - 1]; label 0 is background.
CUTPASTE_CLASSES = ("bird", "mammal", "fish", "insect", "fruit", "vegetable", "flower")
# Every instance carries the four extreme points of its visible mask.
CUTPASTE_KEYPOINT_NAMES = ("top", "bottom", "left", "right")
CUTPASTE_KEYPOINT_FLIP_MAP = (("left", "right"),)
# For TEST.KEYPOINT_OKS_SIGMAS. OKS scores a predicted point by exp(-d^2 / (2 * area * (2 * sigma)^2)).
# The extreme points are exact pixels of the mask, but where a silhouette has a flat side (a back, a
# row of feet) neighbouring pixels are nearly as extreme, so the points are about as well defined as
# COCO's eyes and ears (0.025-0.035) at best and its wrists (0.062) at worst: 0.05 sits in between.
CUTPASTE_KEYPOINT_OKS_SIGMAS = (0.05, 0.05, 0.05, 0.05)
# Label budgets of vader_lowlabel: vader_lowlabel_train_N is the first N labelled train images.
LOWLABEL_BUDGETS = (10, 30, 100)
# vader_lowlabel_val: train images 51-100, for choosing a recipe at the 10 and 30 budgets without the
# test split (they are in the 100-image budget, which therefore has no validation split).
LOWLABEL_VAL_IMAGES = (50, 100)
# vader_lowlabel_holdout: train images 101-150, in no budget: the validation split of the 100-image one.
LOWLABEL_HOLDOUT_IMAGES = (100, 150)

_PREPARE_DEMO_PHOTOS = "run `python datasets/prepare_demo_photos.py` (it writes under $DETECTRON2_DATASETS)"
_PREPARE_CUTPASTE = "run `python datasets/prepare_cutpaste.py` (it writes under $DETECTRON2_DATASETS)"
_PREPARE_LOWLABEL = "run `python datasets/prepare_lowlabel.py` (it writes under $DETECTRON2_DATASETS)"
_IMAGENET_HINT = "set DETECTRON2_DATASETS to the folder that holds imagenet/train/<class>/*.JPEG"
_COCO_HINT = "set DETECTRON2_DATASETS to the folder that holds coco/{}/*.jpg (COCO 2017 images, cocodataset.org)"
_BUILTIN_CONFLICT_HINT = "set DETECTRON2_DATASETS before importing vader_d2 to move the builtin datasets"


def load_image_folder(root, missing_hint="check the folder's path"):
    """Every image under ``root`` (recursively, sorted by path) as ``{"file_name", "image_id"}`` dicts.

    Files are recognised by extension (:data:`IMAGE_EXTENSIONS`, any case) and never opened, so listing
    ImageNet's 1.28M files takes seconds. Hidden files and folders (``.ipynb_checkpoints``, ...) are
    skipped. ``missing_hint`` is the fix the one-line error suggests when nothing is found.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise UserError(f"image folder {root} does not exist: {missing_hint}")
    file_names = []
    visited = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        # Folders reached twice through symlinks (or a symlink loop) are listed once.
        stat = os.stat(folder)
        folder_id = (stat.st_dev, stat.st_ino)
        if folder_id in visited:
            continue
        visited.add(folder_id)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    pending.append(entry.path)
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                    file_names.append(entry.path)
    if not file_names:
        extensions = " ".join(IMAGE_EXTENSIONS)
        raise UserError(f"no images ({extensions}) found under {root}: {missing_hint}")
    file_names.sort()
    return [{"file_name": file_name, "image_id": i} for i, file_name in enumerate(file_names)]


def register_unlabeled_folder(name, root):
    """Register the images under ``root`` (searched recursively) as the unlabeled dataset ``name``.

    Use it for your own pretraining data, then put ``name`` in ``DATASETS.TRAIN``. Registering the same
    name and folder again does nothing; the same name with another folder is an error.
    """
    _register_image_folder(
        name,
        root,
        missing_hint=f"check the folder given to register_unlabeled_folder({name!r}, ...)",
        conflict_hint="register the other folder under another name",
    )


# Dataset names that carry their data, usable wherever a dataset name is (every tool, DATASETS.TRAIN / TEST):
#   folder:/data/photos                      the unlabeled images under that folder (recursively)
#   coco:/data/ann/train.json[:/data/images]  COCO-format instances; images relative to the json's folder
#                                            unless a folder follows the .json
#   subset:/study/budgets/train_30.json      the images that file lists of the dataset it names, in its
#                                            order (a label budget, tools/transfer_study.py writes them)
FOLDER_DATASET_PREFIX = "folder:"
COCO_DATASET_PREFIX = "coco:"
SUBSET_DATASET_PREFIX = "subset:"
NAMED_DATASET_PREFIXES = (FOLDER_DATASET_PREFIX, COCO_DATASET_PREFIX, SUBSET_DATASET_PREFIX)


def register_named_datasets(names):
    """Register each ``folder:``, ``coco:`` or ``subset:`` name among the dataset names ``names`` (paths
    relative to the current folder unless absolute); other names are left alone.

    Called wherever dataset names are resolved, in every process: Detectron2's launch starts fresh
    processes, which know only the datasets registered at import. Lazy like every registration here:
    a missing file or folder is a one-line error when the dataset is loaded.
    """
    for name in names:
        if name.startswith(FOLDER_DATASET_PREFIX):
            path = _path_in_name(name, FOLDER_DATASET_PREFIX, "folder", "folder:/path/to/images")
            _register_image_folder(
                name,
                path,
                missing_hint=f"check the path in the dataset name {name!r}",
                conflict_hint=_RELATIVE_NAME_HINT,
            )
        elif name.startswith(COCO_DATASET_PREFIX):
            _register_coco_json(name)
        elif name.startswith(SUBSET_DATASET_PREFIX):
            _register_subset(name)


_RELATIVE_NAME_HINT = "a relative path in a dataset name means another file after a change of the current folder; use an absolute path"


def _path_in_name(name, prefix, what, example):
    path = name[len(prefix):]
    if not path.strip():
        raise UserError(f"the dataset name {name!r} names no {what}; write {example}")
    return os.path.abspath(os.path.expanduser(path))


def _register_coco_json(name):
    """``coco:JSON[:IMAGE_ROOT]``: Detectron2's COCO-format loader, with one-line errors for a missing or
    malformed file and the ``coco`` evaluator."""
    match = re.fullmatch(r"(.+?\.json)(?::(.+))?", name[len(COCO_DATASET_PREFIX):], flags=re.IGNORECASE)
    if not match:
        raise UserError(
            f"the dataset name {name!r} names no .json file; write coco:/path/to/instances.json "
            "or coco:/path/to/instances.json:/path/to/images"
        )
    json_file = os.path.abspath(os.path.expanduser(match[1]))
    image_root = os.path.abspath(os.path.expanduser(match[2])) if match[2] else os.path.dirname(json_file)

    def load():
        if not os.path.isfile(json_file):
            raise UserError(f"dataset {name!r}: the annotation file {json_file} does not exist")
        if not os.path.isdir(image_root):
            raise UserError(f"dataset {name!r}: the image folder {image_root} does not exist")
        try:
            dicts = load_coco_json(json_file, image_root, name)
        except (ValueError, KeyError, TypeError, AssertionError, IndexError) as e:
            raise UserError(f"dataset {name!r}: {json_file} is not a COCO-format instances file ({type(e).__name__}: {e})") from None
        if not dicts:
            raise UserError(f"dataset {name!r}: {json_file} lists no images")
        return dicts

    _register_once(name, load, _RELATIVE_NAME_HINT, json_file=json_file, image_root=image_root, evaluator_type="coco")


# Metadata a subset takes from its dataset: what its training and evaluation read, not where it came from
# (a subset has no json_file: COCOEvaluator would score it against every image of the whole file).
_NOT_INHERITED = ("name", "json_file")


def _register_subset(name):
    """``subset:FILE.json``: ``{"dataset": NAME, "images": [{"file_name": ..., "image_id": ...}, ...]}``, the
    records of dataset NAME whose files the list holds, in the list's order. With ``"relative_to":
    "image_root"`` the file names are relative to NAME's image folder where it is registered now, so that
    the file stays right when the data move (another machine, another $DETECTRON2_DATASETS)."""
    path = _path_in_name(name, SUBSET_DATASET_PREFIX, "file", "subset:/path/to/subset.json")

    def load():
        parent, wanted = resolve_subset_file(path, f"dataset {name!r}: ")
        by_file = {os.path.realpath(record["file_name"]): record for record in DatasetCatalog.get(parent)}
        missing = [file_name for file_name in wanted if file_name not in by_file]
        if missing:
            raise UserError(f"dataset {name!r}: {len(missing)} images {path} lists are not in {parent!r} (first: {missing[0]})")
        inherited = {k: v for k, v in MetadataCatalog.get(parent).as_dict().items() if k not in _NOT_INHERITED}
        metadata = MetadataCatalog.get(name)
        metadata.set(**{k: v for k, v in inherited.items() if metadata.get(k, None) is None})
        return [by_file[file_name] for file_name in wanted]

    _register_once(name, load, _RELATIVE_NAME_HINT, image_root=path)


def resolve_subset_file(path, where=""):
    """The dataset a ``subset:`` file selects from (registered on the way) and the real paths of the files
    it lists, in its order; ``where`` begins each one-line error."""
    parent, names, relative = _read_subset_file(path)
    register_named_datasets([parent])
    if parent not in DatasetCatalog.list():
        raise UserError(f"{where}{path} selects from {parent!r}, which is not registered")
    image_root = MetadataCatalog.get(parent).get("image_root", None) if relative else None
    if relative and image_root is None:
        raise UserError(f"{where}{path} lists files relative to the image folder of {parent!r}, which has none")
    return parent, [os.path.realpath(os.path.join(image_root, n) if image_root else n) for n in names]


def _read_subset_file(path):
    """The dataset name, the listed file names and whether they are relative to its image folder, of a
    ``subset:`` file; a one-line error when it is missing or not such a file."""
    try:
        with open(path) as f:
            content = json.load(f)
        parent = content["dataset"]
        file_names = [image["file_name"] for image in content["images"]]
        relative = content.get("relative_to") == "image_root"
    except FileNotFoundError:
        raise UserError(f"the subset file {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path} is not a subset file ({type(e).__name__}: {e}); it holds "
            '{"dataset": NAME, "images": [{"file_name": ...}, ...]}'
        ) from None
    if not isinstance(parent, str) or not file_names or not all(isinstance(f, str) for f in file_names):
        raise UserError(f"{path} names no dataset or lists no images")
    return parent, file_names, relative


def subset_file_names(records, image_root):
    """The file names of ``records`` as a subset file writes them: relative to ``image_root`` (with
    ``"relative_to": "image_root"``) when every one lies under it, else as they are. Returns
    ``(names, relative)``."""
    if image_root:
        root = os.path.realpath(image_root)
        names = [os.path.relpath(os.path.realpath(r["file_name"]), root) for r in records]
        if not any(n.startswith(os.pardir + os.sep) or n == os.pardir for n in names):
            return names, True
    return [r["file_name"] for r in records], False


def register_all_builtin(root):
    """Register the builtin datasets (table in the module docstring) under the datasets root ``root``."""
    _register_image_folder(
        "imagenet_train",
        os.path.join(root, "imagenet", "train"),
        missing_hint=_IMAGENET_HINT,
        conflict_hint=_BUILTIN_CONFLICT_HINT,
    )
    for name, folder in (("coco_2017_train_images", "train2017"), ("coco_2017_unlabeled_images", "unlabeled2017")):
        _register_image_folder(
            name,
            os.path.join(root, "coco", folder),
            missing_hint=_COCO_HINT.format(folder),
            conflict_hint=_BUILTIN_CONFLICT_HINT,
        )
    for split in ("train", "val"):
        _register_image_folder(
            f"vader_demo_photos_{split}",
            os.path.join(root, "vader_demo_photos", split),
            missing_hint=_PREPARE_DEMO_PHOTOS,
            conflict_hint=_BUILTIN_CONFLICT_HINT,
        )
        cutpaste_dir = os.path.join(root, "vader_cutpaste")
        _register_cutpaste_instances(
            f"vader_cutpaste_{split}",
            json_file=os.path.join(cutpaste_dir, "annotations", f"instances_{split}.json"),
            image_root=os.path.join(cutpaste_dir, split),
        )
        _register_cutpaste_sem_seg(
            f"vader_cutpaste_sem_seg_{split}",
            image_root=os.path.join(cutpaste_dir, split),
            sem_seg_root=os.path.join(cutpaste_dir, "sem_seg", split),
        )
    lowlabel_dir = os.path.join(root, "vader_lowlabel")
    _register_image_folder(
        "vader_lowlabel_unlabeled",
        os.path.join(lowlabel_dir, "unlabeled"),
        missing_hint=_PREPARE_LOWLABEL,
        conflict_hint=_BUILTIN_CONFLICT_HINT,
    )
    for suffix, split, images in [
        *((f"train_{budget}", "train", (0, budget)) for budget in LOWLABEL_BUDGETS),
        ("val", "train", LOWLABEL_VAL_IMAGES),
        ("holdout", "train", LOWLABEL_HOLDOUT_IMAGES),
        ("test", "test", None),
    ]:
        _register_cutpaste_instances(
            f"vader_lowlabel_{suffix}",
            json_file=os.path.join(lowlabel_dir, "annotations", f"instances_{split}.json"),
            image_root=os.path.join(lowlabel_dir, split),
            prepare_hint=_PREPARE_LOWLABEL,
            images=images,
        )
        _register_cutpaste_sem_seg(
            f"vader_lowlabel_sem_seg_{suffix}",
            image_root=os.path.join(lowlabel_dir, split),
            sem_seg_root=os.path.join(lowlabel_dir, "sem_seg", split),
            prepare_hint=_PREPARE_LOWLABEL,
            images=images,
        )


def _register_image_folder(name, root, missing_hint, conflict_hint):
    root = os.path.normpath(os.fspath(root))
    _register_once(
        name,
        lambda: load_image_folder(root, missing_hint=missing_hint),
        conflict_hint,
        image_root=root,
        evaluator_type="none",
    )


def _register_cutpaste_instances(name, json_file, image_root, prepare_hint=_PREPARE_CUTPASTE, images=None):
    """Cut-paste instances; with ``images=(start, stop)``, only those images of the split (a label budget)."""

    def load():
        _require_prepared(prepare_hint, json_file, image_root)
        with open(json_file) as f:
            categories = sorted(json.load(f)["categories"], key=lambda category: category["id"])
        found = tuple(category["name"] for category in categories)
        if found != CUTPASTE_CLASSES:
            raise UserError(
                f"{json_file} holds classes {list(found)}, this vader_d2 expects "
                f"{list(CUTPASTE_CLASSES)}: {prepare_hint} again to rebuild it"
            )
        return _selected_images(load_coco_json(json_file, image_root, name), images, name, image_root)

    # A budget leaves json_file out: COCOEvaluator would score it against every image of the json file,
    # and without it converts the budget's own images.
    json_metadata = {"json_file": json_file} if images is None else {}
    _register_once(
        name,
        load,
        _BUILTIN_CONFLICT_HINT,
        **json_metadata,
        image_root=image_root,
        evaluator_type="coco",
        # A list, as load_coco_json sets it: Detectron2 refuses to overwrite metadata with a different value.
        thing_classes=list(CUTPASTE_CLASSES),
        keypoint_names=CUTPASTE_KEYPOINT_NAMES,
        keypoint_flip_map=CUTPASTE_KEYPOINT_FLIP_MAP,
    )


def _register_cutpaste_sem_seg(name, image_root, sem_seg_root, prepare_hint=_PREPARE_CUTPASTE, images=None):
    """Cut-paste semantic masks; with ``images=(start, stop)``, only those of these images (by file name)."""

    def load():
        _require_prepared(prepare_hint, sem_seg_root, image_root)
        return _selected_images(
            load_sem_seg(sem_seg_root, image_root, gt_ext="png", image_ext="jpg"), images, name, image_root
        )

    _register_once(
        name,
        load,
        _BUILTIN_CONFLICT_HINT,
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        stuff_classes=["background", *CUTPASTE_CLASSES],
        ignore_label=255,
    )


def _require_prepared(prepare_hint, *paths):
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"{path} does not exist: {prepare_hint}")


def _selected_images(dicts, images, name, image_root):
    """``dicts[start:stop]`` for ``images=(start, stop)``, all of ``dicts`` for None. load_coco_json lists
    images by id and load_sem_seg by file name: both are the order prepare_lowlabel.py wrote them in."""
    if images is None:
        return dicts
    start, stop = images
    if len(dicts) < stop:
        raise UserError(
            f"{name} is images {start + 1}-{stop} of {image_root}, which holds {len(dicts)}: run "
            f"`python datasets/prepare_lowlabel.py --num-train {stop}` (or more) to make them"
        )
    return dicts[start:stop]


def _register_once(name, loader, conflict_hint, **metadata):
    """Register ``name``; again with the same metadata is a no-op, with different metadata an error."""
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name)
        if all(registered.get(key) == value for key, value in metadata.items()):
            return
        raise UserError(
            f"dataset {name!r} is already registered with image_root={registered.get('image_root')!r}, "
            f"not {metadata['image_root']!r}: {conflict_hint}"
        )
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


register_all_builtin(os.getenv("DETECTRON2_DATASETS", "datasets"))
