"""Transfer to Detectron2: model-zoo export, the downstream configs, and weights that arrive intact."""

import glob
import math
import os
import pickle
import re

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from vader_d2 import add_vader_config
from vader_d2.checkpoint.export import check_torchvision_conventions, convert_resnet_to_vader_init, export_to_detectron2
from vader_d2.checkpoint.load_checks import check_weights_load, load_weights
from vader_d2.data.datasets import (
    CUTPASTE_CLASSES,
    CUTPASTE_KEYPOINT_NAMES,
    CUTPASTE_KEYPOINT_OKS_SIGMAS,
)
from vader_d2.errors import UserError
from vader_d2.engine.trainer import VADeRTrainer
from vader_d2.evaluation.report import read_metrics

from .helpers import REPO, demo_cfg, load_tool, run_tool

DOWNSTREAM = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "downstream", "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)
# The pretraining config whose backbone each downstream config fine-tunes, told by depth.
PRETRAIN_FOR_DEPTH = {50: "configs/vader_pretrain.yaml", 18: "configs/vader_pretrain_demo.yaml"}
BN_FAMILY = {"BN", "SyncBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN"}
VADER_BACKBONE = "query_encoder.backbone."


def load_cfg(path, *opts):
    cfg = get_cfg()
    add_vader_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def pretrained_part(model_key):
    """The VADeR query-encoder key a downstream ResNet/FPN key should hold, or None for a head key."""
    match = re.search(r"(?:^|\.)((stem|res[2-5])\..*)$", model_key)
    if match:
        return VADER_BACKBONE + "bottom_up." + match.group(1)
    match = re.search(r"(?:^|\.)(fpn_(lateral|output)\d+\..*)$", model_key)
    if match:
        return VADER_BACKBONE + match.group(1)
    return None


def randomize_(state, generator):
    """Give every tensor distinct random values, so that equality after loading means 'this tensor'."""
    for name, tensor in state.items():
        if tensor.dtype.is_floating_point:
            values = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
        else:
            tensor.copy_(torch.randint(1, 1000, tensor.shape, generator=generator))


def write_vader_checkpoint(cfg, folder, seed):
    """A VADeR model with random weights (query and key encoders differ), saved as training saves it."""
    model = build_model(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomize_(model.state_dict(), generator)
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final", iteration=123)
    return os.path.join(str(folder), "model_final.pth"), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def vader_checkpoints(tmp_path_factory):
    """Per backbone depth: (VADeR checkpoint, its state, exported .pkl of the query encoder)."""
    checkpoints = {}
    for depth, extra in ((18, []), (50, ["MODEL.RESNETS.RES2_OUT_CHANNELS", "256"])):
        folder = tmp_path_factory.mktemp(f"vader_r{depth}")
        cfg = demo_cfg("MODEL.RESNETS.DEPTH", str(depth), *extra, "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "256")
        path, state = write_vader_checkpoint(cfg, folder, seed=depth)
        exported = str(folder / "vader.pkl")
        export_to_detectron2(path, exported)
        checkpoints[depth] = (path, state, exported)
    return checkpoints


# ---------------------------------------------------------------------------------------------------
# Export format


def test_export_is_a_model_zoo_pickle_of_bare_unambiguous_names(vader_checkpoints):
    path, state, exported = vader_checkpoints[50]
    with open(exported, "rb") as f:
        zoo = pickle.load(f)
    assert zoo["__author__"] == "vader_d2" and zoo["matching_heuristics"] is True
    weights = zoo["model"]
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    assert all(re.match(r"^(stem|res[2-5]|fpn_(lateral|output)[2-5])\.", name) for name in weights), sorted(weights)[:5]
    # Every ResNet and FPN tensor of the query encoder, BN buffers included, and nothing else.
    expected = {k for k in state if k.startswith(VADER_BACKBONE)}
    assert {pretrained_part(name) for name in weights} == expected
    for name, value in weights.items():
        np.testing.assert_array_equal(value, state[pretrained_part(name)].numpy())
    assert any(name.endswith("norm.running_var") for name in weights)
    assert {n.split(".")[0] for n in weights if n.startswith("fpn")} == {
        f"fpn_{kind}{level}" for kind in ("lateral", "output") for level in range(2, 6)
    }


def test_export_summary_names_what_was_skipped(vader_checkpoints, tmp_path):
    path, state, _ = vader_checkpoints[18]
    summary = export_to_detectron2(path, str(tmp_path / "out.pkl"))
    assert set(summary.written.values()) == {k for k in state if k.startswith(VADER_BACKBONE)}
    assert set(summary.written.values()) | set(summary.skipped) >= set(state)
    reasons = {summary.skipped[k] for k in ("key_encoder.backbone.bottom_up.stem.conv1.weight", "query_encoder.head.projection.weight", "queue")}
    assert len(reasons) == 3
    text = summary.format()
    assert "ResNet" in text and "FPN" in text and "key encoder" in text and "iteration 123" in text


def test_key_encoder_export_takes_the_momentum_encoder(vader_checkpoints, tmp_path):
    path, state, _ = vader_checkpoints[18]
    export_to_detectron2(path, str(tmp_path / "key.pkl"), encoder="key")
    with open(tmp_path / "key.pkl", "rb") as f:
        weights = pickle.load(f)["model"]
    key_value = state["key_encoder.backbone.bottom_up.res3.0.conv1.weight"].numpy()
    np.testing.assert_array_equal(weights["res3.0.conv1.weight"], key_value)
    assert not np.array_equal(key_value, state["query_encoder.backbone.bottom_up.res3.0.conv1.weight"].numpy())


def test_export_rejects_what_it_cannot_convert(vader_checkpoints, tmp_path):
    path, state, _ = vader_checkpoints[18]
    with pytest.raises(UserError, match=r"\.pkl"):
        export_to_detectron2(path, str(tmp_path / "out.pth"))
    with pytest.raises(UserError, match="encoder"):
        export_to_detectron2(path, str(tmp_path / "out.pkl"), encoder="momentum")
    torch.save({"model": {"backbone.res2.0.conv1.weight": torch.zeros(1)}}, tmp_path / "supervised.pth")
    with pytest.raises(UserError, match="query_encoder.head"):
        export_to_detectron2(str(tmp_path / "supervised.pth"), str(tmp_path / "out.pkl"))
    odd = dict(state, **{"query_encoder.backbone.top_block.p6.weight": torch.zeros(1)})
    torch.save({"model": odd}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="top_block"):
        export_to_detectron2(str(tmp_path / "odd.pth"), str(tmp_path / "out.pkl"))


# ---------------------------------------------------------------------------------------------------
# Every downstream config takes the exported weights


@pytest.mark.parametrize("config", DOWNSTREAM)
def test_export_loads_into_downstream_config(config, vader_checkpoints):
    cfg = load_cfg(config)
    _, state, exported = vader_checkpoints[cfg.MODEL.RESNETS.DEPTH]
    model = build_model(cfg)
    with open(exported, "rb") as f:
        exported_names = list(pickle.load(f)["model"])
    for name in exported_names:  # D2 refuses a checkpoint key matching two model keys; so do we
        assert sum(k == name or k.endswith("." + name) for k in model.state_dict()) <= 1, name

    incompatible = load_weights(model, exported)  # D2's DetectionCheckpointer.load

    assert not incompatible.incorrect_shapes
    missing_pretrained = [k for k in incompatible.missing_keys if pretrained_part(k)]
    assert not missing_pretrained, missing_pretrained[:5]
    assert incompatible.missing_keys, "the task heads cannot come from a backbone checkpoint"
    loaded = 0
    for key, value in model.state_dict().items():
        source = pretrained_part(key)
        if source is not None:
            assert torch.equal(value, state[source]), key
            loaded += 1
    has_fpn = cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert loaded == sum(1 for k in state if k.startswith(VADER_BACKBONE) and (has_fpn or ".fpn_" not in k))


def test_check_weights_load_catches_a_depth_mismatch(vader_checkpoints):
    _, _, exported_r50 = vader_checkpoints[50]
    with pytest.raises(UserError, match="did not load"):
        check_weights_load(load_cfg("configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml"), exported_r50)


def test_global_baseline_exports_the_resnet_only(tmp_path):
    cfg = demo_cfg("MODEL.VADER.LOSS", "global", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "64")
    path, state = write_vader_checkpoint(cfg, tmp_path, seed=3)
    summary = export_to_detectron2(path, str(tmp_path / "moco.pkl"))
    assert summary.written_by_part() == {"ResNet": sum(1 for k in state if k.startswith(VADER_BACKBONE + "bottom_up."))}
    assert "never trained" in summary.format()
    downstream = load_cfg("configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml")
    missing = check_weights_load(downstream, str(tmp_path / "moco.pkl"), expect_fpn=False)
    assert missing["FPN"] and missing["heads and other state"]
    with pytest.raises(UserError, match="did not load"):
        check_weights_load(downstream, str(tmp_path / "moco.pkl"), expect_fpn=True)


# ---------------------------------------------------------------------------------------------------
# Pretraining and downstream agree on what shapes cannot tell


def norm_family(norm):
    return "BN" if norm in BN_FAMILY else norm


def transfer_mismatches(pretrain, downstream):
    """Settings in which a downstream config differs from the pretraining that produced its weights."""
    problems = []
    for key in ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.RES2_OUT_CHANNELS"):
        a, b = pretrain, downstream
        for part in key.split("."):
            a, b = a[part], b[part]
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            problems.append(key)
    if norm_family(pretrain.MODEL.RESNETS.NORM) != norm_family(downstream.MODEL.RESNETS.NORM):
        problems.append("MODEL.RESNETS.NORM")
    if downstream.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone":
        if norm_family(pretrain.MODEL.FPN.NORM) != norm_family(downstream.MODEL.FPN.NORM):
            problems.append("MODEL.FPN.NORM")
        if pretrain.MODEL.FPN.OUT_CHANNELS != downstream.MODEL.FPN.OUT_CHANNELS:
            problems.append("MODEL.FPN.OUT_CHANNELS")
    if downstream.MODEL.BACKBONE.FREEZE_AT != 0:
        problems.append("MODEL.BACKBONE.FREEZE_AT")
    if not downstream.TEST.PRECISE_BN.ENABLED:
        problems.append("TEST.PRECISE_BN.ENABLED")
    return problems


@pytest.mark.parametrize("config", DOWNSTREAM)
def test_downstream_config_matches_pretraining(config):
    downstream = load_cfg(config)
    pretrain = load_cfg(PRETRAIN_FOR_DEPTH[downstream.MODEL.RESNETS.DEPTH])
    assert transfer_mismatches(pretrain, downstream) == []
    assert downstream.MODEL.WEIGHTS == "", "the user sets MODEL.WEIGHTS to their exported .pkl"


def test_transfer_comparison_flags_the_classic_mistakes():
    pretrain = load_cfg("configs/vader_pretrain.yaml")
    mistakes = {
        "INPUT.FORMAT": "BGR",
        "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
        "MODEL.RESNETS.STRIDE_IN_1X1": True,
        "MODEL.RESNETS.NORM": "FrozenBN",
        "MODEL.FPN.NORM": "GN",
        "MODEL.BACKBONE.FREEZE_AT": 2,
        "TEST.PRECISE_BN.ENABLED": False,
    }
    for key, value in mistakes.items():
        downstream = load_cfg("configs/downstream/coco_mask_rcnn_R_50_FPN_1x.yaml", key, str(value))
        assert transfer_mismatches(pretrain, downstream) == [key]
    assert transfer_mismatches(pretrain, load_cfg("configs/downstream/coco_mask_rcnn_R_50_FPN_1x.yaml", "MODEL.RESNETS.NORM", "SyncBN")) == []


def test_cutpaste_configs_match_the_dataset():
    masks = load_cfg("configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml")
    assert masks.MODEL.ROI_HEADS.NUM_CLASSES == len(CUTPASTE_CLASSES)
    semantic = load_cfg("configs/downstream/cutpaste_semantic_R_18_FPN.yaml")
    assert semantic.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(CUTPASTE_CLASSES) + 1
    keypoints = load_cfg("configs/downstream/cutpaste_keypoint_rcnn_R_18_FPN.yaml")
    assert keypoints.MODEL.ROI_HEADS.NUM_CLASSES == len(CUTPASTE_CLASSES)
    assert keypoints.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == len(CUTPASTE_KEYPOINT_NAMES)
    assert tuple(keypoints.TEST.KEYPOINT_OKS_SIGMAS) == CUTPASTE_KEYPOINT_OKS_SIGMAS


# ---------------------------------------------------------------------------------------------------
# torchvision / MoCo weights into VADeR, and back out to Detectron2


def random_torchvision_resnet(arch, seed):
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():
        randomize_(model.state_dict(), torch.Generator().manual_seed(seed))
        for module in model.modules():  # keep activations in range through 50 layers
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_((2.0 / module.weight[0].numel()) ** 0.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.abs_().mul_(0.5)
    return model


def test_torchvision_weights_compute_the_same_in_d2_only_with_stride_in_3x3(tmp_path):
    torchvision_model = random_torchvision_resnet("resnet50", seed=5).eval()
    torch.save(torchvision_model.state_dict(), tmp_path / "r50.pth")
    convert_resnet_to_vader_init(str(tmp_path / "r50.pth"), str(tmp_path / "init.pth"))
    weights = {k.split("bottom_up.", 1)[1]: v for k, v in torch.load(tmp_path / "init.pth")["model"].items()}
    image = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(torchvision_model.children())[:-2])(image)
        outputs = {}
        for stride_in_1x1 in (False, True):
            cfg = load_cfg("configs/vader_pretrain.yaml", "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.RESNETS.OUT_FEATURES", "['res5']", "MODEL.RESNETS.STRIDE_IN_1X1", str(stride_in_1x1))
            backbone = build_backbone(cfg).eval()
            backbone.load_state_dict(weights)
            outputs[stride_in_1x1] = backbone(image)["res5"]
    assert torch.allclose(outputs[False], expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(outputs[True], expected, atol=1e-2, rtol=1e-2)


def test_torchvision_conventions_are_checked():
    check_torchvision_conventions(load_cfg("configs/vader_pretrain.yaml"))
    for key, value in (("MODEL.RESNETS.STRIDE_IN_1X1", "True"), ("INPUT.FORMAT", "BGR"), ("MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]")):
        with pytest.raises(UserError, match=key.split(".")[-1]):
            check_torchvision_conventions(load_cfg("configs/vader_pretrain.yaml", key, value))


def test_moco_checkpoint_converts_its_query_encoder(tmp_path):
    query = random_torchvision_resnet("resnet18", seed=1).state_dict()
    key = random_torchvision_resnet("resnet18", seed=2).state_dict()
    state = {f"module.encoder_q.{k}": v for k, v in query.items()}
    state.update({f"module.encoder_k.{k}": v for k, v in key.items()})
    state.update({"module.encoder_q.fc.0.weight": torch.zeros(4, 512), "module.queue": torch.zeros(128, 4)})
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, tmp_path / "moco.pth.tar")
    summary = convert_resnet_to_vader_init(str(tmp_path / "moco.pth.tar"), str(tmp_path / "init.pth"))
    init = torch.load(tmp_path / "init.pth")["model"]
    assert len(init) == len([k for k in query if not k.startswith("fc.")])
    assert torch.equal(init["query_encoder.backbone.bottom_up.res4.1.conv2.norm.running_mean"], query["layer3.1.bn2.running_mean"])
    assert torch.equal(init["query_encoder.backbone.bottom_up.res3.0.shortcut.weight"], query["layer2.0.downsample.0.weight"])
    assert summary.skipped["module.encoder_k.conv1.weight"] and summary.skipped["module.encoder_q.fc.0.weight"]


def test_torchvision_round_trip_through_vader_keeps_resnet_bit_identical(tmp_path):
    """torchvision ResNet-18 -> VADeR init (MODEL.WEIGHTS, fresh run) -> export -> D2 Mask R-CNN load."""
    torchvision_state = random_torchvision_resnet("resnet18", seed=11).state_dict()
    torch.save(torchvision_state, tmp_path / "resnet18.pth")
    convert_resnet_to_vader_init(str(tmp_path / "resnet18.pth"), str(tmp_path / "init.pth"))

    cfg = demo_cfg("MODEL.WEIGHTS", str(tmp_path / "init.pth"), "OUTPUT_DIR", str(tmp_path / "pretrain"), "DATALOADER.NUM_WORKERS", "0")
    trainer = VADeRTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model_state = trainer.model.state_dict()
    for name, value in torchvision_state.items():
        if name.startswith("fc."):
            continue
        d2_name = name_in_d2(name)
        for encoder in ("query", "key"):  # a fresh run starts the key encoder as a copy of the query encoder
            assert torch.equal(model_state[f"{encoder}_encoder.backbone.bottom_up.{d2_name}"], value), (encoder, name)
    trainer.checkpointer.save("model_final")

    export_to_detectron2(str(tmp_path / "pretrain" / "model_final.pth"), str(tmp_path / "vader.pkl"))
    downstream = build_model(load_cfg("configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml"))
    DetectionCheckpointer(downstream).load(str(tmp_path / "vader.pkl"))
    downstream_state = downstream.state_dict()
    for name, value in torchvision_state.items():
        if not name.startswith("fc."):
            assert torch.equal(downstream_state[f"backbone.bottom_up.{name_in_d2(name)}"], value), name


def name_in_d2(torchvision_name):
    """An independent spelling of the torchvision -> D2 ResNet naming, to check the library's."""
    name = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", torchvision_name)
    name = re.sub(r"^(conv1|bn1)\.", lambda m: "stem.conv1." if m.group(1) == "conv1" else "stem.conv1.norm.", name)
    name = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", name)
    return name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")


def test_init_that_does_not_fit_the_config_is_caught(tmp_path):
    torch.save(random_torchvision_resnet("resnet50", seed=0).state_dict(), tmp_path / "r50.pth")
    convert_resnet_to_vader_init(str(tmp_path / "r50.pth"), str(tmp_path / "init.pth"))
    with pytest.raises(UserError, match="other shapes"):
        check_weights_load(demo_cfg("MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "256"), str(tmp_path / "init.pth"), expect_fpn=False)
    with pytest.raises(UserError, match=r"\.pth"):
        convert_resnet_to_vader_init(str(tmp_path / "r50.pth"), str(tmp_path / "init.pkl"))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "not_resnet.pth")
    with pytest.raises(UserError, match="no torchvision ResNet"):
        convert_resnet_to_vader_init(str(tmp_path / "not_resnet.pth"), str(tmp_path / "init.pth"))


def test_cli_converts_torchvision_weights_and_checks_them_against_the_pretraining_config(tmp_path):
    torch.save(random_torchvision_resnet("resnet18", seed=4).state_dict(), tmp_path / "r18.pth")
    command = [
        "tools/convert_vader_to_d2.py", "--from-resnet", "--input", str(tmp_path / "r18.pth"),
        "--output", str(tmp_path / "init.pth"), "--check-config", "configs/vader_pretrain_demo.yaml",
    ]
    stdout = run_tool(*command)
    assert "wrote" in stdout and "every pretrained backbone tensor loaded" in stdout

    cli = load_tool("convert_vader_to_d2")
    args = cli.parse_args([*command[1:], "INPUT.FORMAT", "BGR"])
    with pytest.raises(UserError, match="INPUT.FORMAT must be RGB"):
        cli.main(args)
    with pytest.raises(UserError, match="--encoder"):
        cli.main(cli.parse_args([*command[1:6], "--encoder", "key"]))


# ---------------------------------------------------------------------------------------------------
# Fine-tuning on the cut-paste set (CPU)

FINETUNE_ITERS = 100


def training_loss(cfg, weights, batches):
    """Mean total training loss of ``cfg``'s model with ``weights`` on fixed batches (same RoI sampling)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.train()
    losses = []
    with EventStorage(), torch.no_grad():
        for batch in batches:
            torch.manual_seed(1)
            losses.append(sum(model(batch).values()).item())
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_mask_rcnn_finetune_lowers_loss_and_reports_box_ap(pretrained_demo, tmp_path):
    exported = str(tmp_path / "vader_r18.pkl")
    convert = ["tools/convert_vader_to_d2.py", "--input", pretrained_demo["checkpoint"], "--output", exported]
    assert "FPN 48" in run_tool(*convert)  # the R18-FPN's FPN: 8 convs x (weight + 5 norm tensors)

    config = "configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml"
    output_dir = str(tmp_path / "finetune")
    command = [
        "tools/train_net.py", "--config-file", config, "MODEL.WEIGHTS", exported, "OUTPUT_DIR", output_dir,
        "SOLVER.MAX_ITER", str(FINETUNE_ITERS), "SOLVER.STEPS", "(80,)", "SOLVER.WARMUP_ITERS", "20",
        "TEST.PRECISE_BN.NUM_ITER", "5",
    ]
    run_tool(*command)
    final = [m for m in read_metrics(os.path.join(output_dir, "metrics.json")) if "bbox/AP" in m]
    assert final and math.isfinite(final[-1]["bbox/AP"]) and math.isfinite(final[-1]["segm/AP"]), final

    # The training loss on the same images, before (pretrained backbone, new heads) and after fine-tuning.
    cfg = load_cfg(config, "DATALOADER.NUM_WORKERS", "0", "SEED", "3")
    loader = iter(VADeRTrainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(2)]
    before = training_loss(cfg, exported, batches)
    after = training_loss(cfg, os.path.join(output_dir, "model_final.pth"), batches)
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_keypoint_rcnn_trains_on_cutpaste_keypoints(tmp_path):
    cfg = load_cfg(
        "configs/downstream/cutpaste_keypoint_rcnn_R_18_FPN.yaml",
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "TEST.PRECISE_BN.ENABLED", "False", "OUTPUT_DIR", str(tmp_path),
    )
    model = VADeRTrainer.build_model(cfg)
    loader = iter(VADeRTrainer.build_train_loader(cfg))
    optimizer = VADeRTrainer.build_optimizer(cfg, model)
    with EventStorage():
        for _ in range(3):
            batch = next(loader)
            assert all(x["instances"].gt_keypoints.tensor.shape[1] == len(CUTPASTE_KEYPOINT_NAMES) for x in batch)
            losses = model(batch)
            assert "loss_keypoint" in losses and all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
