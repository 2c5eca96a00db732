"""
Your folder from the command line: the dataset name ``folder:PATH`` is registered where dataset names are
resolved (train_net's checks, the trainer's data loader in each launched process, evaluate_dense.py,
visualize.py), with the one-line errors of any folder; and the builtin unlabeled COCO image lists.
"""

import os
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from vader_d2.data.datasets import register_named_datasets
from vader_d2.errors import UserError
from vader_d2.engine.trainer import VADeRTrainer

from .helpers import DEMO_CONFIG, TINY_OPTS, check_before_launch, datasets_script_json, demo_cfg, load_tool, run_python, run_train_net, single_error_line
from .test_bad_inputs import photo

train_net = load_tool("train_net")


@pytest.fixture(autouse=True)
def unregister_folders(tmp_path):
    """The folder: datasets a test registers under its tmp_path are unregistered after it."""
    yield
    for name in DatasetCatalog.list():
        if name.startswith("folder:") and MetadataCatalog.get(name).get("image_root", "").startswith(str(tmp_path)):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.fixture
def photo_folder(tmp_path):
    """A fresh folder (so a fresh folder: name) of two photos, one in a sub-folder, plus a text file."""
    folder = tmp_path / f"photos_{uuid.uuid4().hex[:8]}"
    (folder / "sub").mkdir(parents=True)
    photo(64, 80, 1).save(folder / "a.jpg")
    photo(64, 80, 2).save(folder / "sub" / "b.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def file_names(dicts):
    return [d["file_name"] for d in dicts]


def test_a_folder_name_is_registered_before_the_launch(photo_folder):
    name = f"folder:{photo_folder}"
    assert name not in DatasetCatalog.list()
    check_before_launch(train_net.parse_args(["--config-file", DEMO_CONFIG, "DATASETS.TRAIN", f"('{name}',)"]))
    assert file_names(DatasetCatalog.get(name)) == [str(photo_folder / "a.jpg"), str(photo_folder / "sub" / "b.png")]
    assert MetadataCatalog.get(name).image_root == str(photo_folder)


def test_the_trainer_registers_a_folder_name_itself(photo_folder):
    """What a process started by Detectron2's launch does: it has not run the launcher's checks."""
    relative = os.path.relpath(photo_folder)
    name = f"folder:{relative}"
    assert name not in DatasetCatalog.list()
    VADeRTrainer.build_train_loader(demo_cfg(*TINY_OPTS, "DATASETS.TRAIN", f"('{name}',)"))
    assert file_names(DatasetCatalog.get(name)) == [str(photo_folder / "a.jpg"), str(photo_folder / "sub" / "b.png")]
    assert MetadataCatalog.get(name).image_root == str(photo_folder)
    register_named_datasets([name, "vader_demo_photos_train"])  # again: a no-op; other names are left alone


def test_folder_names_fail_with_the_folder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    (tmp_path / "one").mkdir()
    photo(64, 80, 3).save(tmp_path / "one" / "only.jpg")
    expected = {
        missing: rf"^image folder {missing} does not exist: check the path in the dataset name 'folder:{missing}'$",
        tmp_path / "empty": r"^no images \(\.jpg .*\) found under .*empty: check the path in the dataset name",
        tmp_path / "one": rf"^DATASETS.TRAIN has a single readable image \({tmp_path}/one/only.jpg\) in its 1 files",
    }
    for folder, message in expected.items():
        cfg = demo_cfg(*TINY_OPTS, "DATASETS.TRAIN", f"('folder:{folder}',)")
        with pytest.raises(UserError, match=message):
            VADeRTrainer.build_train_loader(cfg)


def test_folder_name_mistakes_before_the_launch(photo_folder):
    for opts, message in (
        (["DATASETS.TRAIN", "('folder:',)"], "the dataset name 'folder:' names no folder; write folder:/path/to/images"),
        (["DATASETS.TEST", f"('folder:{photo_folder}',)"], f"DATASETS.TEST: 'folder:{photo_folder}' is a folder of unlabeled images"),
        (["DATASETS.TRAIN", "('my_photos',)"], "DATASETS.TRAIN: no dataset named 'my_photos' is registered; check the spelling, name your folder of images as folder:/path/to/images"),
    ):
        with pytest.raises(UserError) as error:
            check_before_launch(train_net.parse_args(["--config-file", DEMO_CONFIG, *opts]))
        assert str(error.value).startswith(message), str(error.value)


def test_evaluate_dense_and_visualize_resolve_folder_names(photo_folder):
    name = f"folder:{photo_folder}"
    expected = [str(photo_folder / "a.jpg"), str(photo_folder / "sub" / "b.png")]
    assert file_names(load_tool("evaluate_dense").dataset_dicts(name)) == expected
    visualize = load_tool("visualize")
    args = visualize.parse_args(["--config-file", DEMO_CONFIG, "--output-dir", "unused", "--dataset", name, "--image-index", "1"])
    assert visualize.pick_image(args) == expected[1]


def test_visualize_resolves_a_folder_name_from_the_command_line(photo_folder, tmp_path):
    """The whole tool in a new process: the name is found, with its two images, and an index past them is one line."""
    result = run_python(
        "tools/visualize.py", "--config-file", DEMO_CONFIG, "--output-dir", str(tmp_path / "pictures"),
        "--dataset", f"folder:{photo_folder}", "--image-index", "2", "MODEL.DEVICE", "cpu", timeout=300,
    )
    assert single_error_line(result) == f"vader_d2: --image-index 2 is out of range: folder:{photo_folder} has 2 images"


@pytest.mark.slow
def test_processes_started_by_the_launch_register_the_folder_themselves(photo_folder, tmp_path):
    """With --num-gpus 2, Detectron2's launch spawns two fresh processes; each must find the folder."""
    result = run_train_net(
        "--config-file", DEMO_CONFIG, "--num-gpus", "2", *TINY_OPTS, "INPUT.VIEWS.CROP_SIZE", "32",
        "DATASETS.TRAIN", f"('folder:{photo_folder}',)", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "out" / "model_final.pth").exists()
    assert f"folder:{photo_folder}" in (tmp_path / "out" / "config.yaml").read_text()


def test_builtin_coco_image_lists(tmp_path):
    """coco_2017_train_images and coco_2017_unlabeled_images list the images under $DETECTRON2_DATASETS/coco,
    beside Detectron2's own coco_2017_train, which keeps its annotations."""
    for relative in ("coco/train2017/000000000009.jpg", "coco/train2017/000000000025.jpg", "coco/unlabeled2017/000000000008.jpg"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"not decoded when listed")
    script = """
import json
from detectron2.data import DatasetCatalog, MetadataCatalog
import vader_d2.data.datasets
names = ("coco_2017_train_images", "coco_2017_unlabeled_images")
print(json.dumps({
    **{name: [d["file_name"] for d in DatasetCatalog.get(name)] for name in names},
    "detectron2": MetadataCatalog.get("coco_2017_train").json_file,
}))
"""
    found = datasets_script_json(script, datasets_root=tmp_path, timeout=120)
    assert found["coco_2017_train_images"] == [str(tmp_path / "coco/train2017/000000000009.jpg"), str(tmp_path / "coco/train2017/000000000025.jpg")]
    assert found["coco_2017_unlabeled_images"] == [str(tmp_path / "coco/unlabeled2017/000000000008.jpg")]
    assert found["detectron2"] == str(tmp_path / "coco/annotations/instances_train2017.json")
