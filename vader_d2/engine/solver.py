"""
The optimizer of a run: Detectron2's SGD (``SOLVER.OPTIMIZER: SGD``, the default) or LARS, which
Detectron2 lacks and PixPro's recipe uses (``SOLVER.OPTIMIZER: LARS``), for every method alike.

LARS (You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional Networks"): each weight tensor's
step is scaled by a trust ratio eta ||w|| / ||g + wd w||, so that every layer moves by about the same
fraction of its norm whatever the scale of its gradient; then SGD with momentum. As in PixPro's recipe,
one-dimensional parameters (biases and normalisation weights) get neither the adaptation nor weight
decay: their norms say nothing about a layer's scale.
"""

import torch
from detectron2.solver import LRMultiplier
from detectron2.solver import build_lr_scheduler as build_detectron2_lr_scheduler
from detectron2.solver import build_optimizer as build_detectron2_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping
from fvcore.common.param_scheduler import CompositeParamScheduler, CosineParamScheduler, LinearParamScheduler

from ..errors import UserError

__all__ = ["LARS", "build_optimizer", "lars_parameter_groups", "build_lr_scheduler", "iterations_for_epochs", "rescale_schedule"]


class LARS(torch.optim.Optimizer):
    """
    SGD with momentum on LARS-scaled steps. Per parameter group: ``lr``, ``momentum``, ``weight_decay``,
    ``trust_coefficient`` (eta) and ``adapt`` (False: plain SGD with momentum for this group).

    For a parameter w with gradient g: d = g + weight_decay w; with ``adapt`` and both norms positive,
    d <- eta ||w|| / ||d|| d; then buf <- momentum buf + d and w <- w - lr buf.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                step = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if group["adapt"]:
                    weight_norm, step_norm = p.norm(), step.norm()
                    trust = torch.where(
                        (weight_norm > 0) & (step_norm > 0),
                        group["trust_coefficient"] * weight_norm / step_norm,
                        torch.ones_like(weight_norm),
                    )
                    step.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = step
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(step)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def lars_parameter_groups(model, weight_decay):
    """The trainable parameters in two groups: weight tensors (adapted, decayed) and 1-D ones (neither)."""
    adapted, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else adapted).append(p)
    return [
        {"params": adapted, "weight_decay": weight_decay, "adapt": True},
        {"params": plain, "weight_decay": 0.0, "adapt": False},
    ]


def build_optimizer(cfg, model):
    """``SOLVER.OPTIMIZER``: Detectron2's SGD as Detectron2 builds it, or LARS with SOLVER.LARS.TRUST_COEFFICIENT."""
    if cfg.SOLVER.OPTIMIZER == "SGD":
        return build_detectron2_optimizer(cfg, model)
    lars = maybe_add_gradient_clipping(cfg, LARS)
    return lars(
        lars_parameter_groups(model, cfg.SOLVER.WEIGHT_DECAY),
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        trust_coefficient=cfg.SOLVER.LARS.TRUST_COEFFICIENT,
    )


def build_lr_scheduler(cfg, optimizer):
    """
    Detectron2's schedulers, plus ``SOLVER.LR_SCHEDULER_NAME: WarmupThenCosineLR``, PixPro's (and
    MoCo v3's): a linear ramp from WARMUP_FACTOR x BASE_LR to BASE_LR over WARMUP_ITERS, then a cosine
    from BASE_LR to BASE_LR_END over the iterations left. Detectron2's WarmupCosineLR instead spans its
    cosine over all of MAX_ITER and scales its start by the ramp, so it stays lower after the warm-up
    (with PixPro's 5 of 100 epochs, 0.50 against 0.54 of the peak at mid-run).
    """
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME != "WarmupThenCosineLR":
        return build_detectron2_lr_scheduler(cfg, optimizer)
    cosine = CosineParamScheduler(1.0, solver.BASE_LR_END / solver.BASE_LR)
    warmup = solver.WARMUP_ITERS / solver.MAX_ITER
    if warmup > 0:
        ramp = LinearParamScheduler(solver.WARMUP_FACTOR, 1.0)
        cosine = CompositeParamScheduler(
            [ramp, cosine], lengths=[warmup, 1.0 - warmup], interval_scaling=["rescaled", "rescaled"]
        )
    return LRMultiplier(optimizer, multiplier=cosine, max_iter=solver.MAX_ITER)


def rescale_schedule(solver, max_iter):
    """
    The schedule of the SOLVER node ``solver`` stretched to ``max_iter`` iterations, as
    ``{"MAX_ITER", "WARMUP_ITERS", "STEPS"}``: the warm-up and every LR step keep their fraction of
    MAX_ITER, rounded down (a config whose warm-up is an eighth of its length keeps max_iter // 8).
    Steps at or past the old MAX_ITER never fired and are left out (stretched, they might), as are steps
    a short schedule rounds to 0 or onto an earlier one. Cosine schedules need nothing else: they span
    MAX_ITER.
    """
    if max_iter < 1:
        raise UserError(f"a schedule needs at least one iteration, not {max_iter}")
    # Whole numbers throughout: a float scale would round 3 x 10 / 10 down to 2.
    stretched = [step * max_iter // solver.MAX_ITER for step in solver.STEPS if step < solver.MAX_ITER]
    # A schedule squeezed short can round steps to 0 or onto each other; Detectron2's multi-step schedule
    # takes increasing steps only.
    steps = tuple(step for i, step in enumerate(stretched) if step > 0 and step not in stretched[:i])
    return {"MAX_ITER": max_iter, "WARMUP_ITERS": solver.WARMUP_ITERS * max_iter // solver.MAX_ITER, "STEPS": steps}


def iterations_for_epochs(epochs, images, batch):
    """Iterations of ``epochs`` passes over ``images`` images at a global batch of ``batch`` (at least 1)."""
    return max(1, round(epochs * images / batch))
