"""vader_lowlabel (datasets/prepare_lowlabel.py): splits that share no stamp or background photo, label
budgets that are the first train images, registration, and one-line errors. A tiny build (a few images
of each split) in a temporary root stands in for the 2000-image set."""

import argparse
import json
import os
import sys

import pytest

from vader_d2.data.datasets import CUTPASTE_CLASSES

from .helpers import REPO, datasets_script_json

DATASETS_DIR = os.path.join(REPO, "datasets")
COUNTS = {"unlabeled": 4, "train": 30, "test": 3}


@pytest.fixture(scope="module")
def scripts():
    """datasets/prepare_lowlabel.py and common.py as modules (they import their siblings, as when run as scripts)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(DATASETS_DIR)
        import common
        import prepare_lowlabel

    return prepare_lowlabel, common


def parse(scripts, *argv):
    prepare_lowlabel, common = scripts
    parser = argparse.ArgumentParser()
    common.add_common_arguments(parser)
    prepare_lowlabel.add_arguments(parser)
    return parser.parse_args(argv)


def tiny_build_args(scripts, root):
    return parse(scripts, "--root", str(root), *(f"--num-{split}={count}" for split, count in COUNTS.items()))


@pytest.fixture(scope="module")
def tiny_build(scripts, tmp_path_factory):
    """The datasets root of a tiny vader_lowlabel build, and its manifest."""
    root = tmp_path_factory.mktemp("lowlabel_root")
    scripts[0].prepare_lowlabel(tiny_build_args(scripts, root))
    with open(root / "vader_lowlabel" / "manifest.json") as f:
        return root, json.load(f)


def split_of(file_name):
    return file_name.split("/")[0]


def test_lowlabel_splits_share_no_stamp_or_background(scripts, tiny_build, capsys):
    prepare_lowlabel, _ = scripts
    root, manifest = tiny_build
    dataset_dir = root / "vader_lowlabel"
    assert manifest["counts"]["images"] == COUNTS
    for split, count in COUNTS.items():
        images = sorted(p.name for p in (dataset_dir / split).iterdir())
        assert images == [f"{split}_{i:05d}.jpg" for i in range(count)]
        assert sorted(name for name in manifest["backgrounds"] if split_of(name) == split) == [f"{split}/{name}" for name in images]
    # The unlabeled images carry no labels.
    assert sorted(p.name for p in (dataset_dir / "annotations").iterdir()) == ["instances_test.json", "instances_train.json"]
    assert sorted(p.name for p in (dataset_dir / "sem_seg").iterdir()) == ["test", "train"]

    # Stamps: each class's stamps split in two; the labelled splits share theirs, the unlabeled one has its own.
    stamps = manifest["stamps"]
    assert stamps["train"] == stamps["test"]
    for class_name in stamps["unlabeled"]:
        unlabeled, labelled = stamps["unlabeled"][class_name], stamps["train"][class_name]
        assert labelled and len(unlabeled) - len(labelled) in (0, 1)
        assert not set(unlabeled) & set(labelled)
    allowed = {split: {name for names in stamps[split].values() for name in names} for split in COUNTS}
    pasted = {split: set() for split in COUNTS}
    for image, names in manifest["image_stamps"].items():
        assert 1 <= len(names) <= 4 and set(names) <= allowed[split_of(image)], image
        pasted[split_of(image)].update(names)
    assert not pasted["unlabeled"] & (pasted["train"] | pasted["test"])

    # Backgrounds: even-indexed demo train photos for unlabeled images, odd-indexed for train, val for test.
    _, photos = prepare_lowlabel.fetch_source_photos(parse(scripts).cache)
    demo_train = [photo.output_name for photo in photos if photo.split == "train"]
    demo_val = {photo.output_name for photo in photos if photo.split == "val"}
    expected = {"unlabeled": set(demo_train[0::2]), "train": set(demo_train[1::2]), "test": demo_val}
    for image, background in manifest["backgrounds"].items():
        assert background in expected[split_of(image)], image

    # A second run with the same arguments keeps the outputs.
    prepare_lowlabel.prepare_lowlabel(tiny_build_args(scripts, root))
    assert "up to date" in capsys.readouterr().out


REGISTERED = """
import json, os, sys
from detectron2.data import DatasetCatalog, MetadataCatalog
from vader_d2.errors import UserError
import vader_d2.data.datasets
found = {}
for name in sys.argv[1:]:
    metadata = MetadataCatalog.get(name)
    try:
        dicts = DatasetCatalog.get(name)
    except UserError as e:
        found[name] = {"error": str(e)}
        continue
    found[name] = {
        "images": [os.path.relpath(d["file_name"], os.environ["DETECTRON2_DATASETS"]) for d in dicts],
        "sem_seg": [os.path.relpath(d["sem_seg_file_name"], os.environ["DETECTRON2_DATASETS"]) for d in dicts if "sem_seg_file_name" in d],
        "annotations": [len(d.get("annotations", [])) for d in dicts],
        "metadata": {key: metadata.get(key) for key in ("evaluator_type", "json_file", "thing_classes", "stuff_classes", "ignore_label")},
    }
print(json.dumps(found))
"""


def test_lowlabel_registration_and_budgets(tiny_build):
    """The builtin names resolve on the tiny build: a budget is the first N train images, as instances and as
    semantic masks alike; a budget larger than the train split is one line naming --num-train."""
    root, manifest = tiny_build
    names = [
        "vader_lowlabel_unlabeled", "vader_lowlabel_test", "vader_lowlabel_sem_seg_test",
        *(f"vader_lowlabel{kind}_train_{budget}" for kind in ("", "_sem_seg") for budget in (10, 30, 100)),
        "vader_lowlabel_val", "vader_lowlabel_sem_seg_val", "vader_lowlabel_holdout", "vader_lowlabel_sem_seg_holdout",
    ]
    found = datasets_script_json(REGISTERED, *names, datasets_root=root)

    def images(split, count):
        return [f"vader_lowlabel/{split}/{split}_{i:05d}.jpg" for i in range(count)]

    assert found["vader_lowlabel_unlabeled"]["images"] == images("unlabeled", 4)
    assert found["vader_lowlabel_unlabeled"]["metadata"]["evaluator_type"] == "none"
    with open(root / "vader_lowlabel" / "annotations" / "instances_train.json") as f:
        train_json = json.load(f)
    annotations_per_image = [sum(a["image_id"] == image["id"] for a in train_json["annotations"]) for image in train_json["images"]]
    for split, budgets in (("train", (10, 30)), ("test", (None,))):
        for budget in budgets:
            suffix = f"train_{budget}" if budget else "test"
            count = budget or COUNTS["test"]
            instances, semantic = found[f"vader_lowlabel_{suffix}"], found[f"vader_lowlabel_sem_seg_{suffix}"]
            assert instances["images"] == semantic["images"] == images(split, count)
            assert semantic["sem_seg"] == [f"vader_lowlabel/sem_seg/{split}/{split}_{i:05d}.png" for i in range(count)]
            assert all(instances["annotations"])
            if budget:
                assert instances["annotations"] == annotations_per_image[:budget]
            # COCOEvaluator scores against json_file where there is one: a budget has none, so it is
            # scored on its own images.
            assert instances["metadata"] == {
                "evaluator_type": "coco",
                "json_file": None if budget else str(root / "vader_lowlabel" / "annotations" / "instances_test.json"),
                "thing_classes": list(CUTPASTE_CLASSES),
                "stuff_classes": None,
                "ignore_label": None,
            }
            assert semantic["metadata"] == {
                "evaluator_type": "sem_seg",
                "json_file": None,
                "thing_classes": None,
                "stuff_classes": ["background", *CUTPASTE_CLASSES],
                "ignore_label": 255,
            }
    assert manifest["counts"]["instances"]["train_10"] == {
        name: sum(a["category_id"] == k and a["image_id"] <= 10 for a in train_json["annotations"])
        for k, name in enumerate(CUTPASTE_CLASSES, start=1)
    }
    for name, last in (("vader_lowlabel_train_100", 100), ("vader_lowlabel_sem_seg_train_100", 100), ("vader_lowlabel_val", 100),
                       ("vader_lowlabel_sem_seg_val", 100), ("vader_lowlabel_holdout", 150), ("vader_lowlabel_sem_seg_holdout", 150)):
        error = found[name]["error"]
        assert "holds 30" in error and f"--num-train {last}" in error and "\n" not in error, error
    assert "images 51-100" in found["vader_lowlabel_val"]["error"]
    assert "images 101-150" in found["vader_lowlabel_holdout"]["error"]


def test_lowlabel_val_is_the_train_images_after_the_30_budget():
    """The validation split shares no image with the 10 and 30 budgets, and is all the 100-image budget's rest."""
    from vader_d2.data.datasets import LOWLABEL_VAL_IMAGES, _selected_images

    train = [{"file_name": f"train_{i:05d}.jpg"} for i in range(100)]
    val = _selected_images(train, LOWLABEL_VAL_IMAGES, "vader_lowlabel_val", "train")
    budget_30 = _selected_images(train, (0, 30), "vader_lowlabel_train_30", "train")
    assert val == train[50:]
    assert not {d["file_name"] for d in val} & {d["file_name"] for d in budget_30}


def test_lowlabel_holdout_is_in_no_budget():
    from vader_d2.data.datasets import LOWLABEL_BUDGETS, LOWLABEL_HOLDOUT_IMAGES, _selected_images

    train = [{"file_name": f"train_{i:05d}.jpg"} for i in range(150)]
    holdout = _selected_images(train, LOWLABEL_HOLDOUT_IMAGES, "vader_lowlabel_holdout", "train")
    assert holdout == train[100:150]
    assert not {d["file_name"] for d in holdout} & {d["file_name"] for d in train[:max(LOWLABEL_BUDGETS)]}


@pytest.mark.parametrize("option, value", [("--num-unlabeled", "0"), ("--num-train", "-3"), ("--num-test", "0")])
def test_lowlabel_bad_counts_are_one_line(scripts, tmp_path, monkeypatch, capsys, option, value):
    prepare_lowlabel, common = scripts
    monkeypatch.setattr(sys, "argv", ["prepare_lowlabel.py", "--root", str(tmp_path), f"{option}={value}"])
    with pytest.raises(SystemExit) as exit_status:
        common.run_cli(prepare_lowlabel.prepare_lowlabel, "test", prepare_lowlabel.add_arguments)
    assert exit_status.value.code == 2
    assert capsys.readouterr().err == f"vader_d2: {option} must be at least 1, not {value}\n"
    assert not any(tmp_path.iterdir()), "nothing is written"
