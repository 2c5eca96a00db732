"""
Checks that need a CUDA GPU (``pytest -m gpu``; skipped without one; benchmarks/gpu_check.sh runs them):
each method's CUDA step against its CPU step, AMP float16 and bfloat16 steps, shuffle-BN groups on one
GPU, and an export fine-tuned by a Mask R-CNN step on CUDA.

The CUDA step runs with TF32 off, so both devices compute in float32 and differ only by the order of
their sums: relative 1e-4 on the loss (float32's 2^-24 per addition, over sums of some 10^4 terms, with
room), and the steps draw nothing at random (one BN group, every cell a pair), since the two devices'
random generators differ.
"""

import copy
import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from vader_d2.checkpoint.export import export_to_detectron2
from vader_d2.engine.mixed_precision import CPUAutocastTrainer, build_step_trainer
from vader_d2.engine.solver import build_optimizer
from vader_d2.engine.trainer import load_model_weights

from .helpers import fake_batch
from .test_methods import mapped_batches
from .test_mixed_precision import small_cfg
from .test_transfer import load_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# Every cell of the 64 px fake views is a valid pair: all 16 x 16 are drawn, in whatever order.
DETERMINISTIC = {
    "VADeR": ["MODEL.MOMENTUM_CONTRAST.KEY_BN", "sync", "INPUT.VIEWS.CROP_SIZE", "64", "MODEL.VADER.PAIRS_PER_IMAGE", "256",
              "INPUT.VIEWS.MIN_SHARED_CELLS", "256", "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "4096"],
    "MoCo": ["MODEL.MOMENTUM_CONTRAST.KEY_BN", "sync"],
    "DenseCL": ["MODEL.MOMENTUM_CONTRAST.KEY_BN", "sync"],
    "PixPro": [],
}


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def batch_for(method, cfg):
    return fake_batch(4, crop=64) if method == "VADeR" else mapped_batches(cfg, 1)[0]


def loss_and_gradient_norm(model, batch):
    with EventStorage(1):
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    grads = [p.grad.double().norm() for p in model.parameters() if p.grad is not None]
    return total.item(), torch.stack(grads).norm().item()


@pytest.mark.parametrize("method", list(DETERMINISTIC))
def test_cuda_step_equals_the_cpu_step(method):
    cfg = small_cfg(method, *DETERMINISTIC[method])
    torch.manual_seed(0)
    cpu_model = build_model(cfg).train()
    cuda_model = copy.deepcopy(cpu_model).cuda()
    batch = batch_for(method, cfg)
    cpu_loss, cpu_grad = loss_and_gradient_norm(cpu_model, batch)
    cuda_loss, cuda_grad = loss_and_gradient_norm(cuda_model, batch)
    assert cuda_loss == pytest.approx(cpu_loss, rel=1e-4, abs=1e-5)
    assert cuda_grad == pytest.approx(cpu_grad, rel=1e-3)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
@pytest.mark.parametrize("method", list(DETERMINISTIC))
def test_amp_steps_on_cuda(method, precision, tmp_path):
    cfg = small_cfg(method, "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", precision)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    trainer = build_step_trainer(cfg, model, [batch_for(method, cfg)] * 2, optimizer)
    assert not isinstance(trainer, CPUAutocastTrainer) and trainer.precision == getattr(torch, precision)
    assert trainer.grad_scaler.is_enabled() == (precision == "float16")
    with EventStorage(0) as storage:
        for iteration in range(2):
            storage.iter = iteration
            trainer.iter = iteration
            trainer.run_step()
    losses = [value for value, _ in storage.history("total_loss").values()]
    assert len(losses) == 2 and all(map(math.isfinite, losses))
    assert model.query_encoder.backbone.bottom_up.stem.conv1.weight.dtype == torch.float32
    for queue in ("queue", "dense_queue"):
        if hasattr(model, queue):
            keys, filled = getattr(model, queue), getattr(model, f"{queue}_image_ids") >= 0
            assert keys.dtype == torch.float32
            torch.testing.assert_close(keys[filled].norm(dim=1), torch.ones(int(filled.sum()), device="cuda"), rtol=0, atol=1e-6)


def test_shuffle_bn_groups_on_one_gpu_match_the_cpu_for_the_same_permutation():
    """Two BN groups of 2 in one process, the key encoder on a fixed permutation of the batch, both devices."""
    cfg = small_cfg("VADeR", *DETERMINISTIC["VADeR"][2:], "MODEL.MOMENTUM_CONTRAST.KEY_BN", "shuffle")
    torch.manual_seed(0)
    cpu_model = build_model(cfg).train()
    cuda_model = copy.deepcopy(cpu_model).cuda()
    permutation = torch.tensor([2, 0, 3, 1])
    cpu_model.key_permutation = lambda batch_size: permutation
    cuda_model.key_permutation = lambda batch_size: permutation.cuda()
    batch = batch_for("VADeR", cfg)
    cpu_loss, _ = loss_and_gradient_norm(cpu_model, batch)
    cuda_loss, _ = loss_and_gradient_norm(cuda_model, batch)
    assert cuda_loss == pytest.approx(cpu_loss, rel=1e-4, abs=1e-5)


def test_export_trains_a_mask_rcnn_step_on_cuda(tmp_path):
    cfg = small_cfg("VADeR")
    torch.manual_seed(0)
    pretrained = build_model(cfg)
    torch.save({"model": pretrained.state_dict(), "iteration": 0}, tmp_path / "model_final.pth")
    export_to_detectron2(str(tmp_path / "model_final.pth"), str(tmp_path / "exported.pkl"))

    downstream = load_cfg("configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml")
    downstream.defrost()
    downstream.MODEL.DEVICE = "cuda"
    model = build_model(downstream).train()
    load_model_weights(downstream, model, str(tmp_path / "exported.pkl"))
    image = torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8)
    masks = torch.zeros(2, 128, 160, dtype=torch.bool)
    masks[0, 10:60, 20:90] = True
    masks[1, 70:120, 80:150] = True
    instances = Instances((128, 160), gt_boxes=Boxes(torch.tensor([[20.0, 10, 90, 60], [80, 70, 150, 120]])),
                          gt_classes=torch.tensor([0, 1]), gt_masks=BitMasks(masks))
    optimizer = build_optimizer(downstream, model)
    with EventStorage(0):
        losses = model([{"image": image, "instances": instances, "height": 128, "width": 160}])
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert "loss_mask" in losses and math.isfinite(total.item())
    assert next(model.parameters()).device.type == "cuda"
