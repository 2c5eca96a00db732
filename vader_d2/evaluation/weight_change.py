"""
How far pretraining moved each part of the query encoder from where it started.

Short runs change the layers near the input much more than the deep ones; a stage whose weights barely
moved transfers like a random initialisation, whatever the loss curve says. Per part (stem, res2..res5,
FPN laterals, FPN outputs, dense or global head), over all its parameters taken as one vector:
``cosine`` between start and end, and ``relative_change`` = ||end - start|| / ||start||.
"""

import re
from collections import OrderedDict
from typing import Dict, Mapping

import torch

__all__ = ["encoder_part", "weight_change"]

_PARTS = (
    ("stem", re.compile(r"backbone\.bottom_up\.stem\.")),
    *((f"res{i}", re.compile(rf"backbone\.bottom_up\.res{i}\.")) for i in range(2, 6)),
    ("fpn_lateral", re.compile(r"backbone\.fpn_lateral\d\.")),
    ("fpn_output", re.compile(r"backbone\.fpn_output\d\.")),
    ("head", re.compile(r"head\.")),
)


def encoder_part(name: str):
    """The part of the encoder a parameter name (relative to the encoder) belongs to, or None."""
    for part, pattern in _PARTS:
        if pattern.match(name):
            return part
    return None


def weight_change(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """
    ``start`` and ``end``: the encoder's floating-point parameters by name (relative to the encoder,
    e.g. "backbone.bottom_up.res2.0.conv1.weight"); batch-norm running statistics are not parameters and
    are left out by the caller. Returns ``{part: {"cosine", "relative_change", "parameters"}}`` in encoder order.
    """
    missing = sorted(set(start) ^ set(end))
    if missing:
        raise ValueError(f"start and end differ in their parameters, e.g. {missing[0]!r}")
    grouped: Dict[str, list] = OrderedDict((part, []) for part, _ in _PARTS)
    for name in start:
        part = encoder_part(name)
        if part is not None:
            grouped[part].append(name)
    result = OrderedDict()
    for part, names in grouped.items():
        if not names:
            continue
        a = torch.cat([start[n].detach().double().flatten() for n in names])
        b = torch.cat([end[n].detach().double().flatten() for n in names])
        result[part] = {
            "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
            "relative_change": float((b - a).norm() / a.norm().clamp(min=1e-12)),
            "parameters": int(a.numel()),
        }
    return result
