"""The environment `make setup` builds: vader_d2 registers itself, and stock Detectron2 works on this machine."""

import subprocess
import sys

import torch

from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import vader_d2


def test_package_registers_its_modules():
    assert META_ARCH_REGISTRY.get("VADeR") is vader_d2.VADeR
    for name in ("imagenet_train", "vader_demo_photos_train", "vader_cutpaste_train", "vader_cutpaste_sem_seg_val"):
        assert name in DatasetCatalog.list(), name


def test_import_without_detectron2_is_one_clear_sentence():
    code = "import sys; sys.modules['detectron2'] = None; import vader_d2"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Detectron2" in lines[0] and "make setup" in lines[0]


def test_collect_env_reports_versions():
    result = subprocess.run([sys.executable, "-m", "vader_d2.collect_env"], capture_output=True, text=True, check=True)
    for field in ("torch", "torchvision", "detectron2", "detectron2 source", "compiled ops", "CUDA available"):
        assert field in result.stdout, field


def test_mask_rcnn_from_model_zoo_trains_and_infers_on_cpu():
    """Mask R-CNN needs torchvision's nms / roi_align: this proves they work in this environment."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg)

    height, width = 192, 256
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 20:90, 30:120] = True
    masks[1, 100:180, 150:240] = True
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor([[30.0, 20.0, 120.0, 90.0], [150.0, 100.0, 240.0, 180.0]]))
    instances.gt_classes = torch.tensor([3, 17])
    instances.gt_masks = BitMasks(masks)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)

    model.train()
    with EventStorage(0):
        losses = model([{"image": image, "instances": instances, "height": height, "width": width}])
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": image, "height": height, "width": width}])
    result = outputs[0]["instances"]
    assert result.image_size == (height, width)
    assert len(result) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert result.has("pred_masks") or len(result) == 0
