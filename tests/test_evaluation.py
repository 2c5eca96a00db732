"""The dense evaluation: correspondence benchmark, linear probe, feature extraction, pictures."""

import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.data import DatasetCatalog

from tests.helpers import demo_cfg, run_tool
from vader_d2.errors import UserError
from vader_d2.evaluation import (
    CorrespondenceProtocol,
    LinearProbeProtocol,
    build_feature_extractor,
    evaluate_correspondence,
    evaluate_linear_probe,
    make_view_pair,
    make_view_pairs,
)
from vader_d2.evaluation.correspondence import seeded_numpy
from vader_d2.evaluation.linear_probe import read_label_map
from vader_d2.evaluation.visualization import plot_training_curves
from vader_d2.evaluation.weight_change import weight_change

PROBE_VAL = "vader_cutpaste_sem_seg_val"
NO_PHOTOMETRIC = dict(color_jitter=(0.0, 0.0, 0.0, 0.0), blur_prob=0.0, noise_prob=0.0)


def val_photos(count=None):
    return [d["file_name"] for d in DatasetCatalog.get("vader_demo_photos_val")][:count]


def random_unique_features(view):
    """Features that identify each cell of a given view and nothing else."""
    generator = torch.Generator().manual_seed(int(view.sum()))
    return {"random": torch.randn(16, view.shape[1] // 4, view.shape[2] // 4, generator=generator)}


def position_coded_image(size=256):
    """R grows with x, G with y: the colour of a pixel says where it came from in the source."""
    ramp = np.linspace(0, 255, size)
    image = np.full((size, size, 3), 128, dtype=np.uint8)
    image[:, :, 0] = np.rint(ramp)[None, :]
    image[:, :, 1] = np.rint(ramp)[:, None]
    return image


def position_features(view):
    """Average colour per cell as angles: cosine similarity is highest where source positions agree.
    Padding (blue channel 0) gets a zero vector, similar to nothing."""
    colour = F.avg_pool2d(view.float()[None], 4)[0] / 255
    angles = torch.pi * colour[:2]
    code = torch.cat([angles.cos(), angles.sin()]) * (colour[2:] > 0.25)
    return {"oracle": code}


def test_identity_pair_pck_is_perfect():
    pairs = make_view_pairs(val_photos(3), CorrespondenceProtocol(pairs_per_image=1), seed=0, identity=True)
    results = evaluate_correspondence(random_unique_features, pairs)
    assert results["random"]["pck@2"] == 1.0
    assert results["random"]["mean_error_px"] < 1e-6


def test_ground_truth_geometry_agrees_with_the_views():
    """Matching on the position-coded colours recovers the homography: views, correspondence and the
    matcher's (x, y) / cell-centre conventions agree. A transposed or shifted convention fails here."""
    protocol = CorrespondenceProtocol(**NO_PHOTOMETRIC)
    with seeded_numpy(0):
        pairs = [make_view_pair(position_coded_image(), protocol) for _ in range(4)]
    assert not all(np.allclose(p.correspondence[p.valid], np.argwhere(p.valid)[:, ::-1]) for p in pairs)
    results = evaluate_correspondence(position_features, pairs)
    assert results["oracle"]["pck@4"] > 0.9
    assert results["oracle"]["mean_error_px"] < 3.0


def test_pairs_are_seeded_and_do_not_disturb_numpy():
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = make_view_pairs(val_photos(2), CorrespondenceProtocol(pairs_per_image=1), seed=5)
    assert np.random.rand() == expected_next
    b = make_view_pairs(val_photos(2), CorrespondenceProtocol(pairs_per_image=1), seed=5)
    c = make_view_pairs(val_photos(2), CorrespondenceProtocol(pairs_per_image=1), seed=6)
    assert all(torch.equal(x.view2, y.view2) and np.array_equal(x.correspondence, y.correspondence) for x, y in zip(a, b))
    assert not torch.equal(a[0].view2, c[0].view2)


def probe_data(train_images=16, val_images=8):
    return DatasetCatalog.get("vader_cutpaste_sem_seg_train")[:train_images], DatasetCatalog.get(PROBE_VAL)[:val_images]


def one_hot_labels(d):
    """Ground-truth one-hot 'features' at full resolution (ignored pixels: all zero)."""
    labels = read_label_map(d["sem_seg_file_name"])
    return {"ground_truth": F.one_hot(labels.clamp(max=8), 9)[..., :8].permute(2, 0, 1).float()}


def random_features(d):
    height, width = read_label_map(d["sem_seg_file_name"]).shape
    generator = torch.Generator().manual_seed(zlib.crc32(d["file_name"].encode()))
    return {"random": torch.randn(32, height // 4, width // 4, generator=generator)}


def test_linear_probe_on_ground_truth_one_hot_is_perfect():
    train, val = probe_data()
    results = evaluate_linear_probe(one_hot_labels, train, val, PROBE_VAL, seed=0)
    assert results["ground_truth"]["mIoU"] > 0.99


def test_linear_probe_on_random_features_is_near_chance():
    train, val = probe_data()
    results = evaluate_linear_probe(random_features, train, val, PROBE_VAL, LinearProbeProtocol(epochs=5), seed=0)
    chance = results["chance"]["mIoU"]
    assert 0 < chance < 0.3
    assert results["random"]["mIoU"] < chance + 0.03


def test_feature_extractor_sources_and_shapes():
    extractor = build_feature_extractor(demo_cfg(), seed=0)
    assert extractor.sources == ("head", "p2")
    features = extractor(torch.randint(0, 256, (3, 70, 101), dtype=torch.uint8))
    assert features["head"].shape == (128, 18, 26) and features["p2"].shape == (256, 18, 26)
    for f in features.values():
        assert torch.allclose(f.norm(dim=0), torch.ones(18, 26), atol=1e-4)

    global_extractor = build_feature_extractor(demo_cfg("MODEL.VADER.LOSS", "global", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "128"))
    assert global_extractor.sources == ("p2",)
    with pytest.raises(UserError, match="head"):
        build_feature_extractor(demo_cfg("MODEL.VADER.LOSS", "global", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "128"), ["head"])


def test_random_init_is_seeded():
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    a = build_feature_extractor(demo_cfg(), seed=3)(image)["head"]
    b = build_feature_extractor(demo_cfg(), seed=3)(image)["head"]
    c = build_feature_extractor(demo_cfg(), seed=4)(image)["head"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.slow
def test_vader_pretraining_beats_random_init_on_correspondence(pretrained_demo, tmp_path):
    """The acceptance test: the evaluator separates a short VADeR run from its random initialisation."""
    pairs = make_view_pairs(val_photos(), CorrespondenceProtocol(pairs_per_image=1), seed=0)
    random_init = evaluate_correspondence(build_feature_extractor(demo_cfg(), seed=0), pairs)
    trained_cfg = demo_cfg("MODEL.WEIGHTS", pretrained_demo["checkpoint"])
    trained = evaluate_correspondence(build_feature_extractor(trained_cfg, seed=0), pairs)
    # Measured with this protocol: 0.35 trained (600 iterations) vs 0.06 random, median error 17.8 vs 32.3
    # px; the bounds leave room for run-to-run variation of CPU training while still demanding a clear
    # separation.
    assert trained["head"]["pck@8"] > random_init["head"]["pck@8"] + 0.10, (trained, random_init)
    assert trained["head"]["pck@8"] > 2.5 * random_init["head"]["pck@8"]
    # The median, not the mean: a few far-off matches of the sharper trained features dominate a mean.
    assert trained["head"]["median_error_px"] < random_init["head"]["median_error_px"]


def test_command_lines_write_results_and_pictures(short_pretraining, tmp_path):
    weights = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", short_pretraining["checkpoint"]]
    output = tmp_path / "vader.json"
    stdout = run_tool(
        "tools/evaluate_dense.py", "--config-file", "configs/vader_pretrain_demo.yaml", "--name", "short_vader",
        "--output", str(output), "--pairs-per-image", "1", "--probe-train-images", "8", "--probe-val-images", "8", *weights,
    )
    assert "| short_vader | head |" in stdout and "| short_vader | p2 |" in stdout
    result = json.loads(output.read_text())
    assert set(result["correspondence"]) == {"head", "p2", "quantisation_ceiling"}
    assert set(result["linear_probe"]) == {"head", "p2", "chance"}
    assert 0 <= result["linear_probe"]["head"]["mIoU"] <= 1
    assert "| short_vader | head |" in run_tool("tools/evaluate_dense.py", "--table", str(output))

    pictures = tmp_path / "pictures"
    run_tool("tools/visualize.py", "--config-file", "configs/vader_pretrain_demo.yaml", "--output-dir", str(pictures), *weights)
    # training.png: the checkpoint's folder holds the run's metrics.json
    for name in ("matches.png", "pca.png", "similarity.png", "training.png"):
        assert (pictures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weight_change_per_part_is_the_direct_formula():
    start = {
        "backbone.bottom_up.stem.conv1.weight": torch.tensor([3.0, 4.0]),
        "backbone.bottom_up.res3.0.conv1.weight": torch.tensor([1.0, 0.0]),
        "backbone.bottom_up.res3.1.conv1.weight": torch.tensor([0.0, 1.0]),
        "backbone.fpn_lateral2.weight": torch.tensor([2.0]),
        "head.projection.weight": torch.tensor([1.0, 1.0]),
    }
    end = dict(start)
    end["backbone.bottom_up.res3.1.conv1.weight"] = torch.tensor([1.0, 1.0])  # res3: (1,0,0,1) -> (1,0,1,1)
    end["head.projection.weight"] = torch.tensor([-1.0, -1.0])
    change = weight_change(start, end)
    assert list(change) == ["stem", "res3", "fpn_lateral", "head"]
    assert change["stem"] == {"cosine": pytest.approx(1.0), "relative_change": 0.0, "parameters": 2}
    assert change["res3"]["cosine"] == pytest.approx(2 / (2**0.5 * 3**0.5))
    assert change["res3"]["relative_change"] == pytest.approx(1 / 2**0.5)
    assert change["res3"]["parameters"] == 4
    assert change["head"]["cosine"] == pytest.approx(-1.0) and change["head"]["relative_change"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        weight_change(start, {k: v for k, v in end.items() if "head" not in k})


def test_weight_change_tool_rebuilds_the_runs_initialisation(short_pretraining, tmp_path):
    output = tmp_path / "change.json"
    run_tool("tools/weight_change.py", "--config-file", "configs/vader_pretrain_demo.yaml", "--output", str(output),
             short_pretraining["checkpoint"])
    parts = json.loads(output.read_text())["parts"]
    assert set(parts) == {"stem", "res2", "res3", "res4", "res5", "fpn_lateral", "fpn_output", "head"}
    # A wrongly rebuilt start would be an independent random draw: cosine ~0 over millions of weights.
    # Measured after short_pretraining's 5 iterations: cosine 1.000 for res5, 0.976 for the stem, relative
    # change 0.008 and 0.22, every other part between 0.003 and 0.035; after the 600 iterations of
    # pretrained_demo cosine 0.996 for res5, 0.54 for the stem.
    assert parts["res5"]["cosine"] > 0.9
    assert all(0 < part["relative_change"] for part in parts.values())
    assert parts["stem"]["relative_change"] > parts["res5"]["relative_change"]


def test_training_curves_plot_each_metric_against_its_iterations():
    metrics = [
        {"iteration": 19, "total_loss": 7.5, "vader_top1_accuracy": 0.0, "vader_positive_similarity": 0.6,
         "vader_negative_similarity": 0.5},
        {"iteration": 29, "total_loss": 6.0},  # a record without the model's metrics
        {"iteration": 39, "total_loss": 5.0, "vader_top1_accuracy": 0.25, "vader_positive_similarity": 0.7,
         "vader_negative_similarity": 0.1},
    ]
    figure = plot_training_curves(metrics)
    lines = {line.get_label(): line for ax in figure.axes for line in ax.get_lines()}
    assert list(lines["InfoNCE loss"].get_xdata()) == [19, 29, 39]
    assert list(lines["InfoNCE loss"].get_ydata()) == [7.5, 6.0, 5.0]
    assert list(lines["top-1 accuracy"].get_xdata()) == [19, 39]
    assert list(lines["query - queued negatives"].get_ydata()) == [0.5, 0.1]
