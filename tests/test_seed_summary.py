"""experiments/summarise_seeds.py: mean and standard deviation over seeds of every reported number; the
results file of one Detectron2 run (vader_d2.study.results.finetune_result, which it writes)."""

import json

import pytest

from vader_d2.errors import UserError
from vader_d2.study.results import finetune_result

from .helpers import load_tool


def test_table_gives_mean_and_sample_std_per_name_and_skips_bookkeeping():
    summarise = load_tool("summarise_seeds", folder="experiments")
    results = [
        {"name": "vader", "seed": s, "seconds": {"x": 9.0 * s}, "label_propagation_protocol": {"topk": 10},
         "label_propagation": {"head": {"J&F": jf, "objects": 22, "per_video": {"v": {"1": {"J": jf}}}}}}
        for s, jf in ((0, 0.5), (1, 0.6), (2, 0.7))
    ] + [{"name": "random_init", "seed": 0, "label_propagation": {"head": {"J&F": 0.2}}}]

    table = summarise.seed_table(results).splitlines()

    assert table[0] == "| measurement | vader | random_init |"
    assert table[2:] == ["| label_propagation.head.J&F | 0.6 ± 0.1 (n=3) | 0.2 (n=1) |"]


def test_finetune_result_reads_the_last_evaluation_and_leaves_out_classes(tmp_path):
    records = [
        {"iteration": 19, "total_loss": 2.5, "fast_rcnn/cls_accuracy": 0.9},
        {"iteration": 39, "total_loss": 2.0, "bbox/AP": 1.5, "bbox/AP-bird": 3.0, "segm/AP": 1.0},
    ]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))

    result = finetune_result("vader_600", 2, str(tmp_path))

    assert result["finetune"] == {"loss_first_record": 2.5, "loss_last_record": 2.0, "bbox/AP": 1.5, "segm/AP": 1.0}
    assert result["name"] == "vader_600" and result["seed"] == 2
    (tmp_path / "metrics.json").write_text(json.dumps(records[0]) + "\n")
    with pytest.raises(UserError, match="no training loss or no evaluation"):
        finetune_result("vader_600", 2, str(tmp_path))


def test_a_result_needs_the_final_evaluation_when_asked(tmp_path):
    """A run stopped during its final evaluation holds only an earlier periodic one: no result from it."""
    records = [
        {"iteration": 99, "total_loss": 2.5, "sem_seg/mIoU": 10.0},
        {"iteration": 199, "total_loss": 2.0},
    ]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UserError, match="no evaluation at iteration 200"):
        finetune_result("vader", 1, str(tmp_path), final_iteration=200)
    assert finetune_result("vader", 1, str(tmp_path))["finetune"]["sem_seg/mIoU"] == 10.0
