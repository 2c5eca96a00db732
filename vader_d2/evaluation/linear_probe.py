"""
Frozen linear probe: semantic segmentation with a 1x1 classifier on frozen dense features.

Protocol (``LinearProbeProtocol``): features of the training images are computed once; at
``cells_per_image`` random labelled cells per image (ignore label excluded) the label under the cell
centre is the target. Each feature channel is standardised with the training cells' mean and standard
deviation (a fixed affine map, so the classifier stays linear; it makes the probe indifferent to the
scale of each model's features), then a linear classifier is trained with cross-entropy by Adam for a
few epochs. On the validation images the classifier's score maps are bilinearly upsampled to the label
resolution and scored by Detectron2's ``SemSegEvaluator`` (mIoU over the classes, background included).

``chance``: the mIoU of predicting the most frequent training class everywhere, for reference.
Everything random (cells, initialisation, batches) comes from one seeded generator.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

__all__ = ["LinearProbeProtocol", "read_label_map", "labels_at_cells", "train_linear_probe", "evaluate_linear_probe"]


@dataclass(frozen=True)
class LinearProbeProtocol:
    cells_per_image: int = 512
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 0.01
    weight_decay: float = 1e-4


def read_label_map(file_name) -> torch.Tensor:
    """(H, W) long label map of a semantic segmentation PNG."""
    with Image.open(file_name) as image:
        return torch.from_numpy(np.asarray(image, dtype=np.int64).copy())


def labels_at_cells(labels: torch.Tensor, grid_size) -> torch.Tensor:
    """The label under the centre of each cell of an (h, w) grid laid over an (H, W) label map."""
    height, width = labels.shape
    rows = ((torch.arange(grid_size[0]) + 0.5) * height / grid_size[0]).long().clamp_(max=height - 1)
    cols = ((torch.arange(grid_size[1]) + 0.5) * width / grid_size[1]).long().clamp_(max=width - 1)
    return labels[rows[:, None], cols[None, :]]


class _Standardise(torch.nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def train_linear_probe(features: torch.Tensor, targets: torch.Tensor, num_classes: int, protocol: LinearProbeProtocol, generator):
    """(N, C) features and (N,) targets -> a frozen ``Sequential(standardise, Linear(C, num_classes))``."""
    mean, std = features.mean(dim=0), features.std(dim=0).clamp(min=1e-6)
    classifier = torch.nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        bound = 1.0 / features.shape[1] ** 0.5
        classifier.weight.uniform_(-bound, bound, generator=generator)
        classifier.bias.zero_()
    probe = torch.nn.Sequential(_Standardise(mean, std), classifier)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
    for _ in range(protocol.epochs):
        order = torch.randperm(features.shape[0], generator=generator)
        for batch in order.split(protocol.batch_size):
            loss = F.cross_entropy(probe(features[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe.eval().requires_grad_(False)


def _sample_training_cells(feature_fn, dataset_dicts, ignore_label, protocol, generator):
    """Per source, (N, C) features and (N,) labels at random labelled cells of every training image."""
    features: Dict[str, List[torch.Tensor]] = {}
    targets: Dict[str, List[torch.Tensor]] = {}
    for d in dataset_dicts:
        maps = feature_fn(d)
        labels = read_label_map(d["sem_seg_file_name"])
        for source, f in maps.items():
            cell_labels = labels_at_cells(labels, f.shape[1:]).flatten()
            labelled = torch.nonzero(cell_labels != ignore_label).flatten()
            chosen = labelled[torch.randperm(labelled.numel(), generator=generator)[: protocol.cells_per_image]]
            features.setdefault(source, []).append(f.flatten(1)[:, chosen].t())
            targets.setdefault(source, []).append(cell_labels[chosen])
    return {s: (torch.cat(features[s]), torch.cat(targets[s])) for s in features}


def _label_size(file_name):
    with Image.open(file_name) as image:
        return image.height, image.width


def _summary(evaluator) -> Dict:
    result = evaluator.evaluate()["sem_seg"]
    class_ious = {k[len("IoU-"):]: v / 100 for k, v in result.items() if k.startswith("IoU-")}
    return {"mIoU": result["mIoU"] / 100, "pixel_accuracy": result["pACC"] / 100, "IoU": class_ious}


def evaluate_linear_probe(
    feature_fn: Callable[[Dict], Dict[str, torch.Tensor]],
    train_dicts: Sequence[Dict],
    val_dicts: Sequence[Dict],
    val_dataset_name: str,
    protocol: LinearProbeProtocol = LinearProbeProtocol(),
    seed: int = 0,
) -> Dict:
    """
    Train a probe per feature source on ``train_dicts`` and score it on ``val_dicts`` (both D2 sem-seg
    dicts with "file_name" and "sem_seg_file_name"; ``val_dataset_name`` is their registered dataset,
    whose metadata gives ``stuff_classes`` and ``ignore_label``). ``feature_fn`` maps a dataset dict to
    ``{source: (C, h, w)}`` for its image; the features may have any resolution.

    Returns ``{source: {"mIoU", "pixel_accuracy", "IoU": {class: IoU}}, "chance": {...}}``, IoUs in [0, 1].
    """
    metadata = MetadataCatalog.get(val_dataset_name)
    num_classes = len(metadata.stuff_classes)
    generator = torch.Generator().manual_seed(seed)
    training = _sample_training_cells(feature_fn, train_dicts, metadata.ignore_label, protocol, generator)
    probes = {source: train_linear_probe(f, t, num_classes, protocol, generator) for source, (f, t) in training.items()}

    majority = torch.bincount(next(iter(training.values()))[1], minlength=num_classes).argmax()
    evaluators = {name: SemSegEvaluator(val_dataset_name, distributed=False) for name in (*probes, "chance")}
    for evaluator in evaluators.values():
        evaluator.reset()
    for d in val_dicts:
        size = _label_size(d["sem_seg_file_name"])
        for source, f in feature_fn(d).items():
            scores = probes[source](f.flatten(1).t()).t().reshape(num_classes, *f.shape[1:])
            upsampled = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
            evaluators[source].process([d], [{"sem_seg": upsampled}])
        constant = F.one_hot(majority, num_classes).float()[:, None, None].expand(-1, *size)
        evaluators["chance"].process([d], [{"sem_seg": constant}])
    return {name: _summary(evaluator) for name, evaluator in evaluators.items()}
