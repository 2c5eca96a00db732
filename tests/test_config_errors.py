"""Config, data-path and checkpoint mistakes end `tools/train_net.py` with one line naming the key and the fix."""

import pytest
import torch
from detectron2.engine import default_argument_parser

from detectron2.config import get_cfg

from vader_d2.cli import build_config
from vader_d2.config import add_vader_config, check_vader_config
from vader_d2.errors import UserError
from vader_d2.engine.trainer import check_checkpoint_matches_config

from .helpers import DEMO_CONFIG, REPO, TINY_OPTS, check_before_launch, demo_cfg, load_tool, run_train_net, single_error_line

train_net = load_tool("train_net")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config-file", "configs/no_such.yaml"], ["--config-file", "configs/no_such.yaml", "does not exist"]),
        (["--config-file", DEMO_CONFIG, "MODEL.VADER.QUEUE_SIZ", "512"], ["command line: unknown config key MODEL.VADER.QUEUE_SIZ"]),
        (["--config-file", DEMO_CONFIG, "MODEL.MOMENTUM_CONTRAST.EMBED_DIM", "large"], ["MODEL.MOMENTUM_CONTRAST.EMBED_DIM", "Type mismatch"]),
        (["--config-file", DEMO_CONFIG, "SOLVER.IMS_PER_BATCH"], ["odd length"]),
        (
            ["--config-file", DEMO_CONFIG, "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "1000"],
            ["MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE=1000", "SOLVER.IMS_PER_BATCH", "e.g. 2048"],
        ),
        (["--config-file", DEMO_CONFIG, "--num-gpus", "3"], ["SOLVER.IMS_PER_BATCH=8", "3 processes", "multiple of 3"]),
        (
            ["--config-file", DEMO_CONFIG, "--num-gpus", "2", "--num-machines", "2", "SOLVER.IMS_PER_BATCH", "6"],
            ["SOLVER.IMS_PER_BATCH=6", "4 processes"],
        ),
        (["--config-file", DEMO_CONFIG, "DATASETS.TRAIN", "('my_photos',)"], ["DATASETS.TRAIN", "'my_photos'", "register_unlabeled_folder"]),
        pytest.param(
            ["--config-file", DEMO_CONFIG, "MODEL.DEVICE", "cuda"],
            ["MODEL.DEVICE='cuda'", "MODEL.DEVICE cpu"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU"),
        ),
    ],
    ids=[
        "missing-config-file", "unknown-key", "wrong-type", "odd-overrides", "queue-vs-batch", "batch-vs-processes",
        "batch-vs-machines", "unknown-dataset", "cuda-without-gpu",
    ],
)
def test_mistakes_found_before_launch(args, expected):
    with pytest.raises(UserError) as error:
        check_before_launch(default_argument_parser().parse_args(args))
    message = str(error.value)
    assert "\n" not in message
    for text in expected:
        assert text in message


def test_mistake_before_launch_is_one_line_from_the_cli():
    line = single_error_line(run_train_net("--config-file", DEMO_CONFIG, "--num-gpus", "3"))
    assert "SOLVER.IMS_PER_BATCH=8" in line


def test_unknown_key_in_config_file_is_one_line_from_the_cli(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(f'_BASE_: "{REPO}/{DEMO_CONFIG}"\nMODEL:\n  VADER:\n    TEMPERATUR: 0.2\n')
    line = single_error_line(run_train_net("--config-file", str(config)))
    assert str(config) in line and "unknown config key MODEL.VADER.TEMPERATUR" in line


def test_missing_datasets_root_is_one_line(tmp_path):
    missing = tmp_path / "not_here"
    result = run_train_net("--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "out"), env={"DETECTRON2_DATASETS": str(missing)})
    line = single_error_line(result)
    assert f"{missing}/vader_demo_photos/train does not exist" in line and "prepare_demo_photos.py" in line


def write_vader_checkpoint(path, queue_size, embed_dim):
    """The part of a VADeR training checkpoint the config is checked against."""
    torch.save({"model": {"queue": torch.zeros(queue_size, embed_dim)}, "iteration": 9}, path)


def test_embedding_dim_of_weights_is_checked_through_the_cli(tmp_path):
    weights = tmp_path / "vader_64d.pth"
    write_vader_checkpoint(weights, 512, 64)
    result = run_train_net("--config-file", DEMO_CONFIG, *TINY_OPTS, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "out"))
    line = single_error_line(result)
    assert "MODEL.MOMENTUM_CONTRAST.EMBED_DIM=128" in line and "64-d" in line and "set MODEL.MOMENTUM_CONTRAST.EMBED_DIM 64" in line


def test_checkpoint_checks(tmp_path):
    cfg = demo_cfg(*TINY_OPTS)
    matching = tmp_path / "matching.pth"
    write_vader_checkpoint(matching, 512, 128)
    check_checkpoint_matches_config(cfg, str(matching), resuming=True)

    other_queue = tmp_path / "queue_1024.pth"
    write_vader_checkpoint(other_queue, 1024, 128)
    # Starting a new run from weights may change the queue; resuming must restore it exactly.
    check_checkpoint_matches_config(cfg, str(other_queue), resuming=False)
    with pytest.raises(UserError, match=r"MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE=512 does not match the 1024 keys .*MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE 1024"):
        check_checkpoint_matches_config(cfg, str(other_queue), resuming=True)

    with pytest.raises(UserError, match=r"^MODEL.WEIGHTS '.*nowhere.pth' does not exist"):
        check_checkpoint_matches_config(cfg, str(tmp_path / "nowhere.pth"), resuming=False)

    backbone_only = tmp_path / "backbone.pth"
    torch.save({"model": {"query_encoder.backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}}, backbone_only)
    check_checkpoint_matches_config(cfg, str(backbone_only), resuming=False)


# ---------------------------------------------------------------------------------------------------
# Values that cannot work: one line naming the key, before any process starts.

PRETRAIN_VALUES = [
    (["SOLVER.BASE_LR", "-0.03"], "SOLVER.BASE_LR must be a positive, finite learning rate, got -0.03"),
    (["SOLVER.BASE_LR", "0.0"], "SOLVER.BASE_LR must be a positive"),
    (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH must be at least 1, got 0"),
    (["SOLVER.IMS_PER_BATCH", "-8"], "SOLVER.IMS_PER_BATCH must be at least 1, got -8"),
    (["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER must be at least 1"),
    (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD must be at least 1"),
    (["SOLVER.LR_SCHEDULER_NAME", "Cosine"], "SOLVER.LR_SCHEDULER_NAME must be one of"),
    (["MODEL.VADER.PAIRS_PER_IMAGE", "0"], "MODEL.VADER.PAIRS_PER_IMAGE must be at least 1, got 0"),
    (["MODEL.MOMENTUM_CONTRAST.EMBED_DIM", "-128"], "MODEL.MOMENTUM_CONTRAST.EMBED_DIM must be at least 1, got -128"),
    (["MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "0"], "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE must be at least 1, got 0"),
    (["MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD", "0"], "MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD must be at least 1"),
    (["MODEL.MOMENTUM_CONTRAST.ENQUEUE", "after"], "MODEL.MOMENTUM_CONTRAST.ENQUEUE must be 'before_loss' or 'after_loss', got 'after'"),
    (["MODEL.VADER.HEAD.IN_FEATURES", "['p3', 'p4']"], "MODEL.VADER.HEAD.IN_FEATURES must be FPN outputs"),
    (["MODEL.VADER.HEAD.NORM", "GroupNorm"], "MODEL.VADER.HEAD.NORM='GroupNorm' cannot normalise"),
    (["INPUT.VIEWS.MAX_REDRAWS", "-1"], "INPUT.VIEWS.MAX_REDRAWS must be at least 1, got -1"),
    (["INPUT.VIEWS.MAX_REDRAWS", "0"], "INPUT.VIEWS.MAX_REDRAWS must be at least 1, got 0"),
    (["DATALOADER.NUM_WORKERS", "-1"], "DATALOADER.NUM_WORKERS must be at least 0, got -1"),
    # Before this check, a non-positive size made every image 'fail to decode' and the run blamed the data.
    (["INPUT.VIEWS.MAX_SOURCE_SIZE", "0"], "INPUT.VIEWS.MAX_SOURCE_SIZE must be at least INPUT.VIEWS.CROP_SIZE=96"),
    (["INPUT.VIEWS.MAX_SOURCE_SIZE", "-1024"], "INPUT.VIEWS.MAX_SOURCE_SIZE must be at least"),
    (["INPUT.VIEWS.CROP_SIZE", "0"], "INPUT.VIEWS.CROP_SIZE must be at least 4, got 0"),
    (["INPUT.VIEWS.CROP_SIZE", "-64"], "INPUT.VIEWS.CROP_SIZE must be at least 4"),
    (["INPUT.VIEWS.FLIP_PROB", "1.5"], "INPUT.VIEWS.FLIP_PROB must be a probability in [0, 1], got 1.5"),
    (["INPUT.VIEWS.NOISE_PROB", "-0.2"], "INPUT.VIEWS.NOISE_PROB must be a probability"),
    (["INPUT.VIEWS.CROP_RATIO", "(0.0, 1.0)"], "INPUT.VIEWS.CROP_RATIO must be two values (> 0) min <= max"),
    (["INPUT.VIEWS.BLUR_SIGMA", "(2.0, 0.1)"], "INPUT.VIEWS.BLUR_SIGMA must be two values (>= 0) min <= max"),
    (["INPUT.VIEWS.HOMOGRAPHY_STRENGTH", "0.3"], "INPUT.VIEWS.HOMOGRAPHY_STRENGTH must be in [0, 0.25)"),
    (["INPUT.VIEWS.COLOR_JITTER", "(0.4, 0.4, 0.4, 0.7)"], "INPUT.VIEWS.COLOR_JITTER must be (brightness"),
    (["INPUT.VIEWS.NOISE_STD", "-0.1"], "INPUT.VIEWS.NOISE_STD must be at least 0"),
    (["INPUT.VIEWS.SOLARIZE_PROB", "(0.2,)"], "INPUT.VIEWS.SOLARIZE_PROB must be two probabilities in [0, 1] (view 1, view 2), got (0.2,)"),
    (["INPUT.VIEWS.BLUR_PROB_PER_VIEW", "(1.5, 0.1)"], "INPUT.VIEWS.BLUR_PROB_PER_VIEW must be () or two probabilities in [0, 1]"),
    # One image per global batch and a queue of one step's keys: every negative is the query's own image.
    (["SOLVER.IMS_PER_BATCH", "1", "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "1", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "256"], "with SOLVER.IMS_PER_BATCH=1 and MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE=256 (the keys of one step) the queue only ever holds keys of the query's own image"),
]


@pytest.mark.parametrize("opts, expected", PRETRAIN_VALUES, ids=[" ".join(opts) for opts, _ in PRETRAIN_VALUES])
def test_values_that_cannot_work_are_one_line(opts, expected):
    args = train_net.parse_args(["--config-file", DEMO_CONFIG, "MODEL.VADER.PAIRS_PER_IMAGE", "256", *opts])
    with pytest.raises(UserError) as error:
        check_before_launch(args)
    assert str(error.value).startswith(expected), str(error.value)
    assert "\n" not in str(error.value)


def test_queries_have_negatives_from_the_second_step_of_a_one_image_batch():
    # Two steps' keys in the queue: the previous image's keys are negatives.
    check_before_launch(train_net.parse_args(
        ["--config-file", DEMO_CONFIG, "SOLVER.IMS_PER_BATCH", "1", "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "1", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "512"]
    ))
    # Two images per batch, one step in the queue: the other image's keys are negatives.
    check_before_launch(train_net.parse_args(
        ["--config-file", DEMO_CONFIG, "SOLVER.IMS_PER_BATCH", "2", "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "1", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "512"]
    ))
    # MoCo's order: one step in the queue holds the previous step's image, another image.
    check_before_launch(train_net.parse_args(
        ["--config-file", DEMO_CONFIG, "SOLVER.IMS_PER_BATCH", "1", "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", "1", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "256",
         "MODEL.MOMENTUM_CONTRAST.ENQUEUE", "after_loss"]
    ))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--num-machines", "2", "--dist-url", "auto"], "--dist-url auto picks a free port on this machine only"),
        (["--num-machines", "2", "--machine-rank", "2"], "--machine-rank must be in 0..1"),
        (["--num-gpus", "0"], "--num-gpus must be at least 1"),
        (["--dist-timeout", "0"], "--dist-timeout must be a positive number of seconds"),
        (["--eval-only", "SOLVER.BASE_LR", "-1.0"], None),  # evaluation has no solver
        (["--config-file", "configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml", "SOLVER.BASE_LR", "-0.02"], "SOLVER.BASE_LR must be"),
    ],
    ids=["auto-url-with-machines", "machine-rank", "no-processes", "dist-timeout", "eval-only-ignores-solver", "downstream-solver"],
)
def test_launch_and_downstream_values(args, expected):
    if "--config-file" not in args:
        args = ["--config-file", DEMO_CONFIG, *args]
    parsed = train_net.parse_args(args)
    if expected is None:
        check_before_launch(parsed)
        return
    with pytest.raises(UserError, match="^" + expected.replace(".", r"\.").replace("(", r"\(")):
        check_before_launch(parsed)


def test_output_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    line = single_error_line(run_train_net("--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "a_file" / "out")))
    assert f"cannot create OUTPUT_DIR '{tmp_path}/a_file/out': Not a directory" in line


def test_a_moved_key_keeps_its_old_name(tmp_path):
    """MODEL.VADER.MIN_SHARED_CELLS is INPUT.VIEWS.MIN_SHARED_CELLS now, MODEL.VADER.QUEUE_SIZE (and the
    other shared momentum keys) MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE: the old names still work on the command
    line and in a config file; a file that gives both names, or a config built without
    vader_d2.cli.build_config (which moves them), is one line."""
    cfg = demo_cfg("MODEL.VADER.MIN_SHARED_CELLS", "300", "MODEL.VADER.QUEUE_SIZE", "4096", "MODEL.VADER.KEY_BN", "sync")
    assert cfg.INPUT.VIEWS.MIN_SHARED_CELLS == 300 and cfg.MODEL.VADER.MIN_SHARED_CELLS is None
    assert (cfg.MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE, cfg.MODEL.MOMENTUM_CONTRAST.KEY_BN) == (4096, "sync")
    assert cfg.MODEL.VADER.QUEUE_SIZE is None and cfg.MODEL.VADER.KEY_BN is None
    check_vader_config(cfg)
    old_file = tmp_path / "old.yaml"
    old_file.write_text(
        f'_BASE_: "{REPO}/configs/vader_pretrain.yaml"\nMODEL:\n  VADER:\n    MIN_SHARED_CELLS: 64\n    MOMENTUM: 0.99\n'
    )
    assert build_config(str(old_file)).INPUT.VIEWS.MIN_SHARED_CELLS == 64
    assert build_config(str(old_file)).MODEL.MOMENTUM_CONTRAST.MOMENTUM == 0.99
    assert build_config(str(old_file), ["INPUT.VIEWS.MIN_SHARED_CELLS", "48"]).INPUT.VIEWS.MIN_SHARED_CELLS == 48
    with pytest.raises(UserError, match="Type mismatch"):
        demo_cfg("MODEL.VADER.MIN_SHARED_CELLS", "many")

    # An older leaf on top of a shipped config, which gives the new name: the leaf's old name wins.
    older_leaf = tmp_path / "older_leaf.yaml"
    older_leaf.write_text(f'_BASE_: "{REPO}/{DEMO_CONFIG}"\nMODEL:\n  VADER:\n    MIN_SHARED_CELLS: 300\n    QUEUE_SIZE: 4096\n')
    leaf_cfg = build_config(str(older_leaf))
    assert (leaf_cfg.INPUT.VIEWS.MIN_SHARED_CELLS, leaf_cfg.MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE) == (300, 4096)
    both = tmp_path / "both.yaml"
    both.write_text(f'_BASE_: "{REPO}/{DEMO_CONFIG}"\nMODEL:\n  VADER:\n    MIN_SHARED_CELLS: 128\nINPUT:\n  VIEWS:\n    MIN_SHARED_CELLS: 300\n')
    with pytest.raises(UserError, match=r"^the config gives both INPUT.VIEWS.MIN_SHARED_CELLS and its old name MODEL.VADER.MIN_SHARED_CELLS; give INPUT.VIEWS.MIN_SHARED_CELLS only$"):
        build_config(str(both))

    by_hand = get_cfg()
    add_vader_config(by_hand)
    by_hand.merge_from_file(DEMO_CONFIG)
    by_hand.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.VADER.MIN_SHARED_CELLS", "64"])
    with pytest.raises(UserError, match=r"^MODEL.VADER.MIN_SHARED_CELLS is now INPUT.VIEWS.MIN_SHARED_CELLS; set that$"):
        check_vader_config(by_hand)
