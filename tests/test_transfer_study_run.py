"""
A tiny study end to end, as a user runs it (tools/transfer_study.py): random init and VADeR, one label
budget, two seeds, a few iterations each, on a COCO json the test writes. A finished downstream run keeps
its final checkpoint only. Stopped by SIGTERM (exit status
75, one line), later killed by SIGKILL, and run again each time, it repeats no finished run and ends with
the results of an uninterrupted run; a lost pretrained model is made again and said bit-equal to the one
the kept results came from; a changed study file is refused; table and plot come from the stored results.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from vader_d2.cli import build_config
from vader_d2.data.datasets import register_named_datasets
from vader_d2.study import parse_study
from vader_d2.study.checks import result_numbers
from vader_d2.study.results import file_sha256

from .helpers import REPO, assert_one_line_refusal, run_python, train_net_env
from .test_bad_inputs import photo
from .test_transfer_study import write_coco

pytestmark = pytest.mark.slow

TINY_PRETRAINING = (
    "MODEL.DEVICE: cpu, MODEL.VADER.PAIRS_PER_IMAGE: 32, INPUT.VIEWS.MIN_SHARED_CELLS: 32, INPUT.VIEWS.CROP_SIZE: 64, "
    "SOLVER.IMS_PER_BATCH: 4, MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE: 2, MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE: 512, "
    "DATALOADER.NUM_WORKERS: 0"
)
TINY_DOWNSTREAM = (
    "MODEL.ROI_HEADS.NUM_CLASSES: 1, DATALOADER.NUM_WORKERS: 0, TEST.PRECISE_BN.ENABLED: False, "
    "INPUT.MIN_SIZE_TRAIN: [96], INPUT.MAX_SIZE_TRAIN: 128, INPUT.MIN_SIZE_TEST: 96, INPUT.MAX_SIZE_TEST: 128, "
    "SOLVER.CHECKPOINT_PERIOD: 2"
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_study")
    train = write_coco(root / "train", 10, seed=1)
    test = write_coco(root / "test", 3, seed=2)
    unlabeled = root / "unlabeled"
    unlabeled.mkdir()
    for i in range(8):
        photo(96, 96, 100 + i).save(unlabeled / f"u{i}.jpg")
    path = root / "study.yaml"
    path.write_text(f"""\
seeds: [1, 2]
unlabeled: ["folder:{unlabeled}"]
label_budgets: [8]
tasks:
  mask_rcnn:
    config: configs/downstream/lowlabel_mask_rcnn_R_18_FPN.yaml
    train: "coco:{train}:{train.parent / 'images'}"
    test: "coco:{test}:{test.parent / 'images'}"
    schedule: {{iterations: 4}}
    overrides: {{{TINY_DOWNSTREAM}}}
initialisations:
  random_init: {{random: true}}
  vader: {{pretrain: configs/vader_pretrain_demo.yaml}}
pretraining:
  length: {{iterations: 4}}
  overrides: {{{TINY_PRETRAINING}}}
downstream:
  overrides: {{MODEL.DEVICE: cpu}}
""")
    return path


def results(out):
    found = {}
    for seed in (1, 2):
        for init in ("random_init", "vader"):
            with open(os.path.join(out, f"seed{seed}", "mask_rcnn_8", f"{init}.json")) as f:
                found[seed, init] = json.dumps(json.load(f)["finetune"], sort_keys=True)
    return found


def test_a_killed_study_resumes_without_repeating_a_finished_run(study, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    result = run_python("tools/transfer_study.py", "run", str(study), str(uninterrupted), timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "run 1 of 6: seed 1, pretraining vader" in result.stdout
    expected = results(uninterrupted)
    # The numbers a result holds are among the ones check accepts in a task's metrics: (all of them but
    # segm/*, which Detectron2's COCO evaluation leaves out when a 4-iteration model detects nothing).
    test_set = parse_study(study.read_text(), str(study)).tasks["mask_rcnn"].test
    register_named_datasets([test_set])
    task = build_config("configs/downstream/lowlabel_mask_rcnn_R_18_FPN.yaml", ["MODEL.ROI_HEADS.NUM_CLASSES", "1"])
    held = json.loads((uninterrupted / "seed1" / "mask_rcnn_8" / "vader.json").read_text())["finetune"]
    assert set(held) <= set(result_numbers(task, test_set)) and "bbox/AP" in held and "loss_last_record" in held, sorted(held)
    assert (uninterrupted / "table.md").read_text().startswith("| task | labels | number | random_init | vader | vader − random |")
    assert (uninterrupted / ".gitignore").read_text() == "work/\n"
    pretraining = json.loads((uninterrupted / "seed2" / "pretraining" / "vader.json").read_text())
    assert pretraining["iterations"] == 4 and pretraining["unlabeled_images"] == 8 and pretraining["epochs"] == 2.0
    # Each downstream run wrote model_0000001.pth and model_0000003.pth on the way (period 2): a finished
    # run keeps only model_final.pth, since an unfinished one starts over.
    for seed in (1, 2):
        for init in ("random_init", "vader"):
            run = uninterrupted / "work" / f"seed{seed}" / "mask_rcnn_8" / init
            assert sorted(name for name in os.listdir(run) if name.endswith(".pth")) == ["model_final.pth"], os.listdir(run)
            assert "model_0000001.pth" in (run / "log.txt").read_text()

    # Stopped (SIGTERM, as a scheduler pre-empts) once seed 1's first downstream result is written, then
    # killed (SIGKILL: no chance to clean up) once seed 2's is: each time run again with the same command.
    out = tmp_path / "killed"
    command = [sys.executable, "tools/transfer_study.py", "run", str(study), str(out)]
    kept = {}
    for seed, sent in ((1, signal.SIGTERM), (2, signal.SIGKILL)):
        first = out / f"seed{seed}" / "mask_rcnn_8" / "random_init.json"
        process = subprocess.Popen(command, cwd=REPO, env=train_net_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 1200
        while not first.exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.5)
        process.send_signal(sent)
        stdout, stderr = process.communicate()
        if sent == signal.SIGTERM:
            assert process.returncode == 75, stdout[-2000:] + stderr[-2000:]
            assert stderr.strip().splitlines()[-1].endswith("was stopped by a signal; run the same command again to continue")
        kept[first] = first.read_bytes(), first.stat().st_mtime_ns
        assert not (out / "seed2" / "mask_rcnn_8" / "vader.json").exists()

    rerun = run_python("tools/transfer_study.py", "run", str(study), str(out), timeout=1800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    started = [line for line in rerun.stdout.splitlines() if line.startswith("[transfer_study] run ")]
    assert not any("pretraining" in line or "random_init" in line for line in started), started
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in kept} == kept
    assert results(out) == expected

    # Nothing left to do: a third run trains nothing.
    again = run_python("tools/transfer_study.py", "run", str(study), str(out), timeout=600)
    assert again.returncode == 0 and "[transfer_study] run" not in again.stdout

    # A lost work folder: seed 1's VADeR model and one result of it are gone. The run pretrains it again
    # and says whether the model is bit-equal to the one the kept results were made with (here, one
    # machine, it is); each result names the sha256 of the weights it loaded.
    record = json.loads((out / "seed1" / "pretraining" / "vader.json").read_text())
    model = out / "work" / "seed1" / "pretraining" / "vader"
    assert record["weights_sha256"] == file_sha256(model / "d2.pkl")
    assert json.loads((out / "seed2" / "mask_rcnn_8" / "vader.json").read_text())["weights_sha256"] == file_sha256(
        out / "work" / "seed2" / "pretraining" / "vader" / "d2.pkl")
    assert json.loads((out / "seed1" / "mask_rcnn_8" / "random_init.json").read_text())["weights_sha256"] is None
    shutil.rmtree(model)
    (out / "seed1" / "mask_rcnn_8" / "vader.json").unlink()
    lost = run_python("tools/transfer_study.py", "run", str(study), str(out), timeout=1200)
    assert lost.returncode == 0, lost.stdout[-3000:] + lost.stderr[-3000:]
    assert "[transfer_study] seed 1's vader pretraining was made again, bit-equal to the model OUT's earlier results" in lost.stdout
    assert json.loads((out / "seed1" / "mask_rcnn_8" / "vader.json").read_text())["weights_sha256"] == record["weights_sha256"]
    assert results(out) == expected

    # The grid may not change under its results.
    study.write_text(study.read_text().replace("seeds: [1, 2]", "seeds: [1, 2, 3]"))
    try:
        assert_one_line_refusal(run_python("tools/transfer_study.py", "run", str(study), str(out)), "has changed since")
    finally:
        study.write_text(study.read_text().replace("seeds: [1, 2, 3]", "seeds: [1, 2]"))

    table = run_python("tools/transfer_study.py", "table", str(out))
    assert table.returncode == 0 and table.stdout == (out / "table.md").read_text()
    plot = run_python("tools/transfer_study.py", "plot", str(out), "--output", str(tmp_path / "gains.png"))
    assert plot.returncode == 0 and (tmp_path / "gains.png").stat().st_size > 10_000
