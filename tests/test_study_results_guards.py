"""
What ``table``, ``plot`` and ``schedule`` of tools/transfer_study.py refuse to report: a declared study
that is not the one OUT's results were made under, a result in another run's place or holding a number
no evaluation gives, a metric no result holds, and a plot file name matplotlib would write elsewhere.
Each is one line, never a silent table. No training: the results are written here.
"""

import json
import os
import shutil
import textwrap

import pytest

from vader_d2.errors import UserError
from vader_d2.study import parse_study

from .helpers import REPO, assert_one_line_refusal, load_tool, run_python

transfer_study = load_tool("transfer_study")

# A task at two lengths (a family for ``schedule``), declared numbers, two initialisations.
STUDY = textwrap.dedent("""\
    description: guards
    seeds: [1, 2, 3]
    label_budgets: [10]
    tasks:
      frozen_300: {config: c.yaml, train: a, test: b, schedule: {iterations: 300}, metrics: [sem_seg/mIoU]}
      frozen_600: {config: c.yaml, train: a, test: b, schedule: {iterations: 600}, metrics: [sem_seg/mIoU]}
    initialisations:
      random_init: {random: true}
      vader: {weights: v.pkl}
    """)
RESULT_KEYS = "loss_first_record, loss_last_record, sem_seg/mIoU, sem_seg/pACC"


def tool(*argv):
    return transfer_study.main(transfer_study.parse_args(list(argv)))


def declare(out, text=STUDY):
    """OUT/study.yaml and OUT/study.sha256, as `run` writes them with the first result."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(text)
    (out / "study.sha256").write_text(f"{parse_study(text, 'study.yaml').digest}  experiments/studies/guards.yaml\n")


def write_result(out, seed, task, init, miou, budget=10, fields=None):
    """A result as the runner writes it (``finetune_result``); ``fields`` replace its own, or (None) drop them."""
    result = {"name": init, "seed": seed, "run_dir": "work", "task": task, "budget": budget,
              "finetune": {"loss_first_record": 4.0, "loss_last_record": 0.5, "sem_seg/mIoU": miou, "sem_seg/pACC": 70.0}}
    result.update(fields or {})
    path = out / f"seed{seed}" / f"{task}_{budget}" / f"{init}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in result.items() if v is not None}))
    return path


@pytest.fixture
def out(tmp_path):
    """A results folder of STUDY, every run done."""
    folder = tmp_path / "out"
    declare(folder)
    for seed in (1, 2, 3):
        for task, shift in (("frozen_300", 0.0), ("frozen_600", 2.0)):
            write_result(folder, seed, task, "random_init", 10.0 + seed + shift)
            write_result(folder, seed, task, "vader", 12.0 + seed + shift)
    return folder


# ---- the declared study against its sha256 -----------------------------------------------------------------

def test_a_declared_study_edited_after_its_results_is_refused(tmp_path):
    out = tmp_path / "lowlabel_converged_30"
    shutil.copytree(os.path.join(REPO, "experiments", "results", "lowlabel_converged_30"), out)
    declared = (out / "study.yaml").read_text()
    # Comments, layout and the description are no part of the grid: still the study of these results.
    (out / "study.yaml").write_text("# a comment more\n" + declared.replace("description:", "description: edited,"))
    assert tool("table", str(out)) == 0

    (out / "study.yaml").write_text(declared.replace("seeds: [1, 2, 3]", "seeds: [1, 2]"))
    result = run_python("tools/transfer_study.py", "table", str(out))
    assert_one_line_refusal(result, f"vader_d2: {out}/study.yaml is not the study the results in {out} were made under "
                                    f"(its grid's sha256 is ")
    assert (f"{out}/study.sha256 records d612df3ee72a); copy the study file you declared "
            f"(experiments/studies/lowlabel_converged_30.yaml) to {out}/study.yaml") in result.stderr
    for command in (["plot", str(out), "--output", str(tmp_path / "gains.png")], ["schedule", str(out)]):
        with pytest.raises(UserError, match="is not the study the results in"):
            tool(*command)


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("folder", "cannot read the declared study's sha256 {out}/study.sha256: Is a directory"),
        (b"\xff\xfe\x00garbage", "the declared study's sha256 {out}/study.sha256 is not UTF-8 text"),
        (b"", "{out}/study.sha256 holds no sha256 (it should read '<sha256>  STUDY.yaml'); restore it"),
        (b"d612df3ee72a  study.yaml\n", "{out}/study.sha256 holds no sha256"),
        (None, "{out} holds no study.sha256 recording the grid its results were made under, so {out}/study.yaml "
               "cannot be checked; restore it from where {out} is kept (git), or run `tools/transfer_study.py check STUDY {out}`"),
    ],
)
def test_a_missing_or_damaged_sha256_is_one_line(out, damage, expected):
    recorded = out / "study.sha256"
    recorded.unlink()
    if damage == "folder":
        recorded.mkdir()
    elif damage is not None:
        recorded.write_bytes(damage)
    with pytest.raises(UserError) as refusal:
        tool("table", str(out))
    assert expected.format(out=out) in str(refusal.value)


def test_a_study_yaml_lost_beside_its_sha256_says_to_copy_the_study_file_back(out):
    (out / "study.yaml").unlink()
    result = run_python("tools/transfer_study.py", "table", str(out))
    # Not "run writes it": run writes study.yaml only with study.sha256, which is there.
    assert_one_line_refusal(result, f"vader_d2: {out} holds no study.yaml beside its study.sha256: copy the study file you "
                                    f"declared (experiments/studies/guards.yaml) to {out}/study.yaml, or run "
                                    f"`tools/transfer_study.py check STUDY {out}`")


# ---- declared numbers that no result holds ----------------------------------------------------------------

@pytest.mark.parametrize("metrics, misspelt", [("[sem_seg/miou]", "sem_seg/miou"), ("[sem_seg/mIoU, sem_seg/pacc]", "sem_seg/pacc")])
def test_a_misspelt_metric_is_one_line_in_table_plot_and_schedule(out, tmp_path, metrics, misspelt):
    declare(out, STUDY.replace("metrics: [sem_seg/mIoU]", f"metrics: {metrics}"))
    expected = f"no result of task frozen_300 holds {misspelt} (they hold: {RESULT_KEYS}), which tasks.frozen_300.metrics of {out}/study.yaml names"
    for command in (["table", str(out)], ["plot", str(out), "--output", str(tmp_path / "gains.png")], ["schedule", str(out)]):
        with pytest.raises(UserError) as refusal:
            tool(*command)
        assert str(refusal.value) == expected
    result = run_python("tools/transfer_study.py", "table", str(out))
    assert_one_line_refusal(result, expected)


def test_a_declared_metric_is_checked_once_its_task_has_results(out, capsys):
    """A task not run yet has nothing to check its metrics against: its rows are missing, not refused."""
    for path in out.glob("seed*/frozen_600_10"):
        shutil.rmtree(path)
    declare(out, STUDY.replace("iterations: 600}, metrics: [sem_seg/mIoU]", "iterations: 600}, metrics: [sem_seg/mIoU_typo]"))
    assert tool("table", str(out)) == 0
    assert "| frozen_300 | 10 | sem_seg/mIoU | 12.0 ± 1.0 (n=3) | 14.0 ± 1.0 (n=3) |" in capsys.readouterr().out
    write_result(out, 1, "frozen_600", "random_init", 12.0)
    with pytest.raises(UserError, match=r"^no result of task frozen_600 holds sem_seg/mIoU_typo \(they hold: "):
        tool("table", str(out))


def test_a_metric_of_an_evaluation_that_wrote_nothing_is_shown_missing_not_refused():
    """Detectron2's COCO evaluation writes no segm/ numbers where a model detected nothing: segm/AP is no
    misspelling there, segm/ap beside a segm/AP is."""
    from vader_d2.study.results import headline

    def study(metrics):
        return parse_study(STUDY.replace("metrics: [sem_seg/mIoU]", f"metrics: {metrics}", 1), "guards.yaml")

    nothing_detected = {("frozen_300", 10): {1: {"bbox/AP": float("nan"), "loss_last_record": 0.5}}}
    assert headline(study("[segm/AP, bbox/AP]"), "frozen_300", nothing_detected) == ("segm/AP", "bbox/AP")
    detected = {("frozen_300", 10): {1: {"bbox/AP": 1.0, "segm/AP": 0.5}}}
    with pytest.raises(UserError, match=r"^no result of task frozen_300 holds segm/ap \(they hold: bbox/AP, segm/AP\)"):
        headline(study("[segm/ap]"), "frozen_300", detected)
    with pytest.raises(UserError, match=r"^no result of task frozen_300 holds loss_last"):
        headline(study("[loss_last]"), "frozen_300", nothing_detected)


# ---- what a result holds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, shown", [(float("inf"), "Infinity"), (float("-inf"), "-Infinity"), (True, "true"), (False, "false")])
def test_a_result_holding_infinity_or_a_boolean_is_one_line_naming_file_and_key(out, capsys, value, shown):
    # NaN is Detectron2's AP of a model that detected nothing: shown, not refused.
    write_result(out, 2, "frozen_300", "vader", float("nan"))
    assert tool("table", str(out)) == 0
    assert "| frozen_300 | 10 | sem_seg/mIoU | 12.0 ± 1.0 (n=3) | nan ± nan (n=3) | +nan ± nan (n=3) |" in capsys.readouterr().out

    bad = write_result(out, 3, "frozen_600", "random_init", value)
    result = run_python("tools/transfer_study.py", "table", str(out))
    assert_one_line_refusal(result, f"vader_d2: the results file {bad} holds {shown} for 'sem_seg/mIoU', which no evaluation "
                                    "gives; delete it so that its run is made again")


@pytest.mark.parametrize(
    "field, copied, expected",
    [
        ("seed", {"seed": 2}, "is the result of seed 2, not of seed 1"),
        ("name", {"name": "vader"}, "is the result of name 'vader', not of name 'random_init'"),
        ("task", {"task": "frozen_600"}, "is the result of task 'frozen_600', not of task 'frozen_300'"),
        ("budget", {"budget": 30}, "is the result of budget 30, not of budget 10"),
    ],
)
def test_a_result_in_another_runs_place_is_one_line_naming_file_and_field(out, capsys, field, copied, expected):
    # Results of earlier scripts hold no task or budget: nothing to compare, still read.
    write_result(out, 1, "frozen_300", "random_init", 11.0, fields={"task": None, "budget": None})
    assert tool("table", str(out)) == 0
    assert "| frozen_300 | 10 | sem_seg/mIoU | 12.0 ± 1.0 (n=3) |" in capsys.readouterr().out

    placed = write_result(out, 1, "frozen_300", "random_init", 30.0, fields=copied)
    for command in (["table", str(out)], ["schedule", str(out)]):
        with pytest.raises(UserError) as refusal:
            tool(*command)
        assert str(refusal.value) == (f"the results file {placed} {expected} as its place in the folder says (copied from "
                                      "another run?); delete it so that its run is made again")


# ---- the plot's file ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, expected",
    [
        ("", "plot --output is empty; give a file name, e.g. gains.png"),
        ("plots", "plot --output {tmp}/plots is a folder; give a file name in it, e.g. {tmp}/plots/gains.png"),
        ("gains", "plot --output {tmp}/gains does not end in a suffix matplotlib writes (.avif, .eps, "),
    ],
)
def test_plot_output_that_matplotlib_would_write_elsewhere_is_refused(out, tmp_path, capsys, name, expected):
    (tmp_path / "plots").mkdir()
    before = sorted(tmp_path.rglob("*"))
    output = str(tmp_path / name) if name else ""
    with pytest.raises(UserError) as refusal:
        tool("plot", str(out), "--output", output)
    assert str(refusal.value).startswith(expected.format(tmp=tmp_path))
    assert sorted(tmp_path.rglob("*")) == before  # neither gains.png nor plots.png
    # A suffix names the format, in either case; the path printed is the file written.
    assert tool("plot", str(out), "--output", f"{output or tmp_path / 'gains'}.PDF") == 0
    written = capsys.readouterr().out.strip()
    assert written == f"{output or tmp_path / 'gains'}.PDF" and os.path.getsize(written) > 0
