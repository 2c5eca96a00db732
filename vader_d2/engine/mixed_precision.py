"""
SOLVER.AMP: mixed-precision training on CUDA and on the CPU.

On CUDA, Detectron2's ``AMPTrainer``: autocast to SOLVER.AMP.PRECISION, with a gradient scaler for
float16 (whose 5-bit exponent lets small gradients underflow) and without one for bfloat16 (float32's
8-bit exponent). Detectron2's ``AMPTrainer`` requires CUDA, so on the CPU ``CPUAutocastTrainer`` runs the
forward pass under CPU bfloat16 autocast, no scaler.

Under autocast the convolutions and matrix products of the encoders run in the lower precision; what
decides the result stays float32: the losses (``info_nce_loss``, ``pixpro_loss``, DenseCL's matching run
with autocast disabled), the queues (float32 buffers; keys are re-normalised in float32 on the way in),
the momentum update (float32 parameters, an element-wise op autocast leaves alone) and the views'
geometry (float64 on the host, before anything reaches the device).
"""

import logging
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

# The precisions and their config check are the config's, the float32 switch the models' own; named here
# too, where mixed precision is described.
from ..config import AMP_PRECISIONS, check_amp_config
from ..modeling.losses import full_precision

__all__ = ["AMP_PRECISIONS", "amp_dtype", "check_amp_config", "full_precision", "CPUAutocastTrainer", "build_step_trainer"]

def amp_dtype(cfg):
    """The autocast dtype of ``cfg`` (None without SOLVER.AMP.ENABLED)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    precision = cfg.SOLVER.AMP.PRECISION
    if precision == "auto":
        return torch.float16 if cfg.MODEL.DEVICE.startswith("cuda") else torch.bfloat16
    return AMP_PRECISIONS[precision]


class CPUAutocastTrainer(SimpleTrainer):
    """
    ``SimpleTrainer`` with the forward pass (model and loss) under CPU autocast to ``precision``; the
    backward pass follows the forward's dtypes by itself and the optimizer updates float32 weights.
    Written here because Detectron2's ``AMPTrainer.run_step`` asserts CUDA and autocasts CUDA only.
    """

    def __init__(self, model, data_loader, optimizer, precision=torch.bfloat16):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision

    def run_step(self):
        assert self.model.training, "CPUAutocastTrainer: the model was put in eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
        total = sum(loss_dict.values())
        self.optimizer.zero_grad()
        total.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_step_trainer(cfg, model, data_loader, optimizer):
    """The trainer that runs one step of ``cfg``: float32, or mixed precision on CUDA or on the CPU."""
    dtype = amp_dtype(cfg)
    if dtype is None:
        return SimpleTrainer(model, data_loader, optimizer)
    if cfg.MODEL.DEVICE.startswith("cuda"):
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        trainer = AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler, precision=dtype)
    else:
        trainer = CPUAutocastTrainer(model, data_loader, optimizer, precision=dtype)
    scaled = "with" if dtype == torch.float16 else "without"
    logging.getLogger("vader_d2").info(f"SOLVER.AMP: {dtype} autocast on {cfg.MODEL.DEVICE}, {scaled} a gradient scaler")
    return trainer
