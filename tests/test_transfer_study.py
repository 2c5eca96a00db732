"""
tools/transfer_study.py and vader_d2.study: a declared study file, the checks before any training, the
results it keeps and the table made from them. The end-to-end run (train, kill, resume) is
tests/test_transfer_study_run.py (slow).
"""

import hashlib
import json
import math
import os
import pickle
import shutil
import textwrap

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from detectron2.data import DatasetCatalog

from vader_d2.cli import build_config
from vader_d2.config import check_solver_config
from vader_d2.data.datasets import register_named_datasets
from vader_d2.errors import UserError
from vader_d2.engine.solver import iterations_for_epochs, rescale_schedule
from vader_d2.study import collect, gain_table, load_study, parse_study
from vader_d2.study.checks import check_study
from vader_d2.study.declaration import Schedule
from vader_d2.study.results import choose_schedule, dodged, file_sha256
from vader_d2.study.runner import (
    Job, StudyRunner, budget_images, say_whether_remade_model_is_equal, wait_for_previous_run, write_resnet_only,
)
from vader_d2.engine.output_dir import OutputDirLock
from vader_d2.engine.trainer import schedule_in_epochs

from .helpers import REPO, assert_one_line_refusal, load_tool, run_python
from .test_bad_inputs import photo

transfer_study = load_tool("transfer_study")

IN_REPO_STUDIES = [
    ("lowlabel", "transfer_study"),
    ("lowlabel_vader1200", "transfer_study_vader1200"),
    ("lowlabel_vader_recipe", "lowlabel_vader_recipe"),
]


def write_coco(folder, count, first_id=1, seed=0, name="instances.json"):
    """``count`` photos with one filled box each (category "box") and their COCO json; the json's path."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(count):
        image_id = first_id + i
        picture = photo(96, 128, seed * 1000 + i)
        x, y = int(rng.integers(8, 64)), int(rng.integers(8, 40))
        ImageDraw.Draw(picture).rectangle([x, y, x + 40, y + 40], fill=(250, 20, 20))
        file_name = f"img_{seed}_{i:03d}.jpg"
        picture.save(images_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": 96, "width": 128})
        polygon = [x, y, x + 40, y, x + 40, y + 40, x, y + 40]
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, 40, 40],
                            "area": 1600, "iscrowd": 0, "segmentation": [polygon]})
    path = folder / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}))
    return path


@pytest.fixture
def labelled(tmp_path):
    """A train set of 12 and a test set of 4 other images, as coco: dataset names."""
    train = write_coco(tmp_path / "train", 12, seed=1)
    test = write_coco(tmp_path / "test", 4, first_id=1, seed=2)
    return f"coco:{train}:{train.parent / 'images'}", f"coco:{test}:{test.parent / 'images'}"


def study_text(train, test, unlabeled="vader_demo_photos_train", budgets="[4, 8]", extra=""):
    return textwrap.dedent(f"""\
        seeds: [1, 2]
        unlabeled: [{unlabeled}]
        label_budgets: {budgets}
        tasks:
          mask_rcnn:
            config: configs/downstream/lowlabel_mask_rcnn_R_18_FPN.yaml
            train: "{train}"
            test: "{test}"
            overrides: {{MODEL.ROI_HEADS.NUM_CLASSES: 1}}
        initialisations:
          random_init: {{random: true}}
          vader: {{pretrain: configs/vader_pretrain_demo.yaml}}
        pretraining:
          length: {{iterations: 6}}
          overrides: {{MODEL.DEVICE: cpu}}
        downstream:
          overrides: {{MODEL.DEVICE: cpu}}
        """) + extra


def run_tool_in_process(*argv):
    return transfer_study.main(transfer_study.parse_args(list(argv)))


# ---- the in-repo study, carried over ----------------------------------------------------------------------

@pytest.mark.parametrize("study, results", IN_REPO_STUDIES)
def test_in_repo_results_rederive_their_committed_tables(study, results):
    """The results carried over from experiments/transfer_study.sh give table.md again, byte for byte, and
    are recorded under the study file committed for them."""
    out = os.path.join(REPO, "experiments", "results", results)
    declared = load_study(os.path.join(REPO, "experiments", "studies", f"{study}.yaml"))
    with open(os.path.join(out, "study.sha256")) as f:
        assert f.read().split()[0] == declared.digest
    recorded = transfer_study.declared_study(out)
    with open(os.path.join(out, "table.md")) as f:
        assert gain_table(recorded, collect(recorded, out)) + "\n" == f.read()


def test_gains_are_paired_by_seed_and_marked_with_three_seeds_beyond_two_std(tmp_path):
    study = parse_study(textwrap.dedent("""\
        seeds: [1, 2, 3]
        label_budgets: [10]
        tasks: {frozen: {config: c.yaml, train: a, test: b}}
        initialisations:
          random_init: {random: true}
          pixpro: {weights: p.pkl}
          vader: {weights: v.pkl}
          vader_two_seeds: {weights: w.pkl}
          moco: {weights: m.pkl}
        """), "study.yaml")
    mIoU = {
        "random_init": {1: 16.0, 2: 14.0, 3: 17.0},
        "pixpro": {1: 18.0, 2: 16.5, 3: 19.0},  # +2.0, +2.5, +2.0: 2.17 ± 0.29, shown
        "vader": {1: 20.0, 2: 13.0, 3: 17.0},  # +4, -1, 0: 1.0 ± 2.65, not shown
        "vader_two_seeds": {1: 17.0, 2: 13.0},  # two seeds: never a claim
        "moco": {1: 14.0, 2: 12.5, 3: 15.0},  # -2.0, -1.5, -2.0: -1.83 ± 0.29, shown as a loss
    }
    for init, per_seed in mIoU.items():
        for seed, value in per_seed.items():
            path = tmp_path / f"seed{seed}" / "frozen_10" / f"{init}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"name": init, "seed": seed, "finetune": {"sem_seg/mIoU": value}}))

    table = gain_table(study, collect(study, str(tmp_path))).splitlines()

    assert table[0] == (
        "| task | labels | number | random_init | pixpro | vader | vader_two_seeds | moco | "
        "pixpro − random | vader − random | vader_two_seeds − random | moco − random |"
    )
    assert table[2] == (
        "| frozen | 10 | sem_seg/mIoU | 15.7 ± 1.5 (n=3) | 17.8 ± 1.3 (n=3) | 16.7 ± 3.5 (n=3) | 15.0 ± 2.8 (n=2) | 13.8 ± 1.3 (n=3) | "
        "+2.2 ± 0.3 (n=3) **> 2 std** | +1.0 ± 2.6 (n=3) | +0.0 ± 1.4 (n=2) | -1.8 ± 0.3 (n=3) **< −2 std** |"
    )
    assert table[-2].startswith("Gains larger") and table[-2].endswith(": pixpro > random init on frozen sem_seg/mIoU with 10 labels")
    assert table[-1].startswith("Losses larger") and table[-1].endswith(": moco < random init on frozen sem_seg/mIoU with 10 labels")



SCHEDULE_STUDY = """\
seeds: [1, 2, 3]
label_budgets: [30, 100]
tasks:
  frozen_300: {config: c.yaml, train: a, test: val, frozen: true, schedule: {iterations: 300}}
  frozen_600: {config: c.yaml, train: a, test: val, frozen: true, schedule: {iterations: 600}}
  frozen_1200: {config: c.yaml, train: a, test: val, frozen: true, schedule: {iterations: 1200}, metrics: [sem_seg/mIoU]}
  other_test_600: {config: c.yaml, train: a, test: test, frozen: true, schedule: {iterations: 600}}
  default_length: {config: c.yaml, train: a, test: val, frozen: true}
  in_epochs_20: {config: c.yaml, train: a, test: val, frozen: true, schedule: {epochs: 20, min_iterations: 300}}
  in_epochs_40: {config: c.yaml, train: a, test: val, frozen: true, schedule: {epochs: 40, min_iterations: 300}}
  tuned_300: {config: c.yaml, train: a, test: val, schedule: {iterations: 300}, overrides: {SOLVER.BASE_LR: 0.1, SOLVER.GAMMA: 0.5}}
  tuned_600: {config: c.yaml, train: a, test: val, schedule: {iterations: 600}, overrides: {SOLVER.GAMMA: 0.5, SOLVER.BASE_LR: 0.1}}
  each_budget_own: {config: c.yaml, train: a, test: val, frozen: true, schedule: {per_budget: {30: {iterations: 600}, 100: {iterations: 2400}}}}
initialisations:
  random_init: {random: true}
  vader: {weights: v.pkl}
"""


def write_results(out, values, init="random_init"):
    for (task, budget), per_seed in values.items():
        for seed, value in per_seed.items():
            path = out / f"seed{seed}" / f"{task}_{budget}" / f"{init}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"name": init, "seed": seed, "finetune": {"sem_seg/mIoU": value}}))


def test_the_schedule_rule_picks_the_shortest_length_the_next_barely_improves():
    labels = ["300", "600", "1200", "2400"]
    seeds = (1, 2, 3)
    # 300 -> 600 rises +3.0 against std 1.0 at 300; 600 -> 1200 rises +0.5 against std 1.0: 600.
    curve = [{1: 10.0, 2: 11.0, 3: 12.0}, {1: 13.0, 2: 14.0, 3: 15.0}, {1: 13.5, 2: 14.5, 3: 15.5}, {1: 0.0, 2: 0.0, 3: 0.0}]
    assert choose_schedule(curve, seeds, labels) == (1, "next rises +0.5 < std 1.0")
    # A rise exactly equal to the std is still a rise: the next step decides.
    assert choose_schedule([curve[0], {1: 11.0, 2: 12.0, 3: 13.0}, {1: 11.0, 2: 12.0, 3: 13.0}], seeds, labels)[0] == 1
    # Rising at every step: the longest.
    rising = [{s: 10.0 * k + s for s in seeds} for k in range(1, 5)]
    assert choose_schedule(rising, seeds, labels) == (3, "every step rose by the std or more: still rising at the longest declared")
    # A later length missing does not matter once an earlier step has decided ...
    assert choose_schedule(curve[:3] + [{}], seeds, labels)[0] == 1
    # ... a missing seed in a step that must be read does.
    assert choose_schedule([curve[0], {1: 13.0, 2: 14.0}], seeds, labels) == (None, "not yet: needs seed 3 at 600")
    assert choose_schedule(curve, (1,), labels) == (None, "the std over seeds needs 2 seeds or more")
    # Detectron2's AP of a model that detected nothing: named, nothing chosen.
    assert choose_schedule([{1: 1.0, 2: float("nan"), 3: 2.0}, curve[1]], seeds, labels) == (
        None, "none: NaN for seed 2 at 300 (nothing detected?)")


def test_two_tasks_that_are_one_run_are_refused():
    text = SCHEDULE_STUDY.replace("  tuned_600:", "  tuned_again: {config: c.yaml, train: a, test: val, schedule: {iterations: 300}, "
                                  "overrides: {SOLVER.GAMMA: 0.5, SOLVER.BASE_LR: 0.1}, metrics: [sem_seg/mIoU]}\n  tuned_600:")
    with pytest.raises(UserError, match=r"^study.yaml: tasks.tuned_again is the same run as tasks.tuned_300 "):
        parse_study(text, "study.yaml")


def test_schedule_reads_each_family_of_tasks_that_differ_only_in_length(tmp_path):
    study = parse_study(SCHEDULE_STUDY, "study.yaml")
    write_results(tmp_path, {
        ("frozen_300", 30): {1: 10.0, 2: 11.0, 3: 12.0},
        ("frozen_600", 30): {1: 13.0, 2: 14.0, 3: 15.0},
        ("frozen_1200", 30): {1: 13.5, 2: 14.5, 3: 15.5},
        ("frozen_300", 100): {1: 10.0, 2: 11.0},
        ("other_test_600", 30): {1: 99.0, 2: 99.0, 3: 99.0},  # scored on another split: not in the family
        ("default_length", 30): {1: 99.0, 2: 99.0, 3: 99.0},  # the config's length: not in the family
    })
    write_results(tmp_path, {("frozen_300", 30): {1: 50.0, 2: 60.0, 3: 70.0}}, init="vader")

    table = transfer_study.schedule_table(study, collect(study, str(tmp_path))).splitlines()

    assert table[0] == "frozen_300, frozen_600, frozen_1200: random_init, sem_seg/mIoU, seeds 1, 2, 3"
    assert table[2] == "| labels | 300 iterations | 600 iterations | 1200 iterations | chosen |"
    assert table[4] == ("| 30 | 11.0 ± 1.0 (n=3) | 14.0 ± 1.0 (n=3), +3.0 | 14.5 ± 1.0 (n=3), +0.5 | "
                        "**600 iterations** (next rises +0.5 < std 1.0) |")
    assert table[5] == "| 100 | 10.5 ± 0.7 (n=2) | - | - | not yet: needs seed 3 at 300 iterations; seed 1, 2, 3 at 600 iterations |"
    # Overrides in another order train alike; the other test split, the config's length, epochs and a
    # schedule per budget do not.
    assert table[7] == "tuned_300, tuned_600: no result of random_init yet"
    for left_out in ("other_test_600", "default_length", "in_epochs", "each_budget_own"):
        assert left_out not in "\n".join(table)
    assert "declare the task" not in "\n".join(table)  # 100 labels has not chosen yet

    # Once every budget has chosen, the line to put in the study that compares every initialisation.
    write_results(tmp_path, {("frozen_300", 100): {3: 12.0}, ("frozen_600", 100): {1: 10.2, 2: 11.2, 3: 12.2}})
    table = transfer_study.schedule_table(study, collect(study, str(tmp_path))).splitlines()
    assert table[5].startswith("| 100 | 11.0 ± 1.0 (n=3) | 11.2 ± 1.0 (n=3), +0.2 | - | **300 iterations**")
    assert table[7] == "To compare every initialisation at it, declare the task with `schedule: {per_budget: {30: {iterations: 600}, 100: {iterations: 300}}}`."
    # 100 labels rising +3.2 by 600 and +0.2 by 1200: 600, as at 30 labels.
    write_results(tmp_path, {("frozen_300", 100): {1: 7.0, 2: 8.0, 3: 9.0}, ("frozen_1200", 100): {1: 10.4, 2: 11.4, 3: 12.4}})
    table = transfer_study.schedule_table(study, collect(study, str(tmp_path))).splitlines()
    assert table[7] == "To compare every initialisation at it, declare the task with `schedule: {iterations: 600}`."
    # The rule's fallback, the longest declared while still rising, is no length to compare at.
    write_results(tmp_path, {("frozen_1200", 100): {1: 14.0, 2: 15.0, 3: 16.0}})
    table = transfer_study.schedule_table(study, collect(study, str(tmp_path))).splitlines()
    assert "still rising at the longest declared" in table[5]
    assert table[7] == ("Still rising at the longest length declared with 100 labels: "
                        "declare longer lengths before comparing initialisations at one.")

    # A family whose longest length has no result yet is still shown, with what it needs.
    for path in tmp_path.glob("seed*/frozen_1200_*"):
        shutil.rmtree(path)
    table = transfer_study.schedule_table(study, collect(study, str(tmp_path))).splitlines()
    assert table[4] == "| 30 | 11.0 ± 1.0 (n=3) | 14.0 ± 1.0 (n=3), +3.0 | - | not yet: needs seed 1, 2, 3 at 1200 iterations |"


def test_schedule_without_a_family_or_with_an_unknown_init_is_one_line(tmp_path):
    study = parse_study(SCHEDULE_STUDY, "study.yaml")
    with pytest.raises(UserError, match=r"^--init moco: not declared in study.yaml \(declared: random_init vader\)$"):
        transfer_study.schedule_table(study, {}, "moco")
    out = os.path.join(REPO, "experiments", "results", "transfer_study")
    result = run_python("tools/transfer_study.py", "schedule", out)
    assert_one_line_refusal(result, "declares no tasks that differ only in their schedule")


# ---- the declaration ---------------------------------------------------------------------------------

MINIMAL = {
    "seeds": [1],
    "label_budgets": [10],
    "unlabeled": ["u"],
    "tasks": {"frozen": {"config": "c.yaml", "train": "a", "test": "b"}},
    "initialisations": {"random_init": {"random": True}, "vader": {"pretrain": "p.yaml", "length": {"iterations": 10}}},
}


def with_change(path, value):
    declared = json.loads(json.dumps(MINIMAL))
    *parents, last = path.split("/")
    node = declared
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        del node[last]
    else:
        node[last] = value
    return json.dumps(declared)


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("seed", [1], "the study file has an unknown key 'seed'"),
        ("tasks/frozen/froze", True, "tasks.frozen has an unknown key 'froze'"),
        ("tasks/frozen/test", None, "tasks.frozen needs the key 'test'"),
        ("label_budgets", [10, "30"], "label_budgets must be a whole number of at least 1, not '30' (text to YAML: write a whole number unquoted, e.g. 1000)"),
        ("tasks/frozen/schedule", {"epochs": "1e3"}, "must be a positive number of passes over the budget's images, not '1e3' (text to YAML"),
        ("seeds", ["one"], "seeds must be a whole number of at least 0, not 'one'"),
        ("label_budgets", [0], "label_budgets must be a whole number of at least 1, not 0"),
        ("seeds", [1, 1], "seeds lists a number twice"),
        ("seeds", [1, 2**32], "seeds must be below 2**31 = 2147483648, not 4294967296"),
        ("budget_order", "random", "budget_order must be one of shuffled, as_listed"),
        ("initialisations/both", {"random": True, "weights": "w.pkl"}, "needs exactly one of random"),
        ("initialisations/other_random", {"random": True}, "has 2 random initialisations"),
        ("initialisations/resnet", {"resnet_of": "dino"}, "resnet_of names 'dino', which is not declared"),
        ("initialisations/resnet", {"resnet_of": "random_init"}, "brings no weights of its own"),
        ("initialisations/moco", {"pretrain": "m.yaml", "length": {"equal_time_as": "random_init"}}, "is not a pretrain: initialisation"),
        ("initialisations/moco", {"pretrain": "m.yaml"}, "initialisations.moco has no length"),
        ("initialisations/moco", {"pretrain": "m.yaml", "length": {"iterations": 5, "epochs": 2}}, "needs exactly one of iterations"),
        ("initialisations/a", {"pretrain": "m.yaml", "length": {"iterations": 5}, "start_from": "b"}, "names 'b', which is not declared"),
        ("initialisations/Vader2", {"weights": "w.pkl"}, "has the name 'Vader2'"),
        ("tasks/frozen/overrides", {"solver.base_lr": 0.1}, "config keys are written in full"),
        # Keys each run's command sets after the overrides: an override of one would be dropped silently.
        ("tasks/frozen/overrides", {"MODEL.WEIGHTS": "r50.pkl"}, "tasks.frozen.overrides.MODEL.WEIGHTS is set by the study itself (each initialisation's weights)"),
        ("downstream/overrides", {"DATASETS.TEST": "('b_val',)"}, "downstream.overrides.DATASETS.TEST is set by the study itself (the task's test:)"),
        ("downstream/overrides", {"SEED": 7}, "downstream.overrides.SEED is set by the study itself (seeds:)"),
        ("pretraining/overrides", {"DATASETS.TRAIN": "('u2',)"}, "pretraining.overrides.DATASETS.TRAIN is set by the study itself (unlabeled:)"),
        ("initialisations/vader/overrides", {"OUTPUT_DIR": "x"}, "overrides.OUTPUT_DIR is set by the study itself (--work-dir)"),
        ("initialisations/after", {"pretrain": "p.yaml", "length": {"iterations": 5}, "start_from": "vader", "overrides": {"MODEL.WEIGHTS": "w.pkl"}},
         "initialisations.after.overrides.MODEL.WEIGHTS is set by the study itself (initialisations.after.start_from)"),
        ("tasks/frozen", {"config": "c.yaml", "train": "a", "test": "b", "schedule": {"iterations": 300}, "overrides": {"SOLVER.MAX_ITER": 600}},
         "tasks.frozen.overrides.SOLVER.MAX_ITER is set by the study itself (tasks.frozen.schedule)"),
        ("tasks/frozen", {"config": "c.yaml", "train": "a", "test": "b", "frozen": True, "overrides": {"MODEL.FROZEN_BACKBONE": False}},
         "tasks.frozen.overrides.MODEL.FROZEN_BACKBONE is set by the study itself (tasks.frozen.frozen)"),
        ("pretraining/overrides", {"SOLVER.MAX_ITER": 900}, "pretraining.overrides.SOLVER.MAX_ITER is set by the study itself (length:)"),
        ("tasks/frozen/schedule", {"epochs": 0}, "must be a positive number of passes"),
        ("tasks/frozen/schedule", {"iterations": 300, "min_iterations": 100}, "min_iterations applies to epochs: only"),
        ("tasks/frozen/frozen", "yes", "tasks.frozen.frozen must be true or false"),
        ("unlabeled", None, "unlabeled names no dataset, but the study pretrains"),
        ("initialisations/random_init", {"random": 1}, "random must be true, not 1"),
        ("tasks/frozen/overrides", {"SOLVER.BASE_LR": {"value": 0.1}}, "must be a number, a string, true / false or a list of them"),
        ("initialisations/moco", {"pretrain": "m.yaml", "length": {"equal_time_as": "pixpro"}}, "names 'pixpro', which is not a pretrain:"),
        ("initialisations/vader/length", {"equal_time_as": "vader"}, "is the equal_time_as reference, so it needs its own length"),
    ],
)
def test_a_mistake_in_the_study_file_is_one_line_naming_the_key(path, value, expected):
    with pytest.raises(UserError, match=None) as error:
        parse_study(with_change(path, value), "study.yaml")
    assert expected in str(error.value) and str(error.value).startswith("study.yaml: "), str(error.value)


def test_downstream_overrides_name_the_task_that_sets_a_key():
    declared = json.loads(with_change("downstream/overrides", {"MODEL.FROZEN_BACKBONE": True}))
    declared["tasks"]["frozen"]["frozen"] = False
    with pytest.raises(UserError, match=r"^study.yaml: downstream.overrides.MODEL.FROZEN_BACKBONE is set by the study itself \(tasks.frozen.frozen\)"):
        parse_study(json.dumps(declared), "study.yaml")
    del declared["tasks"]["frozen"]["frozen"]  # no task sets it: the override applies to every run
    assert parse_study(json.dumps(declared), "study.yaml").downstream_overrides == ("MODEL.FROZEN_BACKBONE", "True")


def test_overrides_take_top_level_keys_and_a_pretraining_its_own_weights():
    declared = json.loads(with_change("initialisations/vader/overrides", {"MODEL.WEIGHTS": "imagenet.pkl", "CUDNN_BENCHMARK": True}))
    declared["tasks"]["frozen"]["overrides"] = {"VIS_PERIOD": 0}
    study = parse_study(json.dumps(declared), "study.yaml")
    assert study.initialisations["vader"].overrides == ("MODEL.WEIGHTS", "imagenet.pkl", "CUDNN_BENCHMARK", "True")
    assert study.tasks["frozen"].overrides == ("VIS_PERIOD", "0")


def with_schedule(schedule):
    """MINIMAL at label budgets 30 and 100, its task given ``schedule``, as YAML (whose keys may be numbers)."""
    declared = json.loads(with_change("label_budgets", [30, 100]))
    declared["tasks"]["frozen"]["schedule"] = schedule
    return yaml.safe_dump(declared)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ({"per_budget": {30: {"iterations": 1200}}}, "tasks.frozen.schedule.per_budget has no schedule for label budget 100 (declared: 30, 100)"),
        ({"per_budget": {}}, "tasks.frozen.schedule.per_budget has no schedule for label budgets 30, 100 (declared: 30, 100)"),
        ({"per_budget": {30: {"iterations": 1200}, 100: {"iterations": 2400}, 300: {"iterations": 4800}}},
         "tasks.frozen.schedule.per_budget has a schedule for label budget 300, not declared (declared: 30, 100)"),
        ({"per_budget": {30: {"per_budget": {30: {"iterations": 1200}}}, 100: {"iterations": 2400}}},
         "tasks.frozen.schedule.per_budget.30 has an unknown key 'per_budget' (known: iterations, epochs, min_iterations)"),
        ({"iterations": 300, "per_budget": {30: {"iterations": 1200}, 100: {"iterations": 2400}}},
         "tasks.frozen.schedule has iterations beside per_budget: give each budget's whole schedule under per_budget"),
        ({"per_budget": {"30": {"iterations": 1200}, 100: {"iterations": 2400}}},
         "tasks.frozen.schedule.per_budget has the key '30': its keys are label budgets, whole numbers as in label_budgets"),
        ({"per_budget": {"thirty": {"iterations": 1200}, 100: {"iterations": 2400}}},
         "tasks.frozen.schedule.per_budget has the key 'thirty': its keys are label budgets, whole numbers as in label_budgets"),
        ({"per_budget": [1200, 2400]},
         "tasks.frozen.schedule.per_budget must map each label budget to its schedule, e.g. {30: {iterations: 1200}}, not [1200, 2400]"),
        ({"per_budget": {30: {"iterations": 1200}, 100: {"iterations": 0}}},
         "tasks.frozen.schedule.per_budget.100.iterations must be a whole number of at least 1, not 0"),
    ],
)
def test_a_mistake_in_a_schedule_per_budget_is_one_line(schedule, expected):
    with pytest.raises(UserError) as error:
        parse_study(with_schedule(schedule), "study.yaml")
    assert str(error.value) == f"study.yaml: {expected}"


def test_a_schedule_per_budget_is_read_budget_by_budget():
    per_budget = {"per_budget": {100: {"epochs": 40, "min_iterations": 300}, 30: {"iterations": 1200}}}
    schedule = parse_study(with_schedule(per_budget), "study.yaml").tasks["frozen"].schedule
    assert schedule.for_budget(30) == Schedule(iterations=1200)
    assert schedule.for_budget(100) == Schedule(epochs=40.0, min_iterations=300)
    # The same runs at every budget as a plain schedule are refused as one run; the same at one budget are not.
    declared = yaml.safe_load(with_schedule({"per_budget": {30: {"iterations": 1200}, 100: {"iterations": 1200}}}))
    declared["tasks"]["plain"] = {**declared["tasks"]["frozen"], "schedule": {"iterations": 1200}}
    with pytest.raises(UserError, match=r"^study.yaml: tasks.plain is the same run as tasks.frozen "):
        parse_study(yaml.safe_dump(declared), "study.yaml")
    declared["tasks"]["frozen"]["schedule"]["per_budget"][100] = {"iterations": 2400}
    assert parse_study(yaml.safe_dump(declared), "study.yaml").tasks["plain"].schedule == Schedule(iterations=1200)


def test_a_key_written_twice_is_one_line_naming_its_line():
    """YAML keeps the last of two equal keys silently: a second task or initialisation of one name, or a
    budget's schedule given twice, would drop one from the declared grid without a word."""
    study = "seeds: [1]\nlabel_budgets: [30, 100]\ntasks:\n  t: {config: c.yaml, train: a, test: b}\n"
    twice = [
        (study + "  t: {config: d.yaml, train: a, test: b}\ninitialisations: {r: {random: true}}\n", "the key 't' is given twice", 5),
        (study + "initialisations:\n  r: {random: true}\n  r: {weights: w.pkl}\n", "the key 'r' is given twice", 7),
        (study.replace("test: b}", "test: b, schedule: {per_budget: {30: {iterations: 1}, 30: {iterations: 2}, 100: {iterations: 3}}}}")
         + "initialisations: {r: {random: true}}\n", "the key 30 is given twice", 4),
    ]
    for text, expected, line in twice:
        with pytest.raises(UserError) as error:
            parse_study(text, "study.yaml")
        message = str(error.value)
        assert expected in message and f"line {line}," in message and "\n" not in message, message
    # An anchor merged with << and a key beside it that overrides one of its keys is YAML working as meant.
    merged = study + "  u: {<<: *t, config: d.yaml}\ninitialisations: {r: {random: true}}\n"
    tasks = parse_study(merged.replace("  t: {config", "  t: &t {config"), "study.yaml").tasks
    assert (tasks["u"].config, tasks["u"].train) == ("d.yaml", "a")


def test_values_yaml_reads_as_other_types_are_one_line():
    """YAML reads 2020-01-01 as a date and .inf as infinity: neither is a value a study can use."""
    base = "\n".join(f"{k}: {json.dumps(v)}" for k, v in MINIMAL.items())
    date = base.replace('"config": "c.yaml"', '"config": "c.yaml", "overrides": {"SOLVER.BASE_LR": 2020-01-01}')
    with pytest.raises(UserError, match="SOLVER.BASE_LR must be a number, a string"):
        parse_study(date, "s.yaml")
    infinite = base.replace('"config": "c.yaml"', '"config": "c.yaml", "schedule": {"epochs": .inf}')
    with pytest.raises(UserError, match="schedule.epochs must be a positive number of passes"):
        parse_study(infinite, "s.yaml")
    assert parse_study(base.replace("[10]", "[30, 10]"), "s.yaml").digest == parse_study(base.replace("[10]", "[10, 30]"), "s.yaml").digest


def test_circular_start_from_is_refused():
    text = with_change("initialisations/a", {"pretrain": "m.yaml", "length": {"iterations": 5}, "start_from": "b"})
    declared = json.loads(text)
    declared["initialisations"]["b"] = {"pretrain": "m.yaml", "length": {"iterations": 5}, "start_from": "a"}
    with pytest.raises(UserError, match="in a circle: a -> b -> a"):
        parse_study(json.dumps(declared), "study.yaml")


def test_the_digest_ignores_comments_layout_and_description_but_no_value():
    base = parse_study(json.dumps(MINIMAL), "s.yaml").digest
    reformatted = "# a comment\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in MINIMAL.items()) + "\ndescription: words\n"
    assert parse_study(reformatted, "s.yaml").digest == base
    assert parse_study(with_change("seeds", [1, 2]), "s.yaml").digest != base


def test_overrides_become_a_command_line():
    study = parse_study(with_change("tasks/frozen/overrides", {"SOLVER.BASE_LR": 0.01, "INPUT.CROP_SCALE": [0.2, 1.0]}), "s.yaml")
    opts = study.tasks["frozen"].overrides
    assert opts == ("SOLVER.BASE_LR", "0.01", "INPUT.CROP_SCALE", "(0.2, 1.0)")


def test_budgets_are_nested_prefixes_of_one_order():
    records = [{"file_name": f"{i}.jpg", "image_id": i} for i in range(20)]
    listed = budget_images(records, (5, 10), "as_listed", 0)
    assert [e["image_id"] for e in listed[10]] == list(range(10))
    shuffled = budget_images(records, (5, 10), "shuffled", 3)
    assert shuffled[10][:5] == shuffled[5] and sorted(e["image_id"] for e in shuffled[10]) != list(range(10))
    assert budget_images(records, (5, 10), "shuffled", 3) == shuffled


# ---- schedules ------------------------------------------------------------------------------------------

def test_a_schedule_is_stretched_in_whole_numbers():
    solver = build_config("configs/downstream/lowlabel_semantic_R_18_FPN.yaml", ["MODEL.DEVICE", "cpu"]).SOLVER
    assert (solver.MAX_ITER, solver.WARMUP_ITERS, tuple(solver.STEPS)) == (300, 50, (200, 270))
    assert rescale_schedule(solver, 1200) == {"MAX_ITER": 1200, "WARMUP_ITERS": 200, "STEPS": (800, 1080)}
    assert rescale_schedule(solver, 30) == {"MAX_ITER": 30, "WARMUP_ITERS": 5, "STEPS": (20, 27)}
    # The demo's warm-up is an eighth of its 160 iterations: the low-label study's N // 8.
    demo = build_config("configs/vader_pretrain_demo.yaml", ["MODEL.DEVICE", "cpu"]).SOLVER
    assert rescale_schedule(demo, 429)["WARMUP_ITERS"] == 429 // 8
    # Steps past MAX_ITER never fired (a cosine schedule's default STEPS): stretched, they might.
    assert rescale_schedule(demo, 5000)["STEPS"] == ()
    assert iterations_for_epochs(20, 2000, 8) == 5000 and iterations_for_epochs(1, 3, 8) == 1
    # Squeezed short, steps would round to 0 or onto each other; Detectron2's multi-step schedule takes
    # increasing steps only.
    assert rescale_schedule(solver, 3)["STEPS"] == (2,) and rescale_schedule(solver, 1)["STEPS"] == ()


def test_a_schedule_per_budget_gives_each_budgets_runs_their_own_length(tmp_path, labelled):
    train, test = labelled
    overrides = "    overrides: {MODEL.ROI_HEADS.NUM_CLASSES: 1}\n"
    per_budget = "    schedule: {per_budget: {4: {iterations: 40}, 8: {epochs: 10, min_iterations: 5}}}\n"
    text = study_text(train, test).replace(overrides, overrides + per_budget)
    assert per_budget in text
    study = parse_study(text, str(tmp_path / "study.yaml"))
    facts = check_study(study, str(tmp_path / "out"))
    # 10 passes over 8 images at 4 a batch: 20 iterations; the config's 50 warm-up and (200, 270) of 300 scaled.
    assert facts.task_configs["mask_rcnn"].SOLVER.IMS_PER_BATCH == 4
    for budget, schedule in ((4, ["40", "6", "(26, 36)"]), (8, ["20", "3", "(13, 18)"])):
        opts = facts.downstream_opts("mask_rcnn", budget, "vader.pkl", seed=1)
        assert opts[opts.index("SOLVER.MAX_ITER"):] == ["SOLVER.MAX_ITER", schedule[0], "SOLVER.WARMUP_ITERS", schedule[1], "SOLVER.STEPS", schedule[2]]
    runner = StudyRunner(study, str(tmp_path / "out"), str(tmp_path / "work"), None, facts)
    jobs = runner.plan([1], ["mask_rcnn"], [4, 8], ["random_init"])
    assert [(job.what, job.iterations) for job in jobs] == [
        ("seed 1, mask_rcnn, 4 labels, random_init", 40), ("seed 1, mask_rcnn, 8 labels, random_init", 20)]


def test_solver_epochs_sets_the_length_of_a_train_net_run():
    cfg = build_config("configs/vader_pretrain_demo.yaml", ["MODEL.DEVICE", "cpu", "SOLVER.EPOCHS", "10"])
    images = len(DatasetCatalog.get("vader_demo_photos_train"))
    stretched, note = schedule_in_epochs(cfg)
    expected = round(10 * images / 8)
    assert stretched.SOLVER.MAX_ITER == expected and stretched.SOLVER.WARMUP_ITERS == 20 * expected // 160
    assert f"over the {images} images" in note and f"MAX_ITER {expected}" in note
    assert schedule_in_epochs(build_config("configs/vader_pretrain_demo.yaml", ["MODEL.DEVICE", "cpu"]))[1] is None
    with pytest.raises(UserError, match="SOLVER.EPOCHS must be a whole number of passes >= 0"):
        check_solver_config(build_config("configs/vader_pretrain_demo.yaml", ["MODEL.DEVICE", "cpu", "SOLVER.EPOCHS", "-1"]))


# ---- dataset names --------------------------------------------------------------------------------------

def test_coco_and_subset_dataset_names(tmp_path):
    from detectron2.data import MetadataCatalog

    json_path = write_coco(tmp_path / "set", 5, first_id=10)
    coco = f"coco:{json_path}:{json_path.parent / 'images'}"
    subset_file = tmp_path / "subset.json"
    chosen = [str(json_path.parent / "images" / f"img_0_{i:03d}.jpg") for i in (3, 0)]
    subset_file.write_text(json.dumps({"dataset": coco, "images": [{"file_name": f} for f in chosen]}))
    subset = f"subset:{subset_file}"
    register_named_datasets([coco, subset])

    assert [r["image_id"] for r in DatasetCatalog.get(coco)] == [10, 11, 12, 13, 14]
    assert [r["image_id"] for r in DatasetCatalog.get(subset)] == [13, 10]
    assert MetadataCatalog.get(subset).thing_classes == ["box"] and MetadataCatalog.get(coco).evaluator_type == "coco"
    assert MetadataCatalog.get(subset).get("json_file") is None

    missing = f"coco:{tmp_path / 'nothing.json'}"
    register_named_datasets([missing])
    with pytest.raises(UserError, match="the annotation file .*nothing.json does not exist"):
        DatasetCatalog.get(missing)
    (tmp_path / "bad.json").write_text("{\"images\": 3}")
    bad = f"coco:{tmp_path / 'bad.json'}"
    register_named_datasets([bad])
    with pytest.raises(UserError, match="is not a COCO-format instances file"):
        DatasetCatalog.get(bad)
    with pytest.raises(UserError, match="names no .json file"):
        register_named_datasets(["coco:/data/images"])
    wrong = tmp_path / "wrong_subset.json"
    wrong.write_text(json.dumps({"dataset": coco, "images": [{"file_name": "elsewhere.jpg"}]}))
    register_named_datasets([f"subset:{wrong}"])
    with pytest.raises(UserError, match="1 images .* are not in"):
        DatasetCatalog.get(f"subset:{wrong}")


# ---- checks before any training ---------------------------------------------------------------------------

def check(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return run_tool_in_process("check", str(path), str(tmp_path / "out"))


def test_a_valid_study_passes_its_checks_and_writes_its_budgets(tmp_path, labelled, capsys):
    train, test = labelled
    assert check(tmp_path, study_text(train, test)) == 0
    printed = capsys.readouterr().out
    assert "run 1 of 10: seed 1, pretraining vader" in printed and "10 of 10 runs to make" in printed
    budget = json.loads((tmp_path / "out" / "budgets" / "mask_rcnn_4.json").read_text())
    bigger = json.loads((tmp_path / "out" / "budgets" / "mask_rcnn_8.json").read_text())
    assert budget["dataset"] == train and bigger["images"][:4] == budget["images"]
    assert not (tmp_path / "out" / "study.sha256").exists()  # recorded with the first result, not before


def test_a_damaged_result_is_refused_by_check_before_any_training(tmp_path, labelled):
    from vader_d2.study.runner import record_declaration

    train, test = labelled
    text = study_text(train, test)
    record_declaration(parse_study(text, str(tmp_path / "study.yaml")), str(tmp_path / "out"))
    damaged = tmp_path / "out" / "seed2" / "mask_rcnn_8" / "vader.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text('{"name": "vader", "finetune": {"segm/AP": 1.0')
    with pytest.raises(UserError, match=rf"^the results file {damaged} is not valid JSON \(truncated\? .*\); delete it so that its run is made again$"):
        check(tmp_path, text)


def test_bad_input_is_one_line_before_any_training(tmp_path, labelled):
    train, test = labelled
    cases = {
        "no dataset": (study_text(train, "vader_no_such_set"), "no dataset named 'vader_no_such_set' is registered"),
        "budget": (study_text(train, test, budgets="[4, 40]"), "label_budgets asks for 40 labelled images, but tasks.mask_rcnn.train"),
        "same file": (study_text(train, train), "shares an image with the labelled train set"),
        "missing folder": (study_text(train, test, unlabeled=f'"folder:{tmp_path}/none"'), "does not exist"),
        "no labels": (study_text("vader_demo_photos_train", test), "has no instance annotations, which a GeneralizedRCNN"),
        "semantic masks for a detector": (study_text("vader_cutpaste_sem_seg_train", test), "has no instance annotations"),
        "unlabeled test": (study_text(train, "vader_demo_photos_val"), "has no instance annotations"),
        "classes": (study_text(train, test).replace("{MODEL.ROI_HEADS.NUM_CLASSES: 1}", "{MODEL.ROI_HEADS.NUM_CLASSES: 7}"),
                    "has 1 class but the model predicts MODEL.ROI_HEADS.NUM_CLASSES=7; add MODEL.ROI_HEADS.NUM_CLASSES: 1"),
        "epochs key": (study_text(train, test).replace("overrides: {MODEL.DEVICE: cpu}\ndownstream", "overrides: {MODEL.DEVICE: cpu, SOLVER.EPOCHS: 5}\ndownstream"),
                       "SOLVER.EPOCHS 5 is set, but a study gives lengths itself"),
        "misspelt metric": (study_text(train, test).replace("{MODEL.ROI_HEADS.NUM_CLASSES: 1}", "{MODEL.ROI_HEADS.NUM_CLASSES: 1}\n    metrics: [segm/AP, segm/ap]"),
                            "tasks.mask_rcnn.metrics names 'segm/ap', which no result of the task can hold (its results can hold bbox/AP, "),
        "pretraining weights": (study_text(train, test).replace("vader: {pretrain: configs/vader_pretrain_demo.yaml}",
                                                                "vader: {pretrain: configs/vader_pretrain_demo.yaml, overrides: {MODEL.WEIGHTS: /no/such/r18.pkl}}"),
                                "study.yaml: initialisations.vader: MODEL.WEIGHTS '/no/such/r18.pkl' does not exist"),
        "resnet of MoCo": (study_text(train, test, extra="").replace(
            "  vader: {pretrain: configs/vader_pretrain_demo.yaml}",
            "  moco_v2: {pretrain: configs/moco_global_demo.yaml}\n  moco_resnet: {resnet_of: moco_v2}"),
            "names 'moco_v2', whose MoCo export holds no FPN to leave out"),
    }
    for name, (text, expected) in cases.items():
        with pytest.raises(UserError) as error:
            check(tmp_path, text)
        assert expected in str(error.value), (name, str(error.value))
        assert "\n" not in str(error.value)


def test_resnet_of_leaves_the_fpn_out_and_a_source_it_cannot_read_is_one_line(tmp_path):
    source, target = tmp_path / "vader.pkl", tmp_path / "resnet.pkl"
    tensors = {"stem.conv1.weight": np.ones((2, 3, 1, 1), np.float32), "fpn_lateral2.weight": np.ones((2, 2, 1, 1), np.float32),
               "res2.0.conv1.weight": np.ones((2, 2, 1, 1), np.float32)}
    source.write_bytes(pickle.dumps({"model": tensors, "__author__": "vader_d2"}))
    write_resnet_only(str(source), str(target))
    written = pickle.loads(target.read_bytes())
    assert sorted(written["model"]) == ["res2.0.conv1.weight", "stem.conv1.weight"] and written["__author__"] == "vader_d2"
    # A URL is fetched as MODEL.WEIGHTS would be; one that cannot be is one line, not a traceback.
    with pytest.raises(UserError, match=r"^cannot fetch 'http://127.0.0.1:9/R-50.pkl' \(URLError: "):
        write_resnet_only("http://127.0.0.1:9/R-50.pkl", str(target))
    with pytest.raises(UserError, match=r"is not a Detectron2 model-zoo .pkl \(UnpicklingError"):
        write_resnet_only(__file__, str(target))


def test_resnet_of_a_url_is_derived_once_and_reused(tmp_path, monkeypatch):
    from vader_d2.study import runner as study_runner

    cached = tmp_path / "cache" / "R-50.pkl"
    cached.parent.mkdir()
    cached.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": np.ones(1, np.float32), "fpn_output2.weight": np.ones(1, np.float32)}}))
    url = "https://example.com/R-50.pkl"

    class Cache:  # Detectron2's PathManager, as after its one download of the URL
        @staticmethod
        def get_local_path(path):
            return str(cached) if path == url else path

    monkeypatch.setattr(study_runner, "PathManager", Cache)
    declared = json.loads(json.dumps(MINIMAL))
    declared["initialisations"] = {"random_init": {"random": True}, "r50": {"weights": url}, "r50_resnet": {"resnet_of": "r50"}}
    runner = StudyRunner(parse_study(json.dumps(declared), "s.yaml"), str(tmp_path / "out"), str(tmp_path / "work"), None, facts=None)
    first = runner.derived_weights("r50_resnet", 1)
    made = os.stat(first).st_mtime_ns
    assert sorted(pickle.loads(open(first, "rb").read())["model"]) == ["stem.conv1.weight"]
    assert runner.derived_weights("r50_resnet", 1) == first and os.stat(first).st_mtime_ns == made  # the second run: no traceback, not made again


def test_a_pretraining_from_a_file_of_its_own_is_made_again_when_the_file_changes(tmp_path):
    from types import SimpleNamespace

    weights = tmp_path / "imagenet_r18.pkl"
    weights.write_bytes(b"first")

    class Facts:  # what check_study found, as much of it as a pretraining's command needs
        pretraining_configs = {"vader": SimpleNamespace(MODEL=SimpleNamespace(WEIGHTS=str(weights)))}

        @staticmethod
        def pretraining_base_opts(init):
            return ["MODEL.WEIGHTS", str(weights)]

        @staticmethod
        def pretraining_schedule(init, iterations):
            return ["SOLVER.MAX_ITER", str(iterations)]

    runner = StudyRunner(parse_study(json.dumps(MINIMAL), "s.yaml"), str(tmp_path / "out"), str(tmp_path / "work"), None, facts=Facts)
    before = runner.pretraining_record("vader", 1, 10)
    assert runner.pretraining_record("vader", 1, 10) == before
    weights.write_bytes(b"another model")
    assert runner.pretraining_record("vader", 1, 10) != before  # its run folder is not reused


def test_a_pretraining_made_again_says_whether_it_is_the_model_of_the_earlier_results(tmp_path, capsys):
    """A lost work folder: a seed with results still to make pretrains again, and OUT's record of the first
    pretraining says whether the earlier results came from a bit-equal model."""
    model = tmp_path / "d2.pkl"
    model.write_bytes(b"the exported weights" * 100_000)  # over one read block
    digest = file_sha256(model)
    assert digest == hashlib.sha256(model.read_bytes()).hexdigest()
    record = tmp_path / "vader.json"

    def said(content):
        if content is not None:
            record.write_text(content)
        say_whether_remade_model_is_equal("seed 3's vader pretraining", str(record), digest)
        return capsys.readouterr().out

    assert said(None) == ""  # the first pretraining: nothing to compare
    assert said(json.dumps({"iterations": 10, "weights_sha256": digest})) == (
        "[transfer_study] seed 3's vader pretraining was made again, bit-equal to the model OUT's earlier results of it were made with\n"
    )
    assert said(json.dumps({"iterations": 10, "weights_sha256": "0" * 64})) == (
        "[transfer_study] seed 3's vader pretraining was made again and is not bit-equal to the model OUT's earlier results "
        f"of it were made with (sha256 000000000000, now {digest[:12]}): those results stay, and each result names the "
        "sha256 of the weights it loaded\n"
    )
    for unknown in (json.dumps({"iterations": 10}), "[1, 2]", '{"iterations": 1'):  # an earlier version's, not a dict, damaged
        assert said(unknown).endswith("(no weights_sha256), so whether this one is bit-equal is not known\n"), unknown


def test_a_run_folder_still_held_is_waited_for_aloud_then_refused(tmp_path, capsys):
    held = OutputDirLock(str(tmp_path), what="run folder")
    held.acquire()
    try:
        with pytest.raises(UserError, match=r"is still held by an earlier training after 1 s; stop it and run again$"):
            wait_for_previous_run(str(tmp_path), seconds=1)
    finally:
        held.release()
    assert capsys.readouterr().out == f"[transfer_study] waiting (at most 1 s) for an earlier training to let go of {tmp_path}\n"
    wait_for_previous_run(str(tmp_path), seconds=1)  # let go: no wait, no line
    assert capsys.readouterr().out == ""


def test_declared_metrics_are_numbers_a_result_holds(labelled):
    from vader_d2.study.checks import result_numbers

    train, test = labelled
    register_named_datasets([test, "vader_lowlabel_sem_seg_test"])
    mask_rcnn = build_config("configs/downstream/lowlabel_mask_rcnn_R_18_FPN.yaml", ["MODEL.ROI_HEADS.NUM_CLASSES", "1"])
    assert result_numbers(mask_rcnn, test) == [
        *(f"{kind}/{name}" for kind in ("bbox", "segm") for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
        "loss_first_record", "loss_last_record",
    ]
    # Exactly the numbers a committed result of a semantic FPN holds (Mask R-CNN's: the end-to-end study test).
    semantic = build_config("configs/downstream/lowlabel_semantic_R_18_FPN.yaml", [])
    results = os.path.join(REPO, "experiments", "results", "lowlabel_converged_30", "seed1", "frozen_1200_30", "random_init.json")
    with open(results) as f:
        assert sorted(result_numbers(semantic, "vader_lowlabel_sem_seg_test")) == sorted(json.load(f)["finetune"])


def test_an_unlabeled_set_changed_since_the_first_pretraining_is_refused(tmp_path, labelled):
    train, test = labelled
    images = len(DatasetCatalog.get("vader_demo_photos_train"))
    from vader_d2.study.runner import record_declaration

    record_declaration(parse_study(study_text(train, test), str(tmp_path / "study.yaml")), str(tmp_path / "out"))
    record = tmp_path / "out" / "seed1" / "pretraining" / "vader.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"init": "vader", "iterations": 6, "unlabeled_images": images}))
    assert check(tmp_path, study_text(train, test)) == 0
    record.write_text(json.dumps({"init": "vader", "iterations": 6, "unlabeled_images": images - 1}))
    with pytest.raises(UserError, match=rf"^the unlabeled set \(vader_demo_photos_train\) holds {images} images, but .*vader.json "
                                        rf"was pretrained on {images - 1}: it changed since the study began; restore it"):
        check(tmp_path, study_text(train, test))


def test_a_test_image_seen_in_training_is_refused_by_id_or_by_bytes(tmp_path, labelled):
    train, test = labelled
    # The same json with another image folder: the same ids, other files.
    json_file = train.split(":")[1]
    other_images = tmp_path / "copies"
    shutil.copytree(os.path.dirname(json_file) + "/images", other_images)
    for path in other_images.iterdir():
        photo(96, 128, 99).save(path)  # other bytes
    with pytest.raises(UserError, match=r"image id \d+ of .*instances.json"):
        check(tmp_path, study_text(train, f"coco:{json_file}:{other_images}"))
    # A test image copied into the unlabeled folder under another name: the same bytes.
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for i in range(3):
        photo(64, 64, 50 + i).save(unlabeled / f"u{i}.jpg")
    test_image = sorted((tmp_path / "test" / "images").iterdir())[2]
    shutil.copy(test_image, unlabeled / "renamed.jpg")
    with pytest.raises(UserError, match="the same bytes"):
        check(tmp_path, study_text(train, test, unlabeled=f'"folder:{unlabeled}"'))


def test_weights_that_do_not_fit_the_task_are_refused(tmp_path, labelled):
    train, test = labelled
    weights = tmp_path / "r50_stem.pkl"
    weights.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
                                                 "res2.0.conv1.weight": np.zeros((256, 64, 1, 1), np.float32)}}))
    text = study_text(train, test).replace("  vader: {pretrain: configs/vader_pretrain_demo.yaml}", f"  supervised: {{weights: {weights}}}")
    (tmp_path / "study.yaml").write_text(text)
    # As a user runs it: exactly one line on stderr (not fvcore's list of the tensors that did not load).
    result = run_python("tools/transfer_study.py", "check", str(tmp_path / "study.yaml"), str(tmp_path / "out"))
    assert_one_line_refusal(result, "vader_d2: initialisations.supervised.weights into tasks.mask_rcnn: ")
    missing = text.replace(str(weights), str(tmp_path / "none.pkl"))
    with pytest.raises(UserError, match="none.pkl' does not exist"):
        check(tmp_path, missing)


def test_a_changed_study_file_is_refused_once_results_exist(tmp_path, labelled):
    train, test = labelled
    from vader_d2.study.runner import record_declaration

    out = tmp_path / "out"
    record_declaration(parse_study(study_text(train, test), str(tmp_path / "study.yaml")), str(out))
    (tmp_path / "study.yaml").write_text(study_text(train, test) + "# only a comment more\n")
    assert run_tool_in_process("check", str(tmp_path / "study.yaml"), str(out)) == 0
    (tmp_path / "study.yaml").write_text(study_text(train, test, budgets="[4, 12]"))
    result = run_python("tools/transfer_study.py", "run", str(tmp_path / "study.yaml"), str(out))
    assert_one_line_refusal(result, "has changed since")
    assert "a new grid is a new study file" in result.stderr


def test_the_declaration_files_restore_each_other_and_a_damaged_one_is_one_line(tmp_path, labelled):
    train, test = labelled
    from vader_d2.study.runner import check_declaration_unchanged, record_declaration

    study = parse_study(study_text(train, test), str(tmp_path / "study.yaml"))
    out = tmp_path / "out"
    record_declaration(study, str(out))
    (out / "seed1").mkdir()  # results exist
    written = {name: (out / name).read_text() for name in ("study.yaml", "study.sha256")}
    for lost in written:
        (out / lost).unlink()
        check_declaration_unchanged(study, str(out))
        assert {name: (out / name).read_text() for name in written} == written, lost
    for damaged in ("", "not a sha256  study.yaml\n"):
        (out / "study.sha256").write_text(damaged)
        with pytest.raises(UserError, match=r"study.sha256 holds no sha256 \(it should read '<sha256>  STUDY.yaml'\); restore it"):
            check_declaration_unchanged(study, str(out))
    (out / "study.sha256").write_text(written["study.sha256"])
    # An OUT/study.yaml edited to another grid is written again from the study file the sha256 agrees with.
    (out / "study.yaml").write_text(study_text(train, test, budgets="[4, 12]"))
    check_declaration_unchanged(study, str(out))
    assert (out / "study.yaml").read_text() == written["study.yaml"]
    (out / "study.sha256").unlink()
    (out / "study.sha256").mkdir()
    with pytest.raises(UserError, match=r"^cannot read the declared study's sha256 .*study.sha256: Is a directory$"):
        check_declaration_unchanged(study, str(out))
    (out / "study.sha256").rmdir()
    # Neither file agrees with the study given: the results are another grid's.
    (out / "study.yaml").write_text(study_text(train, test, budgets="[4, 12]"))
    with pytest.raises(UserError, match="holds results but no study.sha256"):
        check_declaration_unchanged(study, str(out))


def test_the_work_folder_is_not_the_results_folder_and_is_left_out_of_git(tmp_path, labelled):
    train, test = labelled
    (tmp_path / "study.yaml").write_text(study_text(train, test))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"^--work-dir .* is the results folder OUT: give the checkpoints a folder of their own"):
        run_tool_in_process("check", str(tmp_path / "study.yaml"), str(out), "--work-dir", str(out) + "/")
    (out / ".gitignore").write_text("*.png")  # the user's own, no newline at its end
    assert run_tool_in_process("check", str(tmp_path / "study.yaml"), str(out), "--work-dir", str(out / "checkpoints")) == 0
    assert (out / ".gitignore").read_text() == "*.png\ncheckpoints/\n"
    assert run_tool_in_process("check", str(tmp_path / "study.yaml"), str(out), "--work-dir", str(out / "checkpoints")) == 0
    assert (out / ".gitignore").read_text() == "*.png\ncheckpoints/\n"  # listed once
    # Both locks are let go, the one taken before a refusal too: the same command can run again.
    (tmp_path / "work").mkdir()
    held = OutputDirLock(str(tmp_path / "work"), what="work folder")
    held.acquire()
    try:
        with pytest.raises(UserError, match="is in use by"):
            run_tool_in_process("check", str(tmp_path / "study.yaml"), str(out), "--work-dir", str(tmp_path / "work"))
    finally:
        held.release()
    assert run_tool_in_process("check", str(tmp_path / "study.yaml"), str(out), "--work-dir", str(tmp_path / "work")) == 0


def test_selection_must_be_declared(tmp_path, labelled):
    train, test = labelled
    (tmp_path / "study.yaml").write_text(study_text(train, test))
    with pytest.raises(UserError, match=r"--seeds 7: not declared .*\(declared: 1 2\)"):
        run_tool_in_process("check", str(tmp_path / "study.yaml"), str(tmp_path / "out"), "--seeds", "7")


# ---- results files ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "is empty"),
        ('{"name": "vader", "finetune": {"sem_seg/mIo', "is not valid JSON (truncated?"),
        ('{"name": "vader"}', "holds no 'finetune' numbers"),
        ("[1, 2]", "holds no 'finetune' numbers"),
    ],
)
def test_a_damaged_results_file_is_one_line_naming_it(tmp_path, content, expected):
    out = tmp_path / "out"
    shutil.copytree(os.path.join(REPO, "experiments", "results", "transfer_study_vader1200"), out)
    damaged = out / "seed1" / "frozen_10" / "vader.json"
    damaged.write_text(content)
    result = run_python("tools/transfer_study.py", "table", str(out))
    assert_one_line_refusal(result, f"{damaged}")
    assert expected in result.stderr
    if content != '{"name": "vader"}':  # for summarise_seeds, any file with a run name is a result
        summarised = run_python("experiments/summarise_seeds.py", "table", str(damaged))
        assert_one_line_refusal(summarised, str(damaged))


def test_table_of_a_folder_without_a_study_is_one_line(tmp_path):
    result = run_python("tools/transfer_study.py", "table", str(tmp_path))
    assert_one_line_refusal(result, "holds no declared study")
    for not_a_folder in (tmp_path / "none", tmp_path / "a_file"):
        if not_a_folder.name == "a_file":
            not_a_folder.write_text("")
        with pytest.raises(UserError, match=r"is not a results folder of tools/transfer_study.py \(no such folder\)$"):
            run_tool_in_process("table", str(not_a_folder))
    (tmp_path / "seed1").mkdir()  # results whose declaration was lost: run would refuse the folder, not write it
    with pytest.raises(UserError, match="holds results but neither study.yaml nor study.sha256, .*; restore both from where"):
        run_tool_in_process("table", str(tmp_path))


def test_plot_draws_each_gain_against_the_budget(tmp_path):
    out = os.path.join(REPO, "experiments", "results", "transfer_study")
    png = tmp_path / "gains.png"
    run_tool_in_process("plot", out, "--output", str(png))
    with Image.open(png) as image:
        assert image.size[0] > 2 * image.size[1]  # two panels side by side: semantic and frozen
        colours = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # Five initialisations' lines in five of matplotlib's colours, beside black, white and greys.
    assert len({tuple(c) for c in colours if max(c) - min(c) > 60}) > 5


def test_each_initialisation_draws_beside_the_others_at_one_budget():
    xs = [dodged(30, index, 7) for index in range(7)]
    assert xs == sorted(xs) and len(set(xs)) == 7
    # Centred on the budget on the log axis, within 0.08 decades.
    assert math.isclose(xs[0] * xs[-1], 30 ** 2) and math.isclose(math.log10(xs[-1] / xs[0]), 0.08)
    assert dodged(30, 0, 1) == 30


def test_the_eta_scales_each_run_left_by_its_length():
    finished = [(Job("downstream", "a", None, iterations=300), 60.0), (Job("pretraining", "b", None, iterations=100), 50.0)]
    left = [Job("downstream", "c", None, iterations=2400), Job("pretraining", "d", None), Job("downstream", "e", None, done=True)]
    # 2400 iterations at 0.2 s each, and a pretraining of unknown length at the mean pretraining time.
    assert StudyRunner._eta(left, finished) == "ETA 0:08:50 for the 2 runs left"
    assert StudyRunner._eta(left, []) == "ETA after the first run"
    assert StudyRunner._eta(left[:1], finished) == "ETA 0:08:00 for the 1 run left"
    # Runs of a config already timed go at its own rate; others at their kind's.
    frozen, tuned = "frozen.yaml frozen=True", "tuned.yaml frozen=None"
    finished = [(Job("downstream", "a", None, iterations=300, speed_group=frozen), 60.0),
                (Job("downstream", "b", None, iterations=300, speed_group=tuned), 180.0)]
    left = [Job("downstream", "c", None, iterations=600, speed_group=frozen),
            Job("downstream", "d", None, iterations=600, speed_group=tuned),
            Job("downstream", "e", None, iterations=600, speed_group="other.yaml frozen=None")]
    # 600 x 0.2 s + 600 x 0.6 s + 600 x 0.4 s (the kind's rate: 240 s over 600 iterations).
    assert StudyRunner._eta(left, finished) == "ETA 0:12:00 for the 3 runs left"


def test_the_eta_does_not_time_a_kind_of_run_by_another_kind():
    calibrated = [(Job("calibration", "a", None, iterations=20), 10.0)]
    left = [Job("pretraining", "b", None, iterations=600), Job("downstream", "c", None, iterations=1200),
            Job("downstream", "d", None, iterations=1200)]
    # A calibration times pretraining steps (0.5 s); no downstream step has been timed yet.
    assert StudyRunner._eta(left, calibrated) == (
        "ETA 0:05:00 for the 1 run timed so far, and 2 downstream runs: ETA after the first of them")
    finished = calibrated + [(Job("downstream", "c", None, iterations=1200), 1080.0)]
    assert StudyRunner._eta(left[1:2], finished) == "ETA 0:18:00 for the 1 run left"
    assert StudyRunner._eta(left[1:2], calibrated) == "ETA after the first downstream run"


def test_a_study_started_twice_on_one_results_folder_is_refused(tmp_path, labelled):
    from vader_d2.engine.output_dir import OutputDirLock

    train, test = labelled
    (tmp_path / "study.yaml").write_text(study_text(train, test))
    out = tmp_path / "out"
    out.mkdir()
    held = OutputDirLock(str(out), what="results folder")
    held.acquire()
    try:
        result = run_python("tools/transfer_study.py", "run", str(tmp_path / "study.yaml"), str(out))
    finally:
        held.release()
    assert_one_line_refusal(result, f"results folder '{out}' is in use by the run with PID {os.getpid()}")


def test_pretraining_once_serves_every_seed(tmp_path, labelled, capsys):
    train, test = labelled
    text = study_text(train, test).replace("  overrides: {MODEL.DEVICE: cpu}\ndownstream", "  overrides: {MODEL.DEVICE: cpu}\n  per_seed: false\ndownstream")
    assert "per_seed: false" in text
    assert check(tmp_path, text) == 0
    printed = capsys.readouterr().out
    assert printed.count("pretraining vader") == 1 and "8 of 9 runs" not in printed and "9 of 9 runs to make" in printed


def test_vader_after_moco_starts_its_resnet_from_the_moco_export(tmp_path):
    """configs/vader_after_moco_demo.yaml: MoCo's exported ResNet arrives in VADeR's query encoder whole
    (the FPN and dense head, which MoCo does not train, start fresh), and a fresh run copies it into the
    key encoder."""
    import torch
    from detectron2.modeling import build_model

    from vader_d2.checkpoint import detectron2_weights_from_vader
    from vader_d2.engine.trainer import load_model_weights

    torch.manual_seed(0)
    moco = build_model(build_config("configs/moco_global_demo.yaml", ["MODEL.DEVICE", "cpu"]))
    weights, _, _, _ = detectron2_weights_from_vader(moco.state_dict())
    export = tmp_path / "moco_r18.pkl"
    export.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in weights.items()}, "__author__": "test", "matching_heuristics": True}))

    cfg = build_config("configs/vader_after_moco_demo.yaml", ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(export)])
    vader = build_model(cfg)
    load_model_weights(cfg, vader, cfg.MODEL.WEIGHTS)
    vader.reset_key_encoder()
    query = dict(vader.query_encoder.named_parameters())
    key = dict(vader.key_encoder.named_parameters())
    resnet = [name for name in query if ".bottom_up." in name]
    assert len(resnet) > 50 and len(weights) >= len(resnet)
    moco_state = moco.state_dict()
    for name in resnet:
        source = next(k for k in moco_state if k.startswith("query_encoder") and k.endswith(name.split(".bottom_up.")[1]) and ".bottom_up." in k)
        assert torch.equal(query[name], moco_state[source]), name
        assert torch.equal(key[name], query[name]), name


def test_equal_time_lengths_come_from_the_calibrated_step_times(tmp_path):
    declared = json.loads(json.dumps(MINIMAL))
    declared["initialisations"].update({
        "vader": {"pretrain": "v.yaml", "length": {"iterations": 160}},
        "pixpro": {"pretrain": "p.yaml"},
        "moco_half": {"pretrain": "m.yaml", "length": {"equal_time_as": "vader", "fraction": 0.5}},
        "vader_after_moco": {"pretrain": "v.yaml", "start_from": "moco_half", "length": {"iterations": 80}},
    })
    declared["pretraining"] = {"length": {"equal_time_as": "vader"}}
    study = parse_study(json.dumps(declared), "s.yaml")
    assert study.pretrained == ["vader", "pixpro", "moco_half", "vader_after_moco"]
    calibration = {"seconds_per_step": {"vader": 1.2, "pixpro": 0.6, "moco_half": 0.4}, "study_sha256": "another declaration"}
    (tmp_path / "calibration.json").write_text(json.dumps(calibration))
    runner = StudyRunner(study, str(tmp_path), str(tmp_path / "work"), None, facts=None)
    # Made under another declaration, before any result: calibrated again.
    assert runner.needs_calibration() == ["vader", "pixpro", "moco_half"]
    (tmp_path / "calibration.json").write_text(json.dumps({**calibration, "study_sha256": study.digest}))
    assert runner.needs_calibration() == []  # every step time is in; the lengths are fixed when first asked
    assert runner.pretraining_iterations("moco_half") == 240 and runner.pretraining_iterations("vader_after_moco") == 80
    assert runner.calibration()["iterations"] == {"pixpro": 320, "moco_half": 240}
    with pytest.raises(UserError, match="fraction applies to equal_time_as: only"):
        parse_study(with_change("initialisations/vader/length", {"iterations": 5, "fraction": 0.5}), "s.yaml")
    (tmp_path / "calibration.json").write_text(json.dumps({"seconds_per_step": None}))
    with pytest.raises(UserError, match="is not one tools/transfer_study.py wrote; restore it"):
        runner.calibration()

    # Once a pretraining was made at a calibrated length, a lost or damaged calibration is restored, not
    # made again: a new one would pretrain the rest of the study at other lengths.
    (tmp_path / "calibration.json").unlink()
    assert runner.needs_calibration() == ["vader", "pixpro", "moco_half"]  # nothing pretrained yet: calibrated again
    (tmp_path / "seed1" / "pretraining").mkdir(parents=True)
    (tmp_path / "seed1" / "pretraining" / "pixpro.json").write_text(json.dumps({"iterations": 320}))
    for damage in ("missing", "damaged"):
        if damage == "damaged":
            (tmp_path / "calibration.json").write_text('{"seconds_per_step": {"vad')
        with pytest.raises(UserError, match=rf"^the calibration file .*calibration.json is {damage}, but "
                                            rf"seed1/pretraining/pixpro.json in .* were pretrained at the lengths it fixed: restore it"):
            runner.needs_calibration()
