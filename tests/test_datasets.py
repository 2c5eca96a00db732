"""Dataset registration, and the prepared demo-photo and cut-paste datasets."""

import hashlib
import json
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from vader_d2.data.datasets import (
    CUTPASTE_CLASSES,
    CUTPASTE_KEYPOINT_NAMES,
    CUTPASTE_KEYPOINT_OKS_SIGMAS,
    load_image_folder,
    register_all_builtin,
    register_unlabeled_folder,
)
from vader_d2.errors import UserError

from .helpers import assert_second_preparation_is_a_no_op, datasets_script_json, prepare_dataset


@pytest.fixture
def dataset_name():
    """A fresh dataset name, unregistered again after the test."""
    name = f"test_unlabeled_{uuid.uuid4().hex[:8]}"
    yield name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"not decoded")


def test_load_image_folder_lists_images_recursively_in_order(tmp_path):
    images = ["a/b/deep.JPG", "a/shallow.png", "top.webp", "z/photo.jpeg", "z/scan.TIFF"]
    ignored = ["notes.txt", "a/b/labels.json", "noext", ".hidden/secret.jpg", "a/.ipynb_checkpoints/x.png"]
    for relative in images + ignored:
        touch(tmp_path / relative)
    os.makedirs(tmp_path / "folder.jpg")  # a folder is not an image, whatever its name

    dicts = load_image_folder(str(tmp_path))

    assert [d["file_name"] for d in dicts] == sorted(str(tmp_path / p) for p in images)
    assert [d["image_id"] for d in dicts] == list(range(len(images)))
    assert all(os.path.isabs(d["file_name"]) for d in dicts)


def test_load_image_folder_errors_name_the_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="nowhere") as error:
        load_image_folder(str(missing))
    assert "\n" not in str(error.value)

    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(UserError, match="no images") as error:
        load_image_folder(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(error.value)


def test_register_unlabeled_folder(tmp_path, dataset_name):
    touch(tmp_path / "one.jpg")
    touch(tmp_path / "sub" / "two.png")

    register_unlabeled_folder(dataset_name, str(tmp_path))
    register_unlabeled_folder(dataset_name, str(tmp_path) + os.sep)  # same folder: a no-op

    found = [os.path.basename(d["file_name"]) for d in DatasetCatalog.get(dataset_name)]
    assert found == ["one.jpg", "two.png"]
    metadata = MetadataCatalog.get(dataset_name)
    assert metadata.image_root == str(tmp_path)
    assert metadata.evaluator_type == "none"
    with pytest.raises(UserError, match=dataset_name):
        register_unlabeled_folder(dataset_name, str(tmp_path / "sub"))


def test_registration_is_lazy(tmp_path, dataset_name):
    register_unlabeled_folder(dataset_name, str(tmp_path / "not_yet"))  # no disk access here
    os.makedirs(tmp_path / "not_yet")
    touch(tmp_path / "not_yet" / "late.jpg")
    assert len(DatasetCatalog.get(dataset_name)) == 1


def test_builtin_datasets_moved_after_import_is_an_error(tmp_path):
    with pytest.raises(UserError, match="DETECTRON2_DATASETS"):
        register_all_builtin(str(tmp_path))


def test_missing_builtin_datasets_name_their_prepare_script(tmp_path):
    """With an empty datasets root, loading each builtin dataset fails with one line saying what to run."""
    script = """
import json, sys
from detectron2.data import DatasetCatalog
from vader_d2.errors import UserError
import vader_d2.data.datasets
errors = {}
for name in sys.argv[1:]:
    try:
        DatasetCatalog.get(name)
    except UserError as e:
        errors[name] = str(e)
print(json.dumps(errors))
"""
    expected_hint = {
        "imagenet_train": "DETECTRON2_DATASETS",
        "coco_2017_train_images": "coco/train2017/*.jpg",
        "coco_2017_unlabeled_images": "coco/unlabeled2017/*.jpg",
        "vader_demo_photos_train": "prepare_demo_photos.py",
        "vader_demo_photos_val": "prepare_demo_photos.py",
        "vader_cutpaste_train": "prepare_cutpaste.py",
        "vader_cutpaste_val": "prepare_cutpaste.py",
        "vader_cutpaste_sem_seg_train": "prepare_cutpaste.py",
        "vader_cutpaste_sem_seg_val": "prepare_cutpaste.py",
        "vader_lowlabel_unlabeled": "prepare_lowlabel.py",
        "vader_lowlabel_train_10": "prepare_lowlabel.py",
        "vader_lowlabel_sem_seg_train_100": "prepare_lowlabel.py",
        "vader_lowlabel_test": "prepare_lowlabel.py",
        "vader_lowlabel_sem_seg_test": "prepare_lowlabel.py",
    }
    errors = datasets_script_json(script, *expected_hint, datasets_root=tmp_path)
    assert set(errors) == set(expected_hint)
    for name, hint in expected_hint.items():
        message = errors[name]
        assert hint in message and str(tmp_path) in message and "\n" not in message, message


def test_cutpaste_constants_agree():
    assert len(CUTPASTE_KEYPOINT_OKS_SIGMAS) == len(CUTPASTE_KEYPOINT_NAMES) == 4
    assert len(set(CUTPASTE_CLASSES)) == len(CUTPASTE_CLASSES)


# ---------------------------------------------------------------------------------------------------
# The prepared datasets. `make test` prepares them first; a bare pytest run prepares what is missing.


@pytest.fixture(scope="module")
def demo_manifest():
    return prepare_dataset("prepare_demo_photos.py", "vader_demo_photos")


@pytest.fixture(scope="module")
def cutpaste_manifest(demo_manifest):
    return prepare_dataset("prepare_cutpaste.py", "vader_cutpaste")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_demo_photos_splits_are_decodable_and_disjoint(demo_manifest):
    digests = {}
    for split in ("train", "val"):
        dicts = DatasetCatalog.get(f"vader_demo_photos_{split}")
        assert len(dicts) == demo_manifest["counts"][split] > 0
        for d in dicts:
            with Image.open(d["file_name"]) as image:
                image.load()
                assert image.mode == "RGB" and max(image.size) <= 640
        digests[split] = {sha256(d["file_name"]) for d in dicts}
    assert not digests["train"] & digests["val"]


def test_demo_photos_second_run_is_a_no_op(demo_manifest):
    assert_second_preparation_is_a_no_op("prepare_demo_photos.py")


def mask_of(segmentation):
    return mask_util.decode(segmentation).astype(bool)


@pytest.mark.parametrize("split", ["train", "val"])
def test_cutpaste_instances_are_exact(cutpaste_manifest, split):
    metadata = MetadataCatalog.get(f"vader_cutpaste_{split}")
    dicts = DatasetCatalog.get(f"vader_cutpaste_{split}")
    with open(metadata.json_file) as f:
        coco = json.load(f)
    raw_annotations = {}
    for annotation in coco["annotations"]:
        raw_annotations.setdefault(annotation["image_id"], []).append(annotation)

    assert len(dicts) == cutpaste_manifest["counts"]["images"][split]
    assert metadata.thing_classes == list(CUTPASTE_CLASSES)
    assert metadata.keypoint_names == CUTPASTE_KEYPOINT_NAMES
    assert [c["name"] for c in coco["categories"]] == list(CUTPASTE_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(CUTPASTE_CLASSES) + 1))
    for record in dicts:
        assert os.path.isfile(record["file_name"])
        raw = raw_annotations[record["image_id"]]
        assert 1 <= len(record["annotations"]) == len(raw) <= 4
        union = np.zeros((record["height"], record["width"]), int)
        for loaded, annotation in zip(record["annotations"], raw):
            mask = mask_of(annotation["segmentation"])
            assert mask.shape == (record["height"], record["width"])
            assert annotation["area"] == mask_util.area(annotation["segmentation"]) == mask.sum() > 0
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert annotation["iscrowd"] == 0 and annotation["num_keypoints"] == 4
            x, y, visibility = np.array(annotation["keypoints"]).reshape(4, 3).T
            assert (visibility == 2).all() and mask[y, x].all()
            assert (y[0], y[1], x[2], x[3]) == (ys.min(), ys.max(), xs.min(), xs.max())
            # What Detectron2 hands to a model: contiguous class ids, keypoints at pixel centres.
            assert loaded["category_id"] == annotation["category_id"] - 1
            loaded_xy = np.array(loaded["keypoints"]).reshape(4, 3)[:, :2]
            assert np.allclose(loaded_xy, np.stack([x, y], axis=1) + 0.5)
            assert not (union.astype(bool) & mask).any(), "instances of one image must not overlap"
            union[mask] = annotation["category_id"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_cutpaste_semantic_masks_match_instances(cutpaste_manifest, split):
    metadata = MetadataCatalog.get(f"vader_cutpaste_sem_seg_{split}")
    assert metadata.stuff_classes == ["background", *CUTPASTE_CLASSES]
    assert metadata.ignore_label == 255 and metadata.evaluator_type == "sem_seg"
    instances = {
        os.path.basename(d["file_name"]): d for d in DatasetCatalog.get(f"vader_cutpaste_{split}")
    }
    semantic = DatasetCatalog.get(f"vader_cutpaste_sem_seg_{split}")
    assert sorted(os.path.basename(d["file_name"]) for d in semantic) == sorted(instances)
    for record in semantic:
        with Image.open(record["sem_seg_file_name"]) as png:
            assert png.mode == "L"
            labels = np.asarray(png)
        expected = np.zeros_like(labels)
        for annotation in instances[os.path.basename(record["file_name"])]["annotations"]:
            expected[mask_of(annotation["segmentation"])] = annotation["category_id"] + 1
        assert np.array_equal(labels, expected)


def test_cutpaste_backgrounds_do_not_cross_splits(cutpaste_manifest, demo_manifest):
    backgrounds = {split: set() for split in ("train", "val")}
    for image, background in cutpaste_manifest["backgrounds"].items():
        backgrounds[image.split("/")[0]].add(background)
    assert backgrounds["train"] and backgrounds["val"]
    assert not backgrounds["train"] & backgrounds["val"]
    for split in ("train", "val"):
        demo_split = [name.split("/")[1] for name in demo_manifest["files"] if name.startswith(f"{split}/")]
        assert backgrounds[split] <= set(demo_split)
