"""experiments/summarise_seeds.py: mean and standard deviation over seeds of every reported number."""

import json

import pytest

from vader_d2.errors import UserError

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
    summarise = load_tool("summarise_seeds", folder="experiments")
    records = [
        {"iteration": 19, "total_loss": 2.5, "fast_rcnn/cls_accuracy": 0.9},
        {"iteration": 39, "total_loss": 2.0, "bbox/AP": 1.5, "bbox/AP-bird": 3.0, "segm/AP": 1.0},
    ]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))

    result = summarise.finetune_result("vader_600", 2, str(tmp_path))

    assert result["finetune"] == {"loss_first_record": 2.5, "loss_last_record": 2.0, "bbox/AP": 1.5, "segm/AP": 1.0}
    assert result["name"] == "vader_600" and result["seed"] == 2
    (tmp_path / "metrics.json").write_text(json.dumps(records[0]) + "\n")
    with pytest.raises(UserError, match="no training loss or no evaluation"):
        summarise.finetune_result("vader_600", 2, str(tmp_path))


def test_transfer_table_pairs_gains_by_seed_and_keeps_unknown_initialisations(tmp_path):
    """A gain is the mean ± std of per-seed differences; it is marked only with 3 seeds and mean > 2 std;
    an initialisation the script does not know by name gets its own columns after the known ones."""
    mIoU = {
        "random_init": {1: 16.0, 2: 14.0, 3: 17.0},
        "pixpro": {1: 18.0, 2: 16.5, 3: 19.0},  # +2.0, +2.5, +2.0: 2.17 ± 0.29, shown
        "vader_lowlabel": {1: 17.0, 2: 13.0},  # two seeds: never a claim
        "vader": {1: 20.0, 2: 13.0, 3: 17.0},  # +4, -1, 0: 1.0 ± 2.65, not shown
    }
    for init, per_seed in mIoU.items():
        for seed, value in per_seed.items():
            path = tmp_path / f"seed{seed}" / "frozen_10" / f"{init}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"name": init, "seed": seed, "finetune": {"sem_seg/mIoU": value}}))

    summarise = load_tool("summarise_transfer", folder="experiments")
    table = summarise.tables(summarise.read_results(str(tmp_path))).splitlines()

    assert table[0] == (
        "| task | labels | number | random_init | pixpro | vader | vader_lowlabel | "
        "pixpro − random | vader − random | vader_lowlabel − random |"
    )
    assert table[2] == (
        "| frozen | 10 | sem_seg/mIoU | 15.7 ± 1.5 (n=3) | 17.8 ± 1.3 (n=3) | 16.7 ± 3.5 (n=3) | 15.0 ± 2.8 (n=2) | "
        "+2.2 ± 0.3 (n=3) **> 2 std** | +1.0 ± 2.6 (n=3) | +0.0 ± 1.4 (n=2) |"
    )
    assert table[-1].endswith(": pixpro > random init on frozen sem_seg/mIoU with 10 labels")
